"""The portable Triton kernels of backends/triton/fp8_group.py (quantize_fp8_group, quantize_fp8_block,
both dequantizes), run by the Triton interpreter on CPU tensors, byte for byte against the CPU
reference: every bfloat16 and float16 pattern in every scale layout with and without ue8m0 and
both group sizes, random tensors with G not a multiple of a program's groups, batches, strided
inputs, eps, special groups, out= buffers with the minimal TMA storage, weight blocks with partial
edges, and dequantize of every E4M3 byte into every dtype. The kernel's `divide` is checked on its
own against numpy's float32 division. Only the integer E4M3 path runs here (hardware_e4m3=False):
the interpreter's own float8 cast is wrong. Outputs are poisoned before every launch, so anything
left unwritten shows."""

import numpy as np
import pytest
import torch
from preambles import interpreted

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from lowbit.backends.cpu import fp8_group as reference  # noqa: E402
from lowbit.backends.triton import fp8_group as kernels  # noqa: E402
from lowbit.backends.triton.launch import LaunchConfig  # noqa: E402
from oracles import ALL16  # noqa: E402

from lowbit import spec  # noqa: E402
from lowbit.fp8_group import quantize_block_outputs, quantize_outputs  # noqa: E402

pytestmark = interpreted()

LAYOUTS = spec.F8_SCALE_LAYOUTS
POISON_Q, POISON_S = 0xAA, -7.0
TALL = LaunchConfig(block_m=64, block_k=512, num_warps=4)  # few, large programs: the interpreter's cost is per program
ODD = LaunchConfig(block_m=2, block_k=256, num_warps=4)  # tiles that straddle an odd mn, two groups a program


def storage(scales: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.float32).set_(scales.untyped_storage()).view(torch.int32)


def both(x, group_size=128, *, eps=spec.FP8_DEFAULT_EPS, ue8m0=False, layout="row_major", config=TALL):
    """(kernel, reference) outputs as (q bytes, scale storage bits), from poisoned buffers."""
    found = []
    for run in ("kernel", "reference"):
        q, scales_all_rows, _ = quantize_outputs(x, group_size, layout)
        q.view(torch.uint8).fill_(POISON_Q)
        storage(scales_all_rows).view(torch.float32).fill_(POISON_S)
        if run == "kernel":
            kernels.quantize_group(x, q, scales_all_rows, group_size=group_size, eps=eps, ue8m0=ue8m0,
                                   hardware_e4m3=False, config=config)
        else:
            reference.quantize_group(x, q, scales_all_rows, group_size=group_size, eps=eps, ue8m0=ue8m0)
        found.append((q.view(torch.uint8), storage(scales_all_rows)))
    return found


def assert_same(x, *args, **kwargs):
    (q, s), (want_q, want_s) = both(x, *args, **kwargs)
    assert torch.equal(q, want_q), f"q: {int((q != want_q).sum())} bytes differ"
    assert torch.equal(s, want_s), f"scales: {int((s != want_s).sum())} differ"


def patterns(dtype) -> torch.Tensor:
    """All 65,536 patterns of a 16-bit dtype in rows of 128, in order and permuted."""
    n = len(ALL16)
    arranged = np.concatenate([ALL16, ALL16[(np.arange(n) * 40503) % n]])
    return torch.from_numpy(arranged.astype(np.uint16).view(np.int16).copy()).view(dtype).reshape(-1, 128)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ue8m0", [False, True], ids=["float", "ue8m0"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_16_bit_pattern(dtype, ue8m0, layout):
    x = patterns(dtype)
    assert_same(x, ue8m0=ue8m0, layout=layout)
    assert_same(x[:3000], 64, ue8m0=ue8m0, layout=layout)


@pytest.mark.parametrize("k", [128, 384, 640])
def test_random_tensors_with_partial_programs(spicy, k):
    x = spicy((37, k), torch.float32, seed=k, exponent_run=128)
    for layout in LAYOUTS:
        assert_same(x, layout=layout, config=ODD)
        assert_same(x, 64, ue8m0=True, layout=layout, config=ODD)


