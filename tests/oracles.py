"""Test-only formulations and helpers shared by the test files: exact float32 rounding with
Fractions, neighbouring floats, tensors built from bit patterns, the packed-scale strides, the
inputs of the on-device suites (every 16-bit pattern in every position of a block, random tensors
scaled by powers of two) and bit-exact comparisons. Independent of lowbit: nothing here imports it,
so expectations built from these can disagree with the library."""

import struct
from fractions import Fraction

import numpy as np
import torch

U8 = torch.uint8


def fl32(fr):
    """Nearest float32 to the rational ``fr`` (ties to even), as a Fraction (no overflow)."""
    fr = Fraction(fr)
    if fr == 0:
        return Fraction(0)
    sign = -1 if fr < 0 else 1
    fr = abs(fr)
    e = fr.numerator.bit_length() - fr.denominator.bit_length()
    while Fraction(2) ** e > fr:
        e -= 1
    while Fraction(2) ** (e + 1) <= fr:
        e += 1
    quantum = Fraction(2) ** (max(e, -126) - 23)
    n = fr / quantum
    i = n.numerator // n.denominator
    rem = n - i
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and i % 2 == 1):
        i += 1
    return sign * i * quantum


F32_MAX = float(np.finfo(np.float32).max)  # (2 - 2^-23) * 2^127


F32_NAN = 0x7FC00000  # float32 bit patterns: the default quiet NaN, a negative one, a signalling one
F32_NEG_NAN = 0xFFC00000
F32_SNAN = 0x7F800001
F32_INF = 0x7F800000
F32_NEG_INF = 0xFF800000


def f32_from_bits(b):
    """The float32 of bit pattern b, as a Python float."""
    return struct.unpack("<f", struct.pack("<I", b))[0]


def bits_of_f32(v):
    """The bit pattern of v rounded to float32."""
    return struct.unpack("<I", struct.pack("<f", v))[0]


def f32_bits_of(t):
    """A float32 tensor's bits as int32, read through its strides (a contiguous copy if it is not)."""
    return t.contiguous().view(torch.int32)


# fl32(1/6) = 0x3E2AAAAB = 11184811 * 2^-26; 6 * fl32(1/6) = 1 + 2^-25
RECIP6 = f32_from_bits(0x3E2AAAAB)


def up32(v):
    return float(np.nextafter(np.float32(v), np.float32(np.inf)))


def dn32(v):
    return float(np.nextafter(np.float32(v), np.float32(-np.inf)))


def from_bits16(bits, dtype=torch.bfloat16):
    """A tensor of a 16-bit float dtype from its bit patterns (ints or an array of them)."""
    arr = np.asarray(bits, dtype=np.uint32).astype(np.uint16).view(np.int16)
    return torch.from_numpy(arr.copy()).view(dtype)


def f32_tensor(vals):
    return torch.from_numpy(np.array(vals, dtype=np.float32))


def f32_bits_tensor(bits):
    return torch.from_numpy(np.array(bits, dtype=np.uint32).view(np.float32).copy())


def u8(vals):
    return torch.tensor(vals, dtype=U8)


ALL16 = np.arange(65536, dtype=np.uint32)


NAN_BITS = {torch.float32: (torch.int32, 0x7FC00000), torch.bfloat16: (torch.int16, 0x7FC0),
            torch.float16: (torch.int16, 0x7E00)}


def tma_rows(mn: int) -> int:
    """A: the rows of the TMA-aligned packed scales, mn rounded up to a multiple of 4 [FP8-PACK]."""
    return -(-mn // 4) * 4


def poisoned_q(shape):
    """An E4M3 buffer of `shape` holding 0xAB bytes (what no quantize writes everywhere)."""
    return torch.full(shape, 0xAB, dtype=U8).view(torch.float8_e4m3fn)


def storage_u8(t):
    """A copy of every byte of t's storage (not only its logical elements)."""
    return torch.empty(0, dtype=U8).set_(t.untyped_storage()).clone()


def packed_strides(lead: tuple, mn: int, words: int) -> tuple:
    """[FP8-PACK] strides of (..., mn, words) packed scales: (..., 1, A), batch stride words*A."""
    rows = -(-mn // 4) * 4
    strides = [1, rows]
    batch = words * rows
    for size in reversed(lead):
        strides.insert(0, batch)
        batch *= size
    return tuple(strides)


E2M1_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])  # magnitudes of codes 0..7


