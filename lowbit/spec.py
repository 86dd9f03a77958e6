"""Constants of docs/SPEC.md, named once so that every backend reads the same numbers."""

import functools
import math
import struct

import torch

# MXFP4 [MX-*]
MX_BLOCK = 32  # elements per block along the last dim
MX_SCALE_RULES = ("rceil", "floor")
MX_DEFAULT_SCALE_RULE = "rceil"
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # code 0..7; 0x8 is the sign bit
E2M1_SIGN = 0x8
E2M1_NAN_BLOCK_NIBBLE = 0x7  # every nibble of a NaN block, MXFP4 and NVFP4
E8M0_BIAS = 127
E8M0_NAN = 0xFF
SCALE_EXP_MIN, SCALE_EXP_MAX = -127, 127  # clamp of e, both rules
RCEIL_AMAX_FLOOR = 6.0 * 2.0**-126  # max(amax, 6·2^-126) keeps d normal
MX_Q_DTYPE = torch.float4_e2m1fn_x2
MX_SCALE_DTYPE = torch.float8_e8m0fnu
# per_token_group_quant_mxfp4 [MX-BUFFERS, MX-EPS, MX-SCALE-F32]: vLLM's convention
MX_DEFAULT_EPS = 1e-10
MX_BUFFER_Q_DTYPES = (torch.uint8, MX_Q_DTYPE)
MX_BUFFER_SCALE_DTYPES = (torch.float32, MX_SCALE_DTYPE, torch.uint8)

# MXFP8 [MX8-*]: E4M3 elements in blocks of MX_BLOCK, E8M0 scales by the rules of MX_SCALE_RULES,
# clamped to [SCALE_EXP_MIN, SCALE_EXP_MAX], in the layouts of SCALE_LAYOUTS
MX8_E4M3_EMAX = 8  # [MX8-FLOOR]: floor(log2 448), the largest exponent of an E4M3 value
MX8_NAN_BYTE = 0x7F  # [MX8-NAN]: every element of a NaN block
MX8_Q_DTYPE = torch.float8_e4m3fn
MX8_SCALE_DTYPE = torch.float8_e8m0fnu

# Block-scale layouts of MXFP4, MXFP8 and NVFP4 [SCALE-SWIZZLE]
SCALE_LAYOUTS = ("linear", "swizzled")
SWIZZLE_ROWS, SWIZZLE_COLS = 128, 4  # 128 x 4 tiles of 512 bytes

# NVFP4 [NV-*]
NV_BLOCK = 16  # elements per block along the last dim
NV_GLOBAL_NUMERATOR = 448.0 * 6.0  # [NV-GLOBAL]: gs = 2688 / amax, the encode scale
NV_GS_MAX = 2.0**118  # [NV-GLOBAL] caps gs here; [NV-GLOBAL-GIVEN]: usable gs lie in [2^-118, 2^118]
NV_GS_MIN = 2.0**-118
NV_SCALE_NAN = 0x7F  # [NV-NAN, NV-GLOBAL-GIVEN]: the block scale byte of a NaN block
NV_Q_DTYPE = torch.float4_e2m1fn_x2
NV_SCALE_DTYPE = torch.float8_e4m3fn

# FP8 per-token-group, packed for DeepGEMM [FP8-*]
FP8_MAX = 448.0
FP8_MIN_SCALE = 1e-10  # y = max(y, 1e-10), as float32
FP8_DEFAULT_GROUP = 128
FP8_DEFAULT_EPS = 1e-10
FP8_MAX_SCALE_BYTE = 254
FP8_NAN_BYTE = 0x7F
FP8_GROUPS_PER_WORD = 4  # UE8M0 bytes packed little-endian into one int32
FP8_TMA_ROW_ALIGN = 4  # A = ceil(mn / 4) * 4
FP8_Q_DTYPE = torch.float8_e4m3fn
FP8_SCALE_DTYPE = torch.int32

# FP8 with float32 scales [F8-*]: 1 x G token groups and 2-D weight blocks
F8_SCALE_LAYOUTS = ("row_major", "column_major", "column_major_tma")
F8_SCALE_MIN, F8_SCALE_MAX = 2.0**-126, 2.0**127  # [F8-SCALE]: s is held to this range
F8_DEFAULT_BLOCK = (128, 128)
F8_BLOCK_EPS = 1e-4  # [F8-BLOCK]: DeepGEMM's and vLLM's per_block_cast_to_fp8 clamp the amax here
F8_SCALE_DTYPE = torch.float32

INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DEQUANT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# [MX-DEQUANT, FP8-DEQUANT]: NaN outputs are written with these bits (quiet, sign clear), since the
# payload arithmetic leaves in a NaN differs between CPUs and GPUs. Keyed by dtype: (int view, bits).
CANONICAL_NAN = {
    torch.float32: (torch.int32, 0x7FC00000),
    torch.bfloat16: (torch.int16, 0x7FC0),
    torch.float16: (torch.int16, 0x7E00),
}


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def tma_rows(mn: int) -> int:
    """A: the row count of the packed-scale layout, mn rounded up to the TMA alignment [FP8-PACK]."""
    return ceil_div(mn, FP8_TMA_ROW_ALIGN) * FP8_TMA_ROW_ALIGN


def scale_words(groups: int) -> int:
    """ceil(G/4): int32 words per row of packed scales [FP8-PACK]."""
    return ceil_div(groups, FP8_GROUPS_PER_WORD)


def round_up(a: int, b: int) -> int:
    return ceil_div(a, b) * b


def swizzled_scale_shape(rows: int, scale_cols: int) -> tuple[int, int]:
    """[SCALE-SWIZZLE]: the block-scale shape of R rows of C scales, padded to whole 128 x 4 tiles."""
    return round_up(rows, SWIZZLE_ROWS), round_up(scale_cols, SWIZZLE_COLS)


def scale_shape(lead, scale_cols: int, scale_layout: str) -> tuple[int, ...]:
    """The block scales' shape for rows `lead` of `scale_cols` scales each: (*lead, scale_cols), or
    the swizzled tiles of the folded rows [SCALE-SWIZZLE]."""
    if scale_layout == "swizzled":
        return swizzled_scale_shape(math.prod(lead), scale_cols)
    return (*lead, scale_cols)


def swizzled_offsets(rows: int, cols: int, device) -> torch.Tensor:
    """[SCALE-SWIZZLE]: the byte offset of each (row, scale column), row-major (rows, cols), flattened."""
    r = torch.arange(rows, device=device).reshape(-1, 1)
    c = torch.arange(cols, device=device).reshape(1, -1)
    tiles_per_row = ceil_div(cols, SWIZZLE_COLS)
    return (((r // 128) * tiles_per_row + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4).reshape(-1)


@functools.lru_cache(maxsize=64)  # eager calls ask it for the same eps every time
def float32_value(value: float) -> float:
    """fl32(value) (round to nearest, ties to even) as a Python float; inf where it overflows."""
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)