def test_batches_strides_eps_and_special_groups(spicy):
    x = spicy((2, 3, 9, 512), torch.bfloat16, seed=1, exponent_run=128)
    x[0, 0, 0, :128] = float("nan")
    x[0, 0, 1, 3] = float("inf")
    x[0, 0, 2, :128] = 0
    for layout in LAYOUTS:
        assert_same(x, layout=layout)
        assert_same(x.transpose(1, 2), layout=layout)  # leading dims that do not merge
        assert_same(x[..., 128:384], ue8m0=True, layout=layout)
    for eps in (0.0, 1e-3, 5.0):
        assert_same(x[0, 0], eps=eps, layout="column_major")


def test_out_buffers_with_the_minimal_tma_storage(spicy):
    x = spicy((5, 512), torch.bfloat16, seed=2, exponent_run=128)
    a, groups = spec.tma_rows(5), 4
    q_buf = torch.full((a, 512), POISON_Q, dtype=torch.uint8).view(torch.float8_e4m3fn)
    s_buf = torch.full((5 + (groups - 1) * a,), POISON_S).as_strided((5, groups), (1, a))
    kernels.quantize_group(x, q_buf, s_buf, group_size=128, eps=1e-10, ue8m0=False, hardware_e4m3=False)
    want_q, _, want_s = quantize_outputs(x, 128, "column_major_tma")
    reference.quantize_group(x, want_q, want_s, group_size=128, eps=1e-10, ue8m0=False)
    assert torch.equal(q_buf[:5].view(torch.uint8), want_q.view(torch.uint8))
    assert not q_buf[5:].view(torch.uint8).any()
    assert torch.equal(s_buf, want_s)