def e2m1_code_exact(a):
    """Nearest E2M1 magnitude to a >= 0 (Fraction, or inf), ties to the even code (grid search)."""
    if a == float("inf"):
        return 7
    best = None
    for code, m in enumerate(E2M1_GRID):
        key = (abs(Fraction(a) - Fraction(m)), code % 2)
        if best is None or key < best[0]:
            best = (key, code)
    return best[1]


def e2m1_codes_np(a):
    """Vectorised: nearest grid point to a >= 0 (float64, may be inf), ties to the even code.

    Decides with 2a versus (lo + hi), both exact in float64 (a is a float32 value times a power of
    two, lo + hi is a small dyadic number)."""
    a = np.minimum(a, 6.0)  # every a >= 6 has 6 (code 7) as its nearest grid point
    hi = np.clip(np.searchsorted(E2M1_GRID, a, side="left"), 0, 7)
    lo = np.maximum(hi - 1, 0)
    twice = 2.0 * a
    mid = E2M1_GRID[lo] + E2M1_GRID[hi]
    tie_pick = np.where(lo % 2 == 0, lo, hi)
    return np.where(twice < mid, lo, np.where(twice > mid, hi, tie_pick)).astype(np.uint8)


def nearest_even_e2m1_code(a: np.ndarray) -> np.ndarray:
    """Index of the E2M1 magnitude nearest to a >= 0 in float64 (ties to the even index), 7 past 6."""
    hi = np.clip(np.searchsorted(E2M1_GRID, a), 1, 7)
    lo = hi - 1
    d_lo, d_hi = a - E2M1_GRID[lo], E2M1_GRID[hi] - a
    code = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(lo % 2 == 0, lo, hi)))
    return np.where(a >= 6.0, 7, code)


