"""Float32 bit arithmetic inside Triton kernels: exponent fields, exact powers of two and E4M3 bytes,
never log2/exp2 or a division. The kernel-side twin of backends/cpu/float_bits.py."""

import torch
import triton
import triton.language as tl

MANTISSA_BITS = tl.constexpr(23)


@triton.jit
def exponent_field(x):
    """Biased exponent (bits 30..23) of float32 `x`, as int32."""
    return (x.to(tl.int32, bitcast=True) >> MANTISSA_BITS) & 0xFF


@triton.jit
def ceil_exponent_field(x):
    """Biased exponent of the power-of-two ceiling of positive normal float32 `x` (+Inf: 255)."""
    bits = x.to(tl.int32, bitcast=True)
    return ((bits >> MANTISSA_BITS) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(tl.int32)


@triton.jit
def pow2(n):
    """Exactly 2**n as a normal float32, for int32 n in [-126, 127]."""
    return ((n + 127) << MANTISSA_BITS).to(tl.float32, bitcast=True)


@triton.jit
def pow2_or_subnormal(n):
    """Exactly 2**n as float32 for int32 n in [-127, 127]: 2**-127 is the subnormal 0x00400000.
    Only for targets whose float multiply keeps subnormal operands (NVIDIA's mul.f32 does)."""
    return tl.where(n >= -126, (n + 127) << MANTISSA_BITS, 1 << (MANTISSA_BITS - 1)).to(tl.float32, bitcast=True)


@triton.jit
def times_pow2(x, n):
    """x * 2**n for n in [-127, 127] as two normal factors: 2**-127 is a float32 subnormal, which a
    device that flushes subnormal operands would turn into 0. The first product is exact unless it
    underflows, and then the result lies far below anything E2M1 or E4M3 can tell from zero."""
    half = n >> 1
    return x * pow2(half) * pow2(n - half)


@triton.jit
def is_inf(x):
    return (x.to(tl.int32, bitcast=True) & 0x7FFFFFFF) == 0x7F800000


@triton.jit
def to_f32(x):
    """x widened to float32 exactly. bfloat16 widens by its bits, a 16-bit shift: the Triton
    interpreter's own bfloat16 conversion gets subnormals wrong."""
    if x.dtype == tl.bfloat16:
        return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return x.to(tl.float32)


@triton.jit
def e4m3_integer(v):
    """E4M3FN byte of non-NaN float32 v, saturated to +-448 and rounded to nearest even by integer
    arithmetic: every target and the interpreter compute this exactly."""
    v = tl.minimum(tl.maximum(v, -448.0), 448.0)
    bits = v.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    mag = bits & 0x7FFFFFFF
    # |v| >= 2^-6 (normal in E4M3): round the 23-bit mantissa to 3 bits, ties to even; rebias 127 -> 7
    normal = ((mag + 0x7FFFF + ((mag >> 20) & 1)) >> 20) - (120 << 3)
    # below: |v| * 2^9 (exact) rounded to an integer, ties to even, by adding and removing 2^23
    subnormal = ((tl.abs(v) * 512.0 + 8388608.0) - 8388608.0).to(tl.int32)
    return (tl.where(mag >= 0x3C800000, normal, subnormal) | sign).to(tl.uint8)


@triton.jit
def e4m3_value(byte):
    """The float32 value of E4M3FN bytes (int32 0..255), exactly; 0x7F and 0xFF give NaN."""
    exponent = (byte >> 3) & 0xF
    mantissa = byte & 7
    subnormal = (mantissa.to(tl.float32) * 0.001953125).to(tl.int32, bitcast=True)  # m * 2^-9, exact
    bits = tl.where(exponent == 0, subnormal, ((exponent + 120) << MANTISSA_BITS) | (mantissa << 20))
    bits = tl.where((byte & 0x7F) == 0x7F, 0x7FC00000, bits)
    return (bits | ((byte & 0x80) << 24)).to(tl.float32, bitcast=True)


@triton.jit
def e4m3_as_float16_bits(byte):
    """float16 bits (int32) of 2^-8 times the E4M3 values `byte` (int32 0..255), exactly: E4M3's exponent and
    mantissa fields are float16's with the exponent bias 7 lower, so placed at bits 13..7 of a float16 they
    read as the value times 2^(7 - 15), subnormals (exponent field 0) included; the sign moves from bit 14
    to bit 15 by adding it to itself. 0x7F and 0xFF (E4M3's NaN) read as +-1.875: callers mask them."""
    t = byte << 7
    return t + (t & 0x4000)


@triton.jit
def store_chunks(row_ptr, chunk, bits, chunk_ok):
    """Store `bits` (BLOCK_M, CHUNKS, C) to row_ptr (BLOCK_M, 1, 1) + chunk (CHUNKS,) + 0..C-1 where chunk_ok
    (BLOCK_M, CHUNKS), each chunk's 16-byte pieces the outermost dimension: so the store's layout keeps a
    thread's chunks in that thread (16-byte vectors), where a contiguous (BLOCK_M, CHUNKS * C) store, at most
    16 bytes a thread, would move them through shared memory."""
    M: tl.constexpr = bits.shape[0]
    CHUNKS: tl.constexpr = bits.shape[1]
    PIECE: tl.constexpr = 128 // row_ptr.dtype.element_ty.primitive_bitwidth
    PIECES: tl.constexpr = bits.shape[2] // PIECE
    pieces = tl.permute(tl.reshape(bits, (M, CHUNKS, PIECES, PIECE)), (2, 0, 1, 3))
    col = chunk[None, None, :, None] + (tl.arange(0, PIECES) * PIECE)[:, None, None, None] \
        + tl.arange(0, PIECE)[None, None, None, :]
    tl.store(row_ptr[None, :, :, :] + col, pieces, mask=chunk_ok[None, :, :, None])


@triton.jit
def scaled_float16_bits(h, n, nan, OUT: tl.constexpr):
    """The output bits (OUT as output_bits) of the float16 with bits `h` (int32; finite) times 2^n, for int32
    n in [-188, 254]; NaN's bits where `nan`. The float16 widens to float32 exactly and two normal powers of
    two scale it: exact, but for float32 overflow (Inf) and float32 subnormals, which round once, to nearest
    even. bfloat16: the products carry an extra 2^-16, so bfloat16's subnormal step 2^-133 lands on float32's
    2^-149 and that one rounding is bfloat16's; times 2^16 back (exact), the bits are the float32's high half.
    """
    v = h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    if OUT == 16:
        n = n - 16
    half = n >> 1
    out = v * pow2(half) * pow2(n - half)
    if OUT == 32:
        bits = tl.where(nan, 0x7FC00000, out.to(tl.int32, bitcast=True))
    elif OUT == 16:
        bits = (tl.where(nan, 0x7FC00000, (out * 65536.0).to(tl.int32, bitcast=True)) >> 16).to(tl.int16)
    else:
        bits = tl.where(nan, 0x7E00, out.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)).to(tl.int16)
    return bits


# What a dequantize kernel's OUT constexpr says of its output (output_bits), and the integer dtype
# its output is viewed as
OUT_BITS = {torch.float32: (torch.int32, 32), torch.bfloat16: (torch.int16, 16), torch.float16: (torch.int16, 15)}


@triton.jit
def output_bits(out, OUT: tl.constexpr):
    """float32 `out` rounded to the output dtype (nearest, ties to even) as its bits: OUT is 32
    (float32), 16 (bfloat16) or 15 (float16). NaN gets the dtype's canonical bits [NAN-BITS]."""
    nan = out != out
    if OUT == 32:
        result = tl.where(nan, 0x7FC00000, out.to(tl.int32, bitcast=True))
    elif OUT == 16:  # bfloat16 by integer round to nearest even (the interpreter's bfloat16 cast is unreliable)
        b = out.to(tl.int32, bitcast=True)
        magnitude = b & 0x7FFFFFFF
        rounded = (magnitude + 0x7FFF + ((magnitude >> 16) & 1)) >> 16
        result = tl.where(nan, 0x7FC0, rounded | ((b >> 16) & 0x8000)).to(tl.int16)
    else:
        result = tl.where(nan, 0x7E00, out.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)).to(tl.int16)
    return result
