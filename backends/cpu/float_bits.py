"""Float32 bit arithmetic for the reference: exact powers of two and exponents, never log2/exp2."""

import torch

from lowbit import spec

MANTISSA_BITS = 23
MANTISSA_MASK = (1 << MANTISSA_BITS) - 1
EXPONENT_BIAS = 127


def exponent_field(x: torch.Tensor) -> torch.Tensor:
    """Biased exponent (bits 30..23) of float32 `x`, as int32."""
    return (x.view(torch.int32) >> MANTISSA_BITS) & 0xFF


def ceil_exponent_field(x: torch.Tensor) -> torch.Tensor:
    """Biased exponent of the power-of-two ceiling of positive normal float32 `x`: the exponent
    field plus 1 when the mantissa is non-zero (+Inf gives 255)."""
    bits = x.view(torch.int32)
    return ((bits >> MANTISSA_BITS) & 0xFF) + ((bits & MANTISSA_MASK) != 0).to(torch.int32)


def pow2(n: torch.Tensor) -> torch.Tensor:
    """Exactly 2**n as float32 for int32 n in [-127, 127]; 2**-127 is the subnormal 0x00400000."""
    normal = (n + EXPONENT_BIAS) << MANTISSA_BITS
    return torch.where(n >= 1 - EXPONENT_BIAS, normal, 1 << (MANTISSA_BITS - 1)).view(torch.float32)


def f32(value: float, device) -> torch.Tensor:
    """fl32(value) as a 0-dim tensor, so products and quotients stay in float32. A fill, not
    torch.tensor: no host-to-device copy when the reference runs on a GPU's tensors."""
    return torch.full((), value, dtype=torch.float32, device=device)


def write_canonical_nans(out: torch.Tensor) -> None:
    """Give every NaN of `out` the canonical bits of its dtype (spec.CANONICAL_NAN)."""
    int_dtype, bits = spec.CANONICAL_NAN[out.dtype]
    out.view(int_dtype).masked_fill_(out.isnan(), bits)