def pack(nibbles):
    """Byte i = nib[2i] | nib[2i+1] << 4 (the even element in the low nibble), written independently."""
    return [nibbles[2 * i] | (nibbles[2 * i + 1] << 4) for i in range(len(nibbles) // 2)]


def bf16_values(bits):
    """Exact float64 values of bfloat16 bit patterns (ints or an array of them)."""
    with np.errstate(all="ignore"):  # NaN payloads widen silently
        return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def block(vals, n=32, fill=0.0):
    """vals padded with `fill` to one block of n (MX: 32; NVFP4 blocks pass 16)."""
    vals = list(vals)
    assert len(vals) <= n
    return vals + [fill] * (n - len(vals))


def exact64(x):
    """Exact float64 values of a float32 / float16 / bfloat16 tensor (bf16 via its bit pattern)."""
    x = x.contiguous()
    with np.errstate(invalid="ignore"):  # NaN payloads widen silently
        if x.dtype == torch.bfloat16:
            bits = x.view(torch.int16).numpy().astype(np.uint16).astype(np.uint32) << 16
            return bits.view(np.float32).astype(np.float64)
        return x.numpy().astype(np.float64)


def assert_bytes(got, exp, what=""):
    """torch.equal of two uint8 tensors; on a mismatch, the count and the first differing bytes."""
    got = got.contiguous()
    exp = exp.contiguous()
    assert got.shape == exp.shape, f"{what}: shape {tuple(got.shape)} != {tuple(exp.shape)}"
    if not torch.equal(got, exp):
        g = got.reshape(-1)
        e = exp.reshape(-1)
        bad = (g != e).nonzero().reshape(-1)[:16].tolist()
        detail = ", ".join(f"[{i}] got {g[i].item():#04x} expected {e[i].item():#04x}" for i in bad)
        raise AssertionError(f"{what}: {(g != e).sum().item()} bytes differ: {detail}")


def bits16(value: float, dtype) -> int:
    """The 16-bit pattern of `value` in a 16-bit float dtype."""
    return int(torch.tensor(value, dtype=dtype).view(torch.int16).item()) & 0xFFFF


def arrangements(bits: np.ndarray, anchor_bits: list[int], width: int, rolls: tuple[int, ...], *,
                 anchor_first: bool = False, row: int | None = None) -> np.ndarray:
    """All patterns, several times over, in blocks (or groups) of `width`: in order (a block holds
    `width` neighbouring patterns), rotated by each of `rolls` places (each pattern in other
    positions of its block), permuted by an odd multiplier (neighbours from all over the range);
    then `width` - 1 patterns a block next to one anchor pattern (after them, or before with
    `anchor_first`), which fixes the block's amax, so every pattern is rounded under several known
    scales. In rows of `row` values (default `width`), the last one zero-padded."""
    n = len(bits)
    parts = [bits, *(np.roll(bits, r) for r in rolls), bits[(np.arange(n) * 40503) % n]]
    padded = np.concatenate([bits, np.zeros(-n % (width - 1), dtype=bits.dtype)]).reshape(-1, width - 1)
    for anchor in anchor_bits:
        column = np.full((len(padded), 1), anchor, dtype=bits.dtype)
        parts.append(np.concatenate([column, padded] if anchor_first else [padded, column], axis=1))
    flat = np.concatenate([p.reshape(-1) for p in parts])
    row = width if row is None else row
    return np.concatenate([flat, np.zeros(-len(flat) % row, dtype=bits.dtype)]).reshape(-1, row)


# E4M3FN from its bit fields, ties decided against exact midpoints (the FP8 spec tests)

def e4m3_value(code):
    """Value of a non-negative E4M3FN code 0..127 from its fields (bias 7, no infinities)."""
    e, m = code >> 3, code & 7
    if e == 15 and m == 7:
        return float("nan")
    if e == 0:
        return m * 2.0**-9
    return (1 + m / 8) * 2.0 ** (e - 7)


E4M3_POS = np.array([e4m3_value(c) for c in range(127)])  # codes 0..0x7E, increasing
assert E4M3_POS[-1] == 448.0 and np.all(np.diff(E4M3_POS) > 0)


def e4m3_bytes_np(v):
    """E4M3FN(clamp(v, -448, 448)), nearest, ties to the even code; NaN -> 0x7F. v: float64."""
    v = np.asarray(v, dtype=np.float64)
    nan = np.isnan(v)
    a = np.where(nan, 0.0, np.minimum(np.abs(v), 448.0))
    hi = np.clip(np.searchsorted(E4M3_POS, a, side="left"), 0, 126)
    lo = np.maximum(hi - 1, 0)
    twice = 2.0 * a  # exact
    mid = E4M3_POS[lo] + E4M3_POS[hi]  # exact (few significant bits)
    tie_pick = np.where(lo % 2 == 0, lo, hi)
    code = np.where(twice < mid, lo, np.where(twice > mid, hi, tie_pick))
    out = code | (np.signbit(v).astype(np.int64) << 7)
    return np.where(nan, 0x7F, out).astype(np.uint8)


def ceil_log2_np(d):
    """The exponent of the power-of-two ceiling of positive d."""
    m, ex = np.frexp(d)
    return np.where(m == 0.5, ex - 1, ex).astype(np.int64)


# --- the inputs and comparisons of the on-device suites (tests/backends) ---------------------------

def dtype_id(d: torch.dtype) -> str:
    """A dtype as a test id: bfloat16."""
    return str(d).removeprefix("torch.")


def bits(t: torch.Tensor) -> torch.Tensor:
    """t's bits as integers of its element size (NaN == NaN), a view in t's layout on t's device."""
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()])