@pytest.mark.parametrize("shape", [(128, 128), (300, 200), (129, 385)])
def test_weight_blocks_with_partial_edges(spicy, shape):
    w = spicy(shape, torch.float32, seed=sum(shape), exponent_run=1)
    w[7, 9] = float("inf")
    for ue8m0 in (False, True):
        for eps in (spec.F8_BLOCK_EPS, 0.0):
            found = []
            for run in (kernels.quantize_block, reference.quantize_block):
                q, s = quantize_block_outputs(w, (128, 128))
                q.view(torch.uint8).fill_(POISON_Q)
                s.fill_(POISON_S) if s.shape[0] == -(-shape[1] // 128) else s[:-(-shape[1] // 128)].fill_(POISON_S)
                kwargs = dict(hardware_e4m3=False) if run is kernels.quantize_block else {}
                run(w, q, s, block=(128, 128), eps=eps, ue8m0=ue8m0, **kwargs)
                found.append((q.view(torch.uint8), s))
            (q, s), (want_q, want_s) = found
            assert torch.equal(q, want_q) and torch.equal(s, want_s)


def test_weight_blocks_every_bfloat16_pattern():
    w = torch.from_numpy(ALL16.astype(np.uint16).view(np.int16).copy()).view(torch.bfloat16).reshape(256, 256)
    for ue8m0 in (False, True):
        (q, s), (want_q, want_s) = [quantize_block_outputs(w, (128, 128)) for _ in range(2)]
        kernels.quantize_block(w, q, s, block=(128, 128), eps=1e-4, ue8m0=ue8m0, hardware_e4m3=False)
        reference.quantize_block(w, want_q, want_s, block=(128, 128), eps=1e-4, ue8m0=ue8m0)
        assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)) and torch.equal(s, want_s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
def test_dequantize_every_byte_in_every_layout(dtype):
    q = torch.arange(256, dtype=torch.int32).to(torch.uint8).repeat(2 * 6).reshape(6, 512).view(torch.float8_e4m3fn)
    values = torch.exp2(torch.linspace(-126, 127, 24).round()).reshape(6, 4)
    values[1] = torch.tensor([1.5, float(np.float32(1) / np.float32(3)), 2.2321428e-13, 3.0e38])
    for layout in LAYOUTS:
        rows = spec.tma_rows(6) if layout == "column_major_tma" else 6
        scales = values.clone() if layout == "row_major" else torch.zeros(4, rows).t()[:6].copy_(values)
        out, want = torch.empty(6, 512, dtype=dtype), torch.empty(6, 512, dtype=dtype)
        kernels.dequantize_group(q, scales, out, group_size=128)
        reference.dequantize_group(q, scales, want, group_size=128)
        int_dtype = torch.int32 if dtype == torch.float32 else torch.int16
        assert torch.equal(out.view(int_dtype), want.view(int_dtype)), layout


def test_dequantize_blocks_padded_and_unpadded(spicy):
    w = spicy((300, 200), torch.float32, seed=5, exponent_run=1)
    q, s = quantize_block_outputs(w, (128, 128))
    reference.quantize_block(w, q, s, block=(128, 128), eps=1e-4, ue8m0=False)
    for scales in (s, s[:2], s.contiguous()):
        out, want = torch.empty(300, 200, dtype=torch.bfloat16), torch.empty(300, 200, dtype=torch.bfloat16)
        kernels.dequantize_block(q, scales, out, block=(128, 128))
        reference.dequantize_block(q, scales, want, block=(128, 128))
        assert torch.equal(out.view(torch.int16), want.view(torch.int16))


@triton.jit
def _divide(x_ptr, s_ptr, out_ptr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.reshape(tl.load(x_ptr + i), (1, 1, BLOCK))
    s = tl.load(s_ptr + tl.program_id(0) + tl.zeros((1, 1), tl.int32))
    tl.store(out_ptr + i, tl.reshape(kernels.divide(x, s), (BLOCK,)))


def test_divide_is_numpys_float32_division():
    """One scale per 256 dividends: random scales over [2^-126, 2^127] and near powers of two; dividends
    x = s * u with |u| up to 2^10 (the kernel divides only where |x / s| <= 448 (1 + 2^-23)), zeros of
    both signs and infinities; against the IEEE division. Below |x / s| = 2^-100 [F8-ELEMENT] keeps
    only a zero's worth of E4M3 and the sign: there a quotient of the right sign below 2^-99 will do."""
    g = np.random.default_rng(0)
    blocks = 512
    s_bits = g.integers(1 << 23, 254 << 23, blocks, dtype=np.int64)
    s_bits[:64] = (g.integers(1, 254, 64) << 23) + g.integers(0, 3, 64)
    s_bits[64] = 254 << 23  # 2^127, the Inf group's scale
    s_bits[65] = 1 << 23  # 2^-126, the floor
    s = s_bits.astype(np.uint32).view(np.float32)
    s_each = np.repeat(s, 256)
    u = (g.random(blocks * 256) * 2 - 1) * np.exp2(g.integers(-130, 11, blocks * 256))
    u[4::7] = 448.0 * (1 + g.integers(-3, 4, len(u[4::7])) * 2.0**-23)  # quotients at the clamp
    x = (s_each.astype(np.float64) * u).astype(np.float32)
    x[::97] = 0.0
    x[1::97] = -0.0
    x[2::389] = np.inf
    x[3::389] = -np.inf
    out = torch.empty(blocks * 256)
    _divide[(blocks,)](torch.from_numpy(x), torch.from_numpy(s), out, BLOCK=256)
    got, want = out.numpy(), x / s_each
    tiny = np.abs(want) < 2.0**-100
    assert np.array_equal(got[~tiny].view(np.uint32), want[~tiny].view(np.uint32))
    assert np.all(np.abs(got[tiny]) < 2.0**-99) and np.array_equal(np.signbit(got[tiny]), np.signbit(want[tiny]))
    assert (~tiny).sum() > 0.6 * len(x)
