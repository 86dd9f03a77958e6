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