def raw(t: torch.Tensor) -> torch.Tensor:
    """t's bits as integers on the CPU (NaN == NaN), in t's logical layout. The view comes first:
    copies of float4/E8M0 tensors between devices need not exist."""
    return bits(t.detach()).cpu()


def storage_words(s: torch.Tensor) -> torch.Tensor:
    """Every element of s's storage in s's dtype (for packed scales: every int32 word, the TMA
    padding rows included), flat, on the CPU."""
    return torch.empty(0, dtype=s.dtype, device=s.device).set_(s.untyped_storage()).cpu()


def first_difference(got: torch.Tensor, want: torch.Tensor, what: str) -> tuple[str, tuple]:
    """(message, index) of the first element where two integer tensors of one shape differ."""
    bad = (got != want).nonzero()
    at = tuple(bad[0].tolist())
    mask = (1 << 8 * got.element_size()) - 1
    return (f"{what}: {len(bad)} of {got.numel()} values differ; first at {at}: got {int(got[at]) & mask:#x}, "
            f"want {int(want[at]) & mask:#x}"), at


def same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Equal shapes, strides and bits (compared on the CPU)."""
    assert got.shape == want.shape and got.stride() == want.stride(), (what, got.shape, got.stride(), want.stride())
    g, w = raw(got), raw(want)
    if not torch.equal(g, w):
        raise AssertionError(first_difference(g, w, what)[0])


def assert_same_bits(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Equal dtypes, shapes and bits (compared on the CPU)."""
    assert got.dtype == want.dtype and got.shape == want.shape, (
        f"{what}: {got.dtype} {tuple(got.shape)} != {want.dtype} {tuple(want.shape)}")
    g, w = raw(got), raw(want)
    if not torch.equal(g, w):
        raise AssertionError(first_difference(g, w, what)[0])


def meta(*shape, dtype=torch.bfloat16) -> torch.Tensor:
    """An empty tensor on the meta device: meta(4, 64)."""
    return torch.empty(shape, dtype=dtype, device="meta")


def all_patterns(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Every one of the 65,536 bit patterns of a 16-bit float dtype, as (finite, non-finite)."""
    values = torch.from_numpy(np.arange(1 << 16, dtype=np.uint16).view(np.int16).copy()).view(dtype)
    finite = values.isfinite()
    return values[finite], values[~finite]


def every_position(values: torch.Tensor, width: int, stride: int) -> torch.Tensor:
    """Blocks (rows of `width`: a block or group of the format) holding each value once in every
    position: block b takes every `stride`-th of `width * stride` consecutive values (so the stride
    sets how many binades a block spans, hence which codes its elements round to), then all `width`
    rotations of every block."""
    per = width * stride
    v = torch.cat([values, values[: (-values.numel()) % per]])  # wrap around: every value at least once
    blocks = v.reshape(-1, width, stride).transpose(1, 2).reshape(-1, width)
    return torch.cat([blocks.roll(r, dims=-1) for r in range(width)])


def strides_for(dtype: torch.dtype, width: int, binades) -> list[int]:
    """Strides through the bit patterns of `dtype` that make a block of `width` span `binades`."""
    per_binade = 1 << {torch.bfloat16: 7, torch.float16: 10}[dtype]  # mantissa bits
    return sorted({max(1, round(b * per_binade / width)) for b in binades})


def to_rows(blocks: torch.Tensor, per_row: int) -> torch.Tensor:
    """Blocks laid out `per_row` to a row (zero blocks pad the last row)."""
    pad = (-blocks.shape[0]) % per_row
    blocks = torch.cat([blocks, blocks.new_zeros(pad, blocks.shape[1])])
    return blocks.reshape(-1, per_row * blocks.shape[1])


def pow2(e: torch.Tensor) -> torch.Tensor:
    """Exactly 2**e as float32, from the exponent bits (normal range)."""
    return ((e.to(torch.int32) + 127) << 23).view(torch.float32)


def randn_pow2(rows: int, k: int, dtype: torch.dtype, seed: int, width: int) -> torch.Tensor:
    """Plain normal values times random powers of two: one per row (over most of the dtype's
    range) and one per block of `width` (a spread of 2^-8..2^8 within a row)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-14, 7) if dtype == torch.float16 else (-125, 110)
    x = torch.randn(rows, k // width, width, generator=g)
    row_scale = pow2(torch.randint(lo, hi, (rows, 1, 1), generator=g))
    block_scale = pow2(torch.randint(-8, 9, (rows, k // width, 1), generator=g))
    return (x * row_scale * block_scale).reshape(rows, k).to(dtype)


def big_spicy(cache: dict, spicy, shape: tuple[int, int], dtype: torch.dtype, *, width: int, seed: int,
              shift: int) -> torch.Tensor:
    """Per dtype, one spicy tensor of `shape` (exponent runs of `width`), made from one a quarter of
    its rows and three column rotations of that by multiples of `shift` runs (cheaper to generate);
    tests slice it. cache: the module's big_inputs fixture; spicy: the spicy fixture."""
    if dtype not in cache:
        base = spicy((shape[0] // 4, shape[1]), dtype, seed=seed + dtype.itemsize, exponent_run=width)
        cache[dtype] = torch.cat([base.roll(width * shift * i, dims=-1) for i in range(4)])
    return cache[dtype]


# --- the API tests: fakes, refusals, opcheck (lowbit-independent parts) -----------------------------

def randn(*shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    """Normal values with a spread of exponents, so block and group scales differ."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    x = x * torch.exp2(torch.randint(-6, 7, shape, generator=g).to(torch.float32))
    return x.to(dtype)


def E(*shape, dtype=torch.float32, d="cpu") -> torch.Tensor:
    """An empty tensor: E(4, 64), E((4, 64)) or E(()) (0-d)."""
    if len(shape) == 1 and isinstance(shape[0], tuple):
        shape = shape[0]
    return torch.empty(tuple(shape), dtype=dtype, device=d)


def round_up(a: int, b: int) -> int:
    return -(-a // b) * b


def fake_like(t: torch.Tensor, device: str) -> torch.Tensor:
    """A tensor on `device` (call inside FakeTensorMode) with t's shape, dtype, strides, storage
    offset and storage size."""
    numel = t.untyped_storage().nbytes() // t.element_size()
    base = torch.empty(numel, dtype=t.dtype, device=device)
    return base.as_strided(t.shape, t.stride(), t.storage_offset())


def as_fake(obj, device):
    """obj with every tensor in it (tuples too) replaced by its fake_like on `device`."""
    if isinstance(obj, torch.Tensor):
        return fake_like(obj, device)
    if isinstance(obj, tuple):
        return tuple(as_fake(o, device) for o in obj)
    return obj


def layout(t: torch.Tensor, storage: bool = True) -> tuple:
    """Everything of a tensor but its values and device: shape, dtype, strides, storage offset and
    (unless storage=False) storage size."""
    found = (tuple(t.shape), t.dtype, tuple(t.stride()), t.storage_offset())
    return (*found, t.untyped_storage().nbytes()) if storage else found


def outputs(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def caught(fn) -> BaseException | None:
    """The exception fn() raises, or None."""
    try:
        fn()
    except Exception as exc:
        return exc
    return None


def said_on(text: str, device: str) -> str:
    """The real CPU call's error text as a call on `device` says it."""
    return text.replace(" on cpu", f" on {device}")


# SchemaCheckMode (opcheck's "test_schema") compares every argument before and after the call with
# torch.allclose, which has no CPU kernel for float8_e4m3fn or float4_e2m1fn_x2 ("mul_cpu_reduced_float"
# / "copy_" not implemented). A pytorch limitation, not lowbit's: the opcheck cases run test_schema with
# the uint8 views the ops also take, and these test_utils only (no test_schema) on their native dtypes.
NO_SCHEMA_CHECK = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
