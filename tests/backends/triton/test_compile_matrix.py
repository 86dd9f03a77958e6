"""Every Triton kernel variant compiled ahead of time for the GPU targets lowbit claims, on a machine
without a GPU (the triton wheel's ptxas and AMD backend do the work): the portable kernels for
sm_90/sm_100/sm_120 and gfx942/gfx950, the PTX specialisations for the sm_100 families, and the
capability records checked against what the assembler accepts. Arguments are specialised as a real
launch on contiguous, 16-byte-aligned tensors specialises them: the last-dim stride is the constexpr
1 and pointers, K and row strides carry tt.divisibility=16, so the loads can vectorize."""

import os
import re

import pytest
import torch

triton = pytest.importorskip("triton")

from lowbit.backends.cuda import BACKEND as CUDA_BACKEND  # noqa: E402
from lowbit.backends.cuda import mxfp4 as cuda_mxfp4  # noqa: E402
from lowbit.backends.cuda import ptx  # noqa: E402
from lowbit.backends.triton import fp8_group, fp8_group_packed, mxfp4, mxfp8, nvfp4, unified_attention  # noqa: E402
from lowbit.backends.triton.launch import LaunchConfig  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.compiler.errors import CompilationError  # noqa: E402

pytestmark = [
    pytest.mark.aot,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                       reason="ahead-of-time compilation needs the real Triton compiler; TRITON_INTERPRET=1 turns "
                              "@triton.jit kernels into interpreted functions (CI row compile runs without it)"),
]

CUDA = {arch: GPUTarget("cuda", arch, 32) for arch in (80, 89, 90, 100, 103, 110, 120, 121)}
HIP = {arch: GPUTarget("hip", arch, 64) for arch in ("gfx942", "gfx950")}
MATRIX_CUDA = (90, 100, 120)
MATRIX_HIP = ("gfx942", "gfx950")
DTYPES = ("*bf16", "*fp16", "*fp32")
BLOCK_M, BLOCK_K, NUM_WARPS, GROUP = 8, 512, 4, 128
E2M1_CVT = "cvt.rn.satfinite.e2m1x2.f32"
UE8M0_CVT = "cvt.rp.satfinite.ue8m0x2.f32"
E4M3_CVT = "cvt.rn.satfinite.e4m3x2.f32"


def target(arch):
    return CUDA[arch] if isinstance(arch, int) else HIP[arch]


def compile_kernel(fn, signature, constexprs, arch, divisible, **options):
    """triton.compile for `arch`; `signature` names every kernel argument in order."""
    assert list(signature) == fn.arg_names, "the kernel's arguments changed: update this test's signature"
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=target(arch), options={"num_warps": NUM_WARPS, **options})


def compile_mxfp4(arch, *, dtype="*bf16", floor=False, hooks="portable", index="i32", scale_f32=False, has_eps=False,
                  swizzled=False, config=None, aligned=True):
    """config: the tile (default BLOCK_M x BLOCK_K on NUM_WARPS); aligned: x and its row stride known to be
    multiples of 16 (Triton's specialisation), else neither."""
    config = config or LaunchConfig(BLOCK_M, BLOCK_K, NUM_WARPS)
    portable = mxfp4.amax_bits_portable, mxfp4.encode_portable, mxfp4.rceil_exponent_portable
    amax, encode, rceil = {"portable": portable,
                           "ptx": (mxfp4.amax_bits_portable, ptx.encode_ptx, ptx.rceil_exponent_ptx),
                           "bf16x2": (ptx.amax_bits_bf16x2, ptx.encode_bf16x2, mxfp4.rceil_exponent_portable)}[hooks]
    signature = {"x_ptr": dtype, "q_ptr": "*u8", "s_ptr": "*i32" if scale_f32 else "*u8", "rows": "i32", "k": "i32",
                 "scale_rows": "i32", "stride_xm": index, "stride_xk": "constexpr", "eps_bits": "i32",
                 "FLOOR": "constexpr", "AMAX_BITS": "constexpr", "ENCODE": "constexpr", "RCEIL_EXPONENT": "constexpr",
                 "HAS_EPS": "constexpr", "SCALE_F32": "constexpr", "SWIZZLED": "constexpr", "BLOCK_M": "constexpr",
                 "BLOCK_K": "constexpr"}
    constexprs = {"stride_xk": 1, "FLOOR": floor, "AMAX_BITS": amax, "ENCODE": encode, "RCEIL_EXPONENT": rceil,
                  "HAS_EPS": has_eps, "SCALE_F32": scale_f32, "SWIZZLED": swizzled, "BLOCK_M": config.block_m,
                  "BLOCK_K": config.block_k}
    divisible = ("x_ptr", "q_ptr", "s_ptr", "k", "stride_xm") if aligned else ("q_ptr", "s_ptr", "k")
    return compile_kernel(mxfp4.quantize_mxfp4_kernel, signature, constexprs, arch, divisible=divisible,
                          num_warps=config.num_warps)


def compile_fp8(arch, *, hardware_e4m3, dtype="*bf16", index="i32"):
    signature = {"x_ptr": dtype, "q_ptr": "*u8", "s_ptr": "*i32", "mn": "i32", "k": "i32", "groups": "i32",
                 "q_rows": "i32", "s_rows": "i32", "tiles_per_batch": "i32", "stride_xb": index, "stride_xm": "i32",
                 "stride_xk": "constexpr", "stride_qb": index, "stride_sb": index, "stride_sw": "i32", "eps": "fp32",
                 "HARDWARE_E4M3": "constexpr", "GROUP": "constexpr", "BLOCK_M": "constexpr", "GROUP_THREADS": "constexpr"}
    config = LaunchConfig(block_m=BLOCK_M, block_k=4 * GROUP, num_warps=NUM_WARPS)
    constexprs = {"stride_xk": 1, "HARDWARE_E4M3": hardware_e4m3, "GROUP": GROUP, "BLOCK_M": BLOCK_M,
                  "GROUP_THREADS": fp8_group_packed.group_threads(config, GROUP, target(arch).warp_size)}
    return compile_kernel(fp8_group_packed.quantize_fp8_group_packed_kernel, signature, constexprs, arch,
                          divisible=("x_ptr", "q_ptr", "s_ptr", "k", "stride_xb", "stride_xm", "stride_qb",
                                     "stride_sb", "stride_sw"),
                          enable_fp_fusion=True)  # as its launcher compiles it


def ptx_ops(compiled) -> set[str]:
    """The opcodes (guard predicates stripped) of a compiled CUDA kernel's PTX."""
    ops = set()
    for line in compiled.asm["ptx"].splitlines():
        words = line.split()
        if words and words[0].startswith("@"):
            words = words[1:]
        if words and not words[0].startswith((".", "//", "$", "{", "}")):
            ops.add(words[0])
    return ops


def assert_compiled_without_flushing_subnormals(compiled, arch):
    """Assembled for the target, and no float op flushes subnormals: [MX-SCALING] scales by 2^-127
    and the inputs may be subnormal, so a .ftz op (or AMD denormals off) would change the bits."""
    assert compiled.metadata.num_warps == NUM_WARPS
    if isinstance(arch, int):
        assert compiled.asm["cubin"], "ptxas produced no cubin"
        assert f".target sm_{arch}" in compiled.asm["ptx"]
        assert not [op for op in ptx_ops(compiled) if ".ftz" in op], "flush-to-zero float ops in the PTX"
    else:
        assert compiled.asm["hsaco"], "no code object"
        assert compiled.metadata.warp_size == 64
        assert ".amdhsa_float_denorm_mode_32 3" in compiled.asm["amdgcn"], "float32 denormals are not preserved"


def assert_vector_loads(compiled, arch):
    """The input is read in 16-byte vectors (the constexpr unit stride and alignment made it through)."""
    if isinstance(arch, int):
        assert "ld.global.v4.b32" in ptx_ops(compiled), sorted(op for op in ptx_ops(compiled) if op.startswith("ld."))
    else:
        code = compiled.asm["amdgcn"]
        assert "global_load_dwordx4" in code or "buffer_load_dwordx4" in code


ARCH_IDS = lambda arch: f"sm{arch}" if isinstance(arch, int) else arch


# --- MXFP4 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", [*MATRIX_CUDA, *MATRIX_HIP], ids=ARCH_IDS)
@pytest.mark.parametrize("floor", [False, True], ids=["rceil", "floor"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mxfp4_portable_kernel_compiles_with_vector_loads_and_no_ptx_instructions(arch, floor, dtype):
    compiled = compile_mxfp4(arch, dtype=dtype, floor=floor)
    assert_compiled_without_flushing_subnormals(compiled, arch)
    assert_vector_loads(compiled, arch)
    if isinstance(arch, int):
        assert E2M1_CVT not in compiled.asm["ptx"] and UE8M0_CVT not in compiled.asm["ptx"]
        assert "e2m1" not in compiled.asm["ptx"] and "ue8m0" not in compiled.asm["ptx"]


def test_mxfp4_portable_kernel_compiles_for_the_oldest_arch_its_record_claims():
    record = next(k.capability for k in CUDA_BACKEND.kernels_for("quantize_mxfp4") if k.capability.variant == "triton")
    oldest = record.archs["cuda"].min
    assert oldest in CUDA and oldest in record.archs["cuda"]
    assert_compiled_without_flushing_subnormals(compile_mxfp4(oldest), oldest)


@pytest.mark.parametrize("arch", [*MATRIX_CUDA, *MATRIX_HIP], ids=ARCH_IDS)
@pytest.mark.parametrize("hooks", ["portable", "ptx"])
def test_mxfp4_swizzled_scales_compile(arch, hooks):
    if hooks == "ptx" and arch not in cuda_mxfp4.PTX_ARCHS:
        pytest.skip("the PTX hooks assemble on the sm_100 families only")
    assert_compiled_without_flushing_subnormals(compile_mxfp4(arch, hooks=hooks, swizzled=True), arch)


@pytest.mark.parametrize("arch", [80, *MATRIX_CUDA, *MATRIX_HIP], ids=ARCH_IDS)
@pytest.mark.parametrize("out_bits", [32, 16, 15], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("swizzled", [False, True], ids=["linear", "swizzled"])
def test_mxfp4_dequantize_kernel_compiles_without_flushing_subnormals(arch, out_bits, swizzled):
    """From sm_80 (the cuda record's oldest arch): E8M0 scales down to 2^-127 make subnormal outputs."""
    out = {32: "*i32", 16: "*i16", 15: "*i16"}[out_bits]
    signature = {"q_ptr": "*u8", "s_ptr": "*u8", "out_ptr": out, "rows": "i32", "k": "i32", "stride_qm": "i32",
                 "stride_sm": "i32", "SWIZZLED": "constexpr", "OUT": "constexpr", "BLOCK_M": "constexpr",
                 "BLOCK_K": "constexpr"}
    constexprs = {"SWIZZLED": swizzled, "OUT": out_bits, "BLOCK_M": BLOCK_M, "BLOCK_K": BLOCK_K}
    compiled = compile_kernel(mxfp4.dequantize_mxfp4_kernel, signature, constexprs, arch,
                              divisible=("q_ptr", "s_ptr", "out_ptr", "k", "stride_qm", "stride_sm"))
    assert_compiled_without_flushing_subnormals(compiled, arch)


@pytest.mark.parametrize("arch", sorted(cuda_mxfp4.PTX_ARCHS), ids=ARCH_IDS)
def test_mxfp4_ptx_variant_assembles_with_both_cvt_instructions_on_every_ptx_arch(arch):
    compiled = compile_mxfp4(arch, hooks="ptx")
    assert_compiled_without_flushing_subnormals(compiled, arch)
    assert_vector_loads(compiled, arch)
    assert E2M1_CVT in compiled.asm["ptx"] and UE8M0_CVT in compiled.asm["ptx"]


@pytest.mark.parametrize("arch", [100, 120], ids=ARCH_IDS)
@pytest.mark.parametrize("dtype", ["*fp16", "*fp32"])
def test_mxfp4_ptx_variant_floor_rule_uses_only_the_e2m1_cvt(arch, dtype):
    # FLOOR takes the scale from exponent bits: the RCEIL hook is not traced, its cvt not emitted
    compiled = compile_mxfp4(arch, hooks="ptx", floor=True, dtype=dtype)
    assert_compiled_without_flushing_subnormals(compiled, arch)
    assert E2M1_CVT in compiled.asm["ptx"] and UE8M0_CVT not in compiled.asm["ptx"]


@pytest.mark.parametrize("arch", [80, 89, 90], ids=ARCH_IDS)
def test_mxfp4_ptx_variant_fails_to_assemble_below_sm100(arch, capfd):
    with pytest.raises(Exception, match=r"e2m1x2|ue8m0x2") as failure:
        compile_mxfp4(arch, hooks="ptx")
    capfd.readouterr()  # Triton prints the whole PTX on an assembler error: drop it
    assert type(failure.value).__name__ == "PTXASError"
    assert f"sm_{arch}" in str(failure.value)


BF16X2_OPS = {"mul.rn.bf16x2", "fma.rn.bf16x2", "min.bf16x2", "max.u16x2"}


@pytest.mark.parametrize("swizzled", [False, True], ids=["linear", "swizzled"])
@pytest.mark.parametrize("floor", [False, True], ids=["rceil", "floor"])
@pytest.mark.parametrize("group_quant", [False, True], ids=["quantize", "group_quant"])
def test_mxfp4_bf16x2_variant_assembles_for_sm90_on_bfloat16_pairs(swizzled, floor, group_quant):
    compiled = compile_mxfp4(90, hooks="bf16x2", floor=floor, swizzled=swizzled, scale_f32=group_quant,
                             has_eps=group_quant)
    assert_compiled_without_flushing_subnormals(compiled, 90)
    assert_vector_loads(compiled, 90)
    assert BF16X2_OPS <= ptx_ops(compiled), sorted(ptx_ops(compiled))


def pair_hook_register_bases(compiled) -> list[list[int]]:
    """The register bases of the layout in which the bf16x2 encoder's inline asm takes x: with
    pack=2 it pairs a thread's consecutive registers, so the first basis must step the last dim by 1."""
    ttgir = compiled.asm["ttgir"]
    layout = re.search(r'tt\.elementwise_inline_asm "\{ \.reg \.b32 y, .*?: tensor<[^>]*?, (#\w+)>', ttgir).group(1)
    text = re.search(rf"^{re.escape(layout)} = (.*)$", ttgir, re.M).group(1)
    assert text.startswith("#ttg.linear"), text  # what Triton 3.9 gives after the tile's permute and reshape
    registers = re.search(r"register = \[(.*?)\], lane", text).group(1)
    return [[int(v) for v in basis.split(",")] for basis in re.findall(r"\[([\d, ]+)\]", registers)]


@pytest.mark.parametrize("k", [96, 7168])
@pytest.mark.parametrize("entry", range(len(mxfp4.LAUNCH_TABLE)))
def test_mxfp4_bf16x2_hooks_get_pairs_in_one_register_on_every_launch_tile(entry, k):
    """pairs_in_registers (backends/cuda/mxfp4.py) lets K >= 96 with 16-byte rows through: every table tile
    must then hand the pair hooks (2i, 2i + 1) in one register."""
    c = mxfp4.LAUNCH_TABLE[entry][2]
    config = LaunchConfig(c.block_m, min(c.block_k, triton.next_power_of_2(k)), c.num_warps)  # as launches()
    bases = pair_hook_register_bases(compile_mxfp4(90, hooks="bf16x2", config=config))
    assert bases and bases[0] == [0, 0, 1], (config, bases)


@pytest.mark.parametrize("config, aligned", [(LaunchConfig(4, 32, 4), True), (LaunchConfig(1, 1024, 1), False)],
                         ids=["k32_tile", "unaligned_rows"])
def test_mxfp4_bf16x2_hooks_get_no_pairs_where_the_launcher_routes_away(config, aligned):
    """The two kinds of input that gave wrong scales on the H100: a K = 32 tile (one element a thread) and
    rows Triton cannot assume 16-byte aligned (element-wise loads)."""
    bases = pair_hook_register_bases(compile_mxfp4(90, hooks="bf16x2", config=config, aligned=aligned))
    assert not bases or bases[0] != [0, 0, 1], bases


@pytest.mark.parametrize("arch", [80, 89], ids=ARCH_IDS)
def test_mxfp4_bf16x2_variant_fails_to_assemble_below_sm90(arch, capfd):
    # mul.rn.bf16x2 and max.u16x2 need sm_90: the record's arch set is where ptxas takes them
    assert cuda_mxfp4.BF16X2_ARCHS == {90}
    with pytest.raises(Exception, match=r"bf16x2|u16x2") as failure:
        compile_mxfp4(arch, hooks="bf16x2")
    capfd.readouterr()
    assert type(failure.value).__name__ == "PTXASError"


def test_ptx_capability_record_excludes_the_archs_whose_ptxas_rejects_it():
    assert 90 not in cuda_mxfp4.PTX_ARCHS and {100, 120} <= cuda_mxfp4.PTX_ARCHS
    assert min(cuda_mxfp4.PTX_ARCHS) >= 100
    kernels = CUDA_BACKEND.kernels_for("quantize_mxfp4")
    record = kernels[0].capability  # the specialised variant is tried first
    assert record.variant == "ptx"
    assert 90 not in record.archs["cuda"] and 89 not in record.archs["cuda"] and 80 not in record.archs["cuda"]
    assert 100 in record.archs["cuda"] and 120 in record.archs["cuda"]
    assert set(record.archs) == {"cuda"}


def test_mxfp4_kernel_takes_64_bit_row_strides():
    for arch in (100, "gfx942"):
        assert_compiled_without_flushing_subnormals(compile_mxfp4(arch, index="i64"), arch)


# per_token_group_quant_mxfp4 launches the same kernel with float32 scales (SCALE_F32) and a runtime
# eps floor (eps_bits under HAS_EPS, [MX-EPS]); compile_mxfp4 passes both as its launcher does
def eps_param() -> int:
    """eps_bits's index among the compiled kernel's parameters (constexprs are not parameters;
    stride_xk is specialised to the constexpr 1). A function: under TRITON_INTERPRET=1 the kernel
    has no params, and this module is still imported."""
    runtime = [p.name for p in mxfp4.quantize_mxfp4_kernel.params if not p.is_constexpr and p.name != "stride_xk"]
    return runtime.index("eps_bits")


def scale_stores(compiled, arch) -> set[str]:
    """The global store instructions of a compiled kernel (PTX opcodes; AMD mnemonics)."""
    if isinstance(arch, int):
        return {op for op in ptx_ops(compiled) if op.startswith("st.global")}
    return set(re.findall(r"\b(?:global|buffer)_store_\w+", compiled.asm["amdgcn"]))


def copies_of(ptx_text: str, register: str) -> set[str]:
    """`register` and every register a chain of mov instructions copies it into (sm_100 packs a
    float32 into both halves of a 64-bit register for paired float ops, and unpacks it again)."""
    movs = [(set(re.findall(r"%\w+", dst)), set(re.findall(r"%\w+", src)))
            for dst, src in re.findall(r"^\s*mov\.\w+\s+(\{[^}]*\}|%\w+),\s*([^;]+);", ptx_text, re.M)]
    found, grown = {register}, True
    while grown:
        grown = False
        for dst, src in movs:
            if found & src and not dst <= found:
                found |= dst
                grown = True
    return found


def eps_max_survives(compiled, arch) -> bool:
    """A float max takes the eps_bits argument: in the PTX, max.f32 reads the register loaded from
    its kernel parameter (or a copy of it); on AMD, a v_max_f32 reads a scalar register (eps is the
    one float kernel argument, uniform across the wave; the amax and the 6 * 2^-126 floor live in
    vector registers and a literal)."""
    if isinstance(arch, int):
        ptx_text = compiled.asm["ptx"]
        loaded = re.search(rf"ld\.param\.b32\s+(%r\d+), \[\w+_param_{eps_param()}\];", ptx_text)
        if not loaded:
            return False
        eps = copies_of(ptx_text, loaded.group(1))
        return any(eps & set(re.findall(r"%\w+", operands))
                   for operands in re.findall(r"^\s*max\.f32\s+%\w+,([^;]+);", ptx_text, re.M))
    return bool(re.search(r"v_max_f32\w*\s+v\d+, (?:[^,\n]+, )?s\d+\b", compiled.asm["amdgcn"]))


@pytest.mark.parametrize(("arch", "hooks"), [(90, "portable"), (100, "portable"), (100, "ptx"), ("gfx942", "portable")],
                         ids=lambda v: ARCH_IDS(v) if not isinstance(v, str) or v.startswith("gfx") else v)
def test_mxfp4_kernel_with_float32_scales_stores_32_bit_words_and_keeps_the_eps_max(arch, hooks):
    compiled = compile_mxfp4(arch, hooks=hooks, scale_f32=True, has_eps=True)
    assert_compiled_without_flushing_subnormals(compiled, arch)
    assert_vector_loads(compiled, arch)
    stores = scale_stores(compiled, arch)
    if isinstance(arch, int):
        assert "st.global.b32" in stores and "st.global.b8" not in stores, sorted(stores)
        assert (E2M1_CVT in compiled.asm["ptx"]) == (hooks == "ptx")
    else:
        assert "global_store_dword" in stores and "global_store_byte" not in stores, sorted(stores)
    assert eps_max_survives(compiled, arch), "no float max reads eps_bits: the eps floor [MX-EPS] was dropped"


@pytest.mark.parametrize("arch", [90, "gfx942"], ids=ARCH_IDS)
def test_mxfp4_kernel_with_e8m0_scales_stores_bytes_and_reads_no_eps_unless_asked(arch):
    """The other side of the test above: E8M0 scales are byte stores, and without HAS_EPS
    (quantize_mxfp4) or under FLOOR (which never reads eps) no float max takes eps, so those checks
    can tell, and quantize_mxfp4 pays nothing for the eps floor."""
    compiled = compile_mxfp4(arch)
    assert ("st.global.b8" if isinstance(arch, int) else "global_store_byte") in scale_stores(compiled, arch)
    assert not eps_max_survives(compiled, arch)
    assert not eps_max_survives(compile_mxfp4(arch, floor=True, scale_f32=True, has_eps=True), arch)


# --- MXFP8 ------------------------------------------------------------------------------------------

def compile_mxfp8(arch, *, hardware_e4m3, dtype="*bf16", floor=False, swizzled=False, index="i32"):
    """quantize_mxfp8_kernel as its launcher compiles it for a contiguous input (the 4 x 512 tiles of its table)."""
    signature = {"x_ptr": dtype, "q_ptr": "*u8", "s_ptr": "*u8", "rows": "i32", "k": "i32", "scale_rows": "i32",
                 "stride_xm": index, "stride_xk": "constexpr", "FLOOR": "constexpr", "HARDWARE_E4M3": "constexpr",
                 "SWIZZLED": "constexpr", "BLOCK_M": "constexpr", "BLOCK_K": "constexpr"}
    constexprs = {"stride_xk": 1, "FLOOR": floor, "HARDWARE_E4M3": hardware_e4m3, "SWIZZLED": swizzled, "BLOCK_M": 4,
                  "BLOCK_K": 512}
    return compile_kernel(mxfp8.quantize_mxfp8_kernel, signature, constexprs, arch,
                          divisible=("x_ptr", "q_ptr", "s_ptr", "k", "stride_xm"), enable_fp_fusion=True)


def compile_mxfp8_dequantize(arch, out_bits, swizzled=False):
    signature = {"q_ptr": "*u8", "s_ptr": "*u8", "out_ptr": "*i32" if out_bits == 32 else "*i16", "rows": "i32",
                 "k": "i32", "stride_qm": "i32", "stride_qk": "constexpr", "stride_sm": "i32", "stride_sk": "constexpr",
                 "SWIZZLED": "constexpr", "OUT": "constexpr", "BLOCK_M": "constexpr", "BLOCK_K": "constexpr"}
    constexprs = {"stride_qk": 1, "stride_sk": 1, "SWIZZLED": swizzled, "OUT": out_bits, "BLOCK_M": 4,
                  "BLOCK_K": 1024}  # a large-M tile
    return compile_kernel(mxfp8.dequantize_mxfp8_kernel, signature, constexprs, arch,
                          divisible=("q_ptr", "s_ptr", "out_ptr", "k", "stride_qm"), enable_fp_fusion=False)


@pytest.mark.parametrize("arch", [89, *MATRIX_CUDA], ids=ARCH_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("floor", "swizzled"), [(False, False), (True, True)], ids=["rceil-linear", "floor-swizzled"])
def test_mxfp8_hardware_e4m3_quantize_uses_the_cvt_instruction(arch, dtype, floor, swizzled):
    compiled = compile_mxfp8(arch, hardware_e4m3=True, dtype=dtype, floor=floor, swizzled=swizzled)
    assert_compiled_without_flushing_subnormals(compiled, arch)
    assert_vector_loads(compiled, arch)
    assert E4M3_CVT in compiled.asm["ptx"]
    assert not [op for op in ptx_ops(compiled) if op.startswith(("div", "rcp", "ex2", "lg2"))]  # bits, not log2/exp2


@pytest.mark.parametrize("arch", [*MATRIX_CUDA, *MATRIX_HIP], ids=ARCH_IDS)
@pytest.mark.parametrize("rule", ["rceil", "floor"])
@pytest.mark.parametrize("swizzled", [False, True], ids=["linear", "swizzled"])
def test_mxfp8_integer_e4m3_quantize_compiles_everywhere_without_an_fp8_conversion(arch, rule, swizzled):
    compiled = compile_mxfp8(arch, hardware_e4m3=False, floor=rule == "floor", swizzled=swizzled)
    assert_compiled_without_flushing_subnormals(compiled, arch)
    assert_vector_loads(compiled, arch)
    if isinstance(arch, int):
        assert "e4m3" not in compiled.asm["ptx"]
    else:
        fp8_cvts = [line for line in compiled.asm["amdgcn"].splitlines() if "v_cvt" in line and "fp8" in line]
        assert not fp8_cvts, fp8_cvts[:4]


@pytest.mark.parametrize("arch", [*MATRIX_CUDA, *MATRIX_HIP], ids=ARCH_IDS)
def test_mxfp8_dequantize_kernel_compiles_for_every_output_and_layout_without_shared_memory(arch):
    for out_bits in (32, 16, 15):
        compiled = compile_mxfp8_dequantize(arch, out_bits, swizzled=out_bits == 16)
        assert_compiled_without_flushing_subnormals(compiled, arch)
        assert compiled.metadata.shared == 0  # the loads and stores agree on a layout: no shuffle
        if isinstance(arch, int):
            assert not [op for op in ptx_ops(compiled) if op.startswith(("div", "rcp", "ex2"))]
            assert "st.global.v4.b32" in ptx_ops(compiled)  # 16-byte stores


def test_mxfp8_kernel_takes_64_bit_row_strides_and_float32_input():
    for arch in (100, "gfx942"):
        compiled = compile_mxfp8(arch, hardware_e4m3=isinstance(arch, int), dtype="*fp32", index="i64")
        assert_compiled_without_flushing_subnormals(compiled, arch)


def test_mxfp8_cuda_records_claim_only_archs_with_the_hardware_e4m3_cast_and_it_compiles_at_the_oldest():
    for op in ("quantize_mxfp8", "dequantize_mxfp8"):
        (kernel,) = CUDA_BACKEND.kernels_for(op)
        archs = kernel.capability.archs["cuda"]
        assert 89 in archs and 90 in archs and 100 in archs and 120 in archs and 80 not in archs
    oldest = CUDA_BACKEND.kernels_for("quantize_mxfp8")[0].capability.archs["cuda"].min
    assert E4M3_CVT in compile_mxfp8(oldest, hardware_e4m3=True).asm["ptx"]
    assert_compiled_without_flushing_subnormals(compile_mxfp8_dequantize(oldest, 16), oldest)


# --- NVFP4 ------------------------------------------------------------------------------------------

def compile_nvfp4(arch, *, dtype="*bf16", source=nvfp4.GIVEN, swizzled=False, hooks="portable"):
    encode = {"portable": nvfp4.encode_portable, "ptx": ptx.e2m1_pairs_ptx}[hooks]
    signature = {"x_ptr": dtype, "q_ptr": "*u8", "s_ptr": "*u8", "gs_ptr": "*fp32", "partials_ptr": "*fp32",
                 "rows": "i32", "k": "i32", "scale_rows": "i32", "stride_xm": "i32", "stride_xk": "constexpr",
                 "parts": "i32", "SCALE": "constexpr", "SWIZZLED": "constexpr", "ENCODE": "constexpr",
                 "PARTS": "constexpr", "BLOCK_M": "constexpr", "BLOCK_K": "constexpr"}
    constexprs = {"stride_xk": 1, "SCALE": source, "SWIZZLED": swizzled, "ENCODE": encode, "PARTS": 64,
                  "BLOCK_M": BLOCK_M, "BLOCK_K": BLOCK_K}
    return compile_kernel(nvfp4.quantize_nvfp4_kernel, signature, constexprs, arch,
                          divisible=("x_ptr", "q_ptr", "s_ptr", "k", "stride_xm"), enable_fp_fusion=False)


def compile_nvfp4_rows(arch, *, one_tile=True, swizzled=True, hooks="portable"):
    encode = {"portable": nvfp4.encode_portable, "ptx": ptx.e2m1_pairs_ptx}[hooks]
    signature = {"x_ptr": "*bf16", "q_ptr": "*u8", "s_ptr": "*u8", "gs_ptr": "*fp32", "rows": "i32", "k": "i32",
                 "scale_rows": "i32", "stride_xm": "i32", "stride_xk": "constexpr", "SWIZZLED": "constexpr",
                 "ENCODE": "constexpr", "ONE_TILE": "constexpr", "BLOCK_M": "constexpr", "BLOCK_K": "constexpr"}
    constexprs = {"stride_xk": 1, "SWIZZLED": swizzled, "ENCODE": encode, "ONE_TILE": one_tile, "BLOCK_M": 1,
                  "BLOCK_K": 8192 if one_tile else 2048}
    return compile_kernel(nvfp4.quantize_nvfp4_rows_kernel, signature, constexprs, arch,
                          divisible=("x_ptr", "q_ptr", "s_ptr", "k", "stride_xm"), enable_fp_fusion=False)


def compile_nvfp4_amax(arch, per_row):
    signature = {"x_ptr": "*bf16", "out_ptr": "*fp32", "rows": "i32", "k": "i32", "stride_xm": "i32",
                 "stride_xk": "constexpr", "PER_ROW": "constexpr", "BLOCK_M": "constexpr", "BLOCK_K": "constexpr"}
    return compile_kernel(nvfp4.nvfp4_amax_kernel, signature,
                          {"stride_xk": 1, "PER_ROW": per_row, "BLOCK_M": 4, "BLOCK_K": 1024}, arch,
                          divisible=("x_ptr", "k", "stride_xm"))


def compile_nvfp4_dequantize(arch, out_bits, swizzled=False):
    signature = {"q_ptr": "*u8", "s_ptr": "*u8", "gs_ptr": "*fp32", "out_ptr": "*i32" if out_bits == 32 else "*i16",
                 "rows": "i32", "k": "i32", "PER_ROW": "constexpr", "SWIZZLED": "constexpr", "OUT": "constexpr",
                 "BLOCK_M": "constexpr", "BLOCK_K": "constexpr"}
    constexprs = {"PER_ROW": True, "SWIZZLED": swizzled, "OUT": out_bits, "BLOCK_M": 4, "BLOCK_K": 1024}
    return compile_kernel(nvfp4.dequantize_nvfp4_kernel, signature, constexprs, arch,
                          divisible=("q_ptr", "s_ptr", "out_ptr", "k"), enable_fp_fusion=False)


def assert_ieee_divisions(compiled, arch):
    """[NV-MULTIPLIER, NV-GLOBAL, NV-DEQUANT] divide correctly rounded: div.rn.f32, never the
    approximate division or reciprocal NVIDIA's own NVFP4 kernels use."""
    if isinstance(arch, int):
        ops = ptx_ops(compiled)
        assert "div.rn.f32" in ops, sorted(op for op in ops if op.startswith(("div", "rcp")))
        assert not [op for op in ops if op.startswith("rcp.approx") or op.startswith("div.approx")
                    or op.startswith("div.full")]


@pytest.mark.parametrize("arch", [*MATRIX_CUDA, *MATRIX_HIP], ids=ARCH_IDS)
@pytest.mark.parametrize("source", [nvfp4.GIVEN, nvfp4.GIVEN_PER_ROW, nvfp4.FROM_PARTIALS], ids=["given", "row", "partials"])
@pytest.mark.parametrize("swizzled", [False, True], ids=["linear", "swizzled"])
def test_nvfp4_portable_kernel_compiles_with_ieee_divisions_and_no_ptx_cvt(arch, source, swizzled):
    compiled = compile_nvfp4(arch, source=source, swizzled=swizzled)
    assert_compiled_without_flushing_subnormals(compiled, arch)
    assert_vector_loads(compiled, arch)
    assert_ieee_divisions(compiled, arch)
    if isinstance(arch, int):
        assert "e2m1" not in compiled.asm["ptx"]


@pytest.mark.parametrize("dtype", ["*fp16", "*fp32"])
def test_nvfp4_portable_kernel_compiles_for_every_input_dtype(dtype):
    for arch in (80, "gfx950"):
        assert_compiled_without_flushing_subnormals(compile_nvfp4(arch, dtype=dtype), arch)


@pytest.mark.parametrize("arch", sorted(cuda_mxfp4.PTX_ARCHS), ids=ARCH_IDS)
def test_nvfp4_ptx_variant_has_the_e2m1_cvt_on_every_ptx_arch(arch):
    for compiled in (compile_nvfp4(arch, hooks="ptx", source=nvfp4.FROM_PARTIALS, swizzled=True),
                     compile_nvfp4_rows(arch, hooks="ptx")):
        assert_compiled_without_flushing_subnormals(compiled, arch)
        assert E2M1_CVT in compiled.asm["ptx"]
        assert_ieee_divisions(compiled, arch)


@pytest.mark.parametrize("arch", [90, "gfx942"], ids=ARCH_IDS)
def test_nvfp4_ptx_variant_fails_to_assemble_below_sm100_and_its_record_excludes_them(arch, capfd):
    from lowbit.backends.cuda import nvfp4 as cuda_nvfp4

    record = next(k.capability for k in cuda_nvfp4.KERNELS if k.capability.variant == "ptx")
    assert record.archs["cuda"] == cuda_mxfp4.PTX_ARCHS and 90 not in record.archs["cuda"]
    if arch == 90:
        with pytest.raises(Exception, match=r"e2m1x2"):
            compile_nvfp4(arch, hooks="ptx")
        capfd.readouterr()


@pytest.mark.parametrize("arch", [*MATRIX_CUDA, *MATRIX_HIP], ids=ARCH_IDS)
def test_nvfp4_rows_amax_and_dequantize_kernels_compile(arch):
    for compiled in (compile_nvfp4_rows(arch, one_tile=True), compile_nvfp4_rows(arch, one_tile=False, swizzled=False),
                     compile_nvfp4_amax(arch, per_row=False), compile_nvfp4_amax(arch, per_row=True)):
        assert_compiled_without_flushing_subnormals(compiled, arch)
        assert_vector_loads(compiled, arch)
    for out_bits in (32, 16, 15):
        compiled = compile_nvfp4_dequantize(arch, out_bits, swizzled=out_bits == 16)
        assert_compiled_without_flushing_subnormals(compiled, arch)
        assert_ieee_divisions(compiled, arch)


def test_nvfp4_portable_records_claim_sm80_and_it_compiles_there():
    from lowbit.backends.cuda import nvfp4 as cuda_nvfp4

    for kernel in cuda_nvfp4.KERNELS:
        if kernel.capability.variant == "triton":
            assert kernel.capability.archs["cuda"].min == 80
    for compiled in (compile_nvfp4(80, source=nvfp4.FROM_PARTIALS), compile_nvfp4_rows(80),
                     compile_nvfp4_dequantize(80, 16)):
        assert_compiled_without_flushing_subnormals(compiled, 80)


# --- FP8 group-packed -------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", [89, *MATRIX_CUDA], ids=ARCH_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_hardware_e4m3_uses_the_cvt_instruction(arch, dtype):
    compiled = compile_fp8(arch, hardware_e4m3=True, dtype=dtype)
    assert_compiled_without_flushing_subnormals(compiled, arch)
    assert_vector_loads(compiled, arch)
    assert E4M3_CVT in compiled.asm["ptx"]


@pytest.mark.parametrize("arch", [*MATRIX_CUDA, *MATRIX_HIP], ids=ARCH_IDS)
@pytest.mark.parametrize("dtype", ["*bf16", "*fp32"])
def test_fp8_integer_e4m3_compiles_everywhere_without_an_fp8_conversion(arch, dtype):
    compiled = compile_fp8(arch, hardware_e4m3=False, dtype=dtype)
    assert_compiled_without_flushing_subnormals(compiled, arch)
    assert_vector_loads(compiled, arch)
    if isinstance(arch, int):
        assert "e4m3" not in compiled.asm["ptx"]
    else:
        fp8_cvts = [line for line in compiled.asm["amdgcn"].splitlines() if "v_cvt" in line and "fp8" in line]
        assert not fp8_cvts, fp8_cvts[:4]


@pytest.mark.parametrize("arch", [100, "gfx950"], ids=ARCH_IDS)
def test_fp8_reductions_use_no_shared_memory_beyond_the_word_store(arch):
    # the group amax and the word's byte sum reduce within a warp (shuffles); at most the BLOCK_M
    # int32 words pass through shared memory on their way to one contiguous store
    compiled = compile_fp8(arch, hardware_e4m3=isinstance(arch, int))
    assert compiled.metadata.shared <= 4 * BLOCK_M, compiled.metadata.shared


def test_fp8_kernel_takes_64_bit_batch_strides():
    for arch in (100, "gfx942"):
        assert_compiled_without_flushing_subnormals(compile_fp8(arch, hardware_e4m3=False, index="i64"), arch)


def test_fp8_cuda_record_claims_only_archs_with_the_hardware_e4m3_cast():
    for op in ("quantize_fp8_group_packed", "dequantize_fp8_group_packed"):
        (kernel,) = CUDA_BACKEND.kernels_for(op)
        archs = kernel.capability.archs["cuda"]
        assert 89 in archs and 90 in archs and 100 in archs and 120 in archs and 80 not in archs


def compile_fp8_dequantize(arch, *, out_bits, group=GROUP, index="i32"):
    """dequantize_fp8_group_packed_kernel as its launcher specialises it on contiguous q and MN-major
    packed scales (column and row strides 1)."""
    signature = {"q_ptr": "*u8", "s_ptr": "*i32", "out_ptr": "*i32" if out_bits == 32 else "*i16", "mn": "i32",
                 "k": "i32", "groups": "i32", "tiles_per_batch": "i32", "stride_qb": index, "stride_qm": "i32",
                 "stride_qk": "constexpr", "stride_sb": index, "stride_sm": "constexpr", "stride_sw": "i32",
                 "OUT": "constexpr", "GROUP": "constexpr", "BLOCK_M": "constexpr", "BLOCK_K": "constexpr"}
    constexprs = {"stride_qk": 1, "stride_sm": 1, "OUT": out_bits, "GROUP": group, "BLOCK_M": 4, "BLOCK_K": 1024}
    return compile_kernel(fp8_group_packed.dequantize_fp8_group_packed_kernel, signature, constexprs, arch,
                          divisible=("q_ptr", "s_ptr", "out_ptr", "k", "stride_qb", "stride_qm", "stride_sb",
                                     "stride_sw"), enable_fp_fusion=False)


@pytest.mark.parametrize("arch", [89, *MATRIX_CUDA, *MATRIX_HIP], ids=ARCH_IDS)
@pytest.mark.parametrize("out_bits", [32, 16, 15])
@pytest.mark.parametrize("group", [64, 128])
def test_fp8_group_packed_dequantize_kernel_compiles_with_vector_accesses(arch, out_bits, group):
    compiled = compile_fp8_dequantize(arch, out_bits=out_bits, group=group)
    assert_compiled_without_flushing_subnormals(compiled, arch)  # byte 0 scales by 2^-127: subnormal results
    if isinstance(arch, int):  # bandwidth: q bytes and the output in 16-byte vectors, no fp8 conversion
        ops = ptx_ops(compiled)
        assert "ld.global.v4.b32" in ops and "st.global.v4.b32" in ops, sorted(o for o in ops if o[:3] in ("ld.", "st."))
        assert "e4m3" not in compiled.asm["ptx"]


def test_fp8_group_packed_dequantize_kernel_takes_64_bit_batch_strides():
    for arch in (90, "gfx942"):
        assert_compiled_without_flushing_subnormals(compile_fp8_dequantize(arch, out_bits=16, index="i64"), arch)


# --- FP8 with float32 scales -------------------------------------------------------------------------

def compile_fp8_group(arch, *, hardware_e4m3, ue8m0=False, tile=False, dtype="*bf16", group=GROUP):
    """quantize_fp8_kernel as a launch on contiguous input specialises it: column-major scales (row
    stride 1) for groups, the transposed (Kb4, Nb) block scales (group stride 1) for TILE."""
    signature = {"x_ptr": dtype, "q_ptr": "*u8", "s_ptr": "*fp32", "mn": "i32", "k": "i32", "groups": "i32",
                 "q_rows": "i32", "s_rows": "i32", "tiles_per_batch": "i32", "stride_xb": "i32", "stride_xm": "i32",
                 "stride_xk": "constexpr", "stride_qb": "i32", "stride_sb": "i32",
                 "stride_sm": "i32" if tile else "constexpr", "stride_sg": "constexpr" if tile else "i32",
                 "eps": "fp32", "UE8M0": "constexpr", "HARDWARE_E4M3": "constexpr", "TILE": "constexpr",
                 "GROUP": "constexpr", "GROUPS": "constexpr", "BLOCK_M": "constexpr"}
    constexprs = {"stride_xk": 1, ("stride_sg" if tile else "stride_sm"): 1, "UE8M0": ue8m0,
                  "HARDWARE_E4M3": hardware_e4m3, "TILE": tile, "GROUP": group,
                  "GROUPS": 1 if tile else 512 // group, "BLOCK_M": 128 if tile else 4}
    return compile_kernel(fp8_group.quantize_fp8_kernel, signature, constexprs, arch,
                          divisible=("x_ptr", "q_ptr", "s_ptr", "k", "stride_xb", "stride_xm", "stride_qb", "stride_sb"),
                          num_warps=8 if tile else NUM_WARPS, enable_fp_fusion=False)


def assert_one_ieee_division_per_group(compiled, arch):
    """[F8-SCALE, F8-ELEMENT]: the scale and the reciprocal of its significand by div.rn.f32, the
    elements by products and fma.rn (fp8_group.divide): never an approximate division or reciprocal."""
    if isinstance(arch, int):
        ops = ptx_ops(compiled)
        assert "div.rn.f32" in ops and "fma.rn.f32" in ops, sorted(op for op in ops if op.startswith(("div", "fma")))
        assert not [op for op in ops if op.startswith(("rcp.approx", "div.approx", "div.full"))]


@pytest.mark.parametrize("arch", [*MATRIX_CUDA, *MATRIX_HIP], ids=ARCH_IDS)
@pytest.mark.parametrize("ue8m0", [False, True], ids=["float", "ue8m0"])
@pytest.mark.parametrize("tile", [False, True], ids=["group", "block"])
def test_fp8_group_kernel_compiles_with_ieee_divisions_and_vector_loads(arch, ue8m0, tile):
    hardware = isinstance(arch, int)
    compiled = compile_fp8_group(arch, hardware_e4m3=hardware, ue8m0=ue8m0, tile=tile)
    assert compiled.metadata.num_warps == (8 if tile else NUM_WARPS)
    if hardware:
        assert compiled.asm["cubin"] and not [op for op in ptx_ops(compiled) if ".ftz" in op]
        assert E4M3_CVT in compiled.asm["ptx"]
    else:
        assert ".amdhsa_float_denorm_mode_32 3" in compiled.asm["amdgcn"], "float32 denormals are not preserved"
    assert_vector_loads(compiled, arch)
    assert_one_ieee_division_per_group(compiled, arch)


@pytest.mark.parametrize("arch", [80, 90, "gfx942"], ids=ARCH_IDS)
@pytest.mark.parametrize("dtype", ["*fp16", "*fp32"])
def test_fp8_group_integer_e4m3_kernel_compiles_for_every_dtype_and_group_64(arch, dtype):
    compiled = compile_fp8_group(arch, hardware_e4m3=False, dtype=dtype, group=64)
    if isinstance(arch, int):
        assert "e4m3" not in compiled.asm["ptx"] and not [op for op in ptx_ops(compiled) if ".ftz" in op]
    assert_one_ieee_division_per_group(compiled, arch)


@pytest.mark.parametrize("arch", [*MATRIX_CUDA, *MATRIX_HIP], ids=ARCH_IDS)
@pytest.mark.parametrize("out_bits", [32, 16, 15])
def test_fp8_group_dequantize_kernel_compiles(arch, out_bits):
    signature = {"q_ptr": "*u8", "s_ptr": "*fp32", "out_ptr": "*i32" if out_bits == 32 else "*i16", "mn": "i32",
                 "k": "i32", "tiles_per_batch": "i32", "stride_sb": "i32", "stride_sm": "constexpr",
                 "stride_sg": "i32", "OUT": "constexpr", "GROUP": "constexpr", "SCALE_ROWS": "constexpr",
                 "BLOCK_M": "constexpr", "BLOCK_K": "constexpr"}
    constexprs = {"stride_sm": 1, "OUT": out_bits, "GROUP": GROUP, "SCALE_ROWS": 1, "BLOCK_M": 4, "BLOCK_K": 1024}
    compiled = compile_kernel(fp8_group.dequantize_fp8_kernel, signature, constexprs, arch,
                              divisible=("q_ptr", "s_ptr", "out_ptr", "k"), enable_fp_fusion=False)
    assert_compiled_without_flushing_subnormals(compiled, arch)


def test_fp8_group_cuda_records_claim_only_archs_with_the_hardware_e4m3_cast():
    for op in ("quantize_fp8_group", "dequantize_fp8_group", "quantize_fp8_block", "dequantize_fp8_block"):
        (kernel,) = CUDA_BACKEND.kernels_for(op)
        archs = kernel.capability.archs["cuda"]
        assert 89 in archs and 90 in archs and 100 in archs and 120 in archs and 80 not in archs


# --- unified attention ------------------------------------------------------------------------------
# The kernel as attend() launches it on a GPU (DOT_F32 off, so tl.dot takes 16-bit operands), with the
# tile configs plan() picks: a prefill launch (2-D, BLOCK_M 128) and a decode launch forced to 4 splits
# (BLOCK_M 16, the partials merged by reduce_splits_kernel). With an FP8 cache the dots take float16:
# E4M3 converts in hardware (sm_89+), and a bfloat16 query is scaled into float16 per row.

ATTN_HEADS, ATTN_KV_HEADS, ATTN_PAGE = 32, 8, 16
# (q, cache, out) pointer types
ATTN_DTYPES = {"bf16": ("*bf16", "*bf16", "*bf16"), "fp8kv": ("*bf16", "*fp8e4nv", "*bf16"),
               "fp8": ("*fp8e4nv", "*fp8e4nv", "*bf16"), "fp16-fp8kv": ("*fp16", "*fp8e4nv", "*fp16")}
# (dtypes, head size, launch, options on): every dtype with both head sizes, both launches, and the
# options (softcap, ALiBi, sinks, a left window) on and off
ATTN_VARIANTS = [
    ("bf16", 128, "prefill", False), ("bf16", 80, "decode", True),
    ("fp8kv", 128, "decode", False), ("fp8kv", 80, "prefill", True),
    ("fp8", 128, "prefill", True), ("fp8", 80, "decode", False),
]
ATTN_ARCHS = [*MATRIX_CUDA, "gfx942"]  # gfx950 below: the AMD compiles of FP8 take 15-35 s each
# the dot of each dtype pairing: (the operand type in a CUDA mma, in an AMD v_mfma): an FP8 cache
# converts to float16 (one cvt per pair of E4M3 values), a bfloat16 query scaled into float16's range
DOT_TYPES = {"bf16": ("bf16", "bf16"), "fp8kv": ("f16", "f16"), "fp8": ("f16", "f16"), "fp16-fp8kv": ("f16", "f16")}
E4M3_TO_F16_CVT = "cvt.rn.f16x2.e4m3x2"


def attention_plan(launch, head_size):
    """plan()'s choice for a prefill batch, or for a small decode batch with 4 splits forced."""
    group = ATTN_HEADS // ATTN_KV_HEADS
    if launch == "prefill":
        return unified_attention.plan(num_tokens=4096, num_seqs=8, max_seqlen_q=512, max_seqlen_k=4096, group=group,
                                      kv_heads=ATTN_KV_HEADS, head_size=head_size, sm_count=132)
    return unified_attention.plan(num_tokens=4, num_seqs=4, max_seqlen_q=1, max_seqlen_k=4096, group=group,
                                  kv_heads=ATTN_KV_HEADS, head_size=head_size, sm_count=132, splits=4)


def compile_attention(arch, dtypes="bf16", head_size=128, launch="prefill", options_on=False):
    """unified_attention_kernel as attend() launches it: absent optional tensors are cu_seqlens_q
    (*i32) and so is the workspace of a 2-D launch; descales one float32 per tensor."""
    q_type, kv_type, out_type = ATTN_DTYPES[dtypes]
    p = attention_plan(launch, head_size)
    assert p.splits == (1 if launch == "prefill" else 4), p
    fn = unified_attention.unified_attention_kernel
    pointers = {"q_ptr": q_type, "k_ptr": kv_type, "v_ptr": kv_type, "out_ptr": out_type, "cu_seqlens_q": "*i32",
                "seqused_k": "*i32", "block_table": "*i32",
                "alibi_ptr": "*fp32" if options_on else "*i32", "sinks_ptr": "*fp32" if options_on else "*i32",
                "q_descale": "*fp32" if q_type == "*fp8e4nv" else "*i32",
                "k_descale": "*fp32" if kv_type == "*fp8e4nv" else "*i32",
                "v_descale": "*fp32" if kv_type == "*fp8e4nv" else "*i32"}
    pointers["partials"] = "*fp32" if p.splits > 1 else "*i32"  # the split-KV workspace, or cu_seqlens_q
    scalars = {"softmax_scale": "fp32", "softcap": "fp32"}
    constexprs = dict(NUM_HEADS=ATTN_HEADS, GROUP=ATTN_HEADS // ATTN_KV_HEADS, HEADS=p.heads,
                      CHUNKS=-(-(ATTN_HEADS // ATTN_KV_HEADS) // p.heads), HEAD=head_size,
                      HEAD_PAD=triton.next_power_of_2(head_size), PAGE=ATTN_PAGE, BLOCK_Q=p.block_q,
                      BLOCK_M=p.config.block_m, BLOCK_N=p.config.block_n, SPLITS=p.splits, SOFTCAP=options_on,
                      ALIBI=options_on, SINKS=options_on, HAS_LEFT=options_on, HAS_RIGHT=True,
                      Q_DESCALE=q_type == "*fp8e4nv", K_DESCALE=kv_type == "*fp8e4nv",
                      V_DESCALE=kv_type == "*fp8e4nv", FP8_KV=kv_type == "*fp8e4nv", DOT_F32=False)
    signature = {}
    for name in fn.arg_names:  # every other argument is an int: a length, a window bound or a stride
        signature[name] = pointers.get(name) or scalars.get(name) or ("constexpr" if name in constexprs else "i32")
    # tensors are 16-byte aligned, and every q/cache/out stride is a multiple of 16 elements (head 80 too)
    divisible = [name for name in fn.arg_names if signature[name].startswith("*")
                 or name.startswith(("stride_q_", "stride_k_", "stride_v_", "stride_o_"))]
    return compile_kernel(fn, signature, constexprs, arch, divisible, num_warps=p.config.num_warps,
                          num_stages=p.config.num_stages, enable_fp_fusion=True)


def compile_reduce_splits(arch, head_size=128, sinks=False, v_descale=False, out_type="*bf16"):
    fn = unified_attention.reduce_splits_kernel
    signature = {"out_ptr": out_type, "partials": "*fp32", "parts": "i32", "cu_seqlens_q": "*i32",
                 "seqused_k": "*i32", "sinks_ptr": "*fp32" if sinks else "*i32",
                 "v_descale": "*fp32" if v_descale else "*i32", "num_tokens": "i32",
                 "max_seqlen_q": "i32", "max_seqlen_k": "i32", "stride_o_token": "i32", "stride_o_head": "i32",
                 "stride_vd_seq": "i32", "stride_vd_head": "i32", "NUM_HEADS": "constexpr", "GROUP": "constexpr",
                 "HEAD": "constexpr", "HEAD_PAD": "constexpr", "SPLITS": "constexpr", "BLOCK_Q": "constexpr",
                 "SINKS": "constexpr", "V_DESCALE": "constexpr"}
    constexprs = dict(NUM_HEADS=ATTN_HEADS, GROUP=ATTN_HEADS // ATTN_KV_HEADS, HEAD=head_size,
                      HEAD_PAD=triton.next_power_of_2(head_size), SPLITS=4, BLOCK_Q=4, SINKS=sinks,
                      V_DESCALE=v_descale)
    return compile_kernel(fn, signature, constexprs, arch,
                          divisible=("out_ptr", "partials", "parts", "cu_seqlens_q", "stride_o_token", "stride_o_head"),
                          enable_fp_fusion=True)


def dot_instructions(compiled, arch) -> list[str]:
    """The tensor-core instructions of a compiled kernel (mma.sync, wgmma, tcgen05.mma; v_mfma)."""
    if isinstance(arch, int):
        return sorted(op for op in ptx_ops(compiled) if re.match(r"(wgmma\.mma_async|mma\.sync|tcgen05\.mma)\b", op))
    return sorted(set(re.findall(r"\bv_mfma_\w+", compiled.asm["amdgcn"])))


def assert_assembled(compiled, arch):
    if isinstance(arch, int):
        assert compiled.asm["cubin"], "ptxas produced no cubin"
        assert f".target sm_{arch}" in compiled.asm["ptx"]
    else:
        assert compiled.asm["hsaco"], "no code object"
        assert compiled.metadata.warp_size == 64


def assert_tensor_core_dot(compiled, arch, dtypes):
    """Both tl.dots run on the tensor cores with 16-bit operands (not float32, not FP8). tcgen05.mma
    names its operand types in a runtime descriptor, so only its presence is checked."""
    cuda_type, amd_type = DOT_TYPES[dtypes]
    found = dot_instructions(compiled, arch)
    assert found, f"no tensor-core instruction for {arch}"
    if isinstance(arch, int):
        typed = [op for op in found if not op.startswith("tcgen05")]
        assert all(f".{cuda_type}.{cuda_type}" in op for op in typed), found
    else:
        assert all(op.endswith(f"_{amd_type}") for op in found), found


@pytest.mark.parametrize("arch", ATTN_ARCHS, ids=ARCH_IDS)
@pytest.mark.parametrize(("dtypes", "head_size", "launch", "options_on"), ATTN_VARIANTS,
                         ids=[f"{d}-h{h}-{launch}{'-options' if on else ''}" for d, h, launch, on in ATTN_VARIANTS])
def test_attention_kernel_compiles_to_a_tensor_core_dot(arch, dtypes, head_size, launch, options_on):
    compiled = compile_attention(arch, dtypes, head_size, launch, options_on)
    assert_assembled(compiled, arch)
    assert_tensor_core_dot(compiled, arch, dtypes)
    if isinstance(arch, int):
        ptx_text = compiled.asm["ptx"]
        if "fp8" in dtypes:  # E4M3 converts in hardware, pairs at a time
            assert E4M3_TO_F16_CVT in ptx_text, sorted(op for op in ptx_ops(compiled) if op.startswith("cvt"))
        else:
            assert "e4m3" not in ptx_text


@pytest.mark.parametrize("dtypes", ["bf16", "fp8"])
def test_attention_compiles_for_gfx950(dtypes):
    compiled = compile_attention("gfx950", dtypes, 80, "prefill", True)
    assert_assembled(compiled, "gfx950")
    assert_tensor_core_dot(compiled, "gfx950", dtypes)


def test_attention_hopper_prefill_uses_wgmma_and_blackwell_tcgen05():
    # the prefill tile (BLOCK_M 128) is large enough for the warpgroup / tensor-memory MMAs
    assert any(op.startswith("wgmma.mma_async") for op in dot_instructions(compile_attention(90), 90))
    assert any(op.startswith("tcgen05.mma") for op in dot_instructions(compile_attention(100), 100))


@pytest.mark.parametrize("arch", [90, "gfx950"], ids=ARCH_IDS)
def test_attention_float16_query_with_fp8_cache_compiles(arch):
    compiled = compile_attention(arch, "fp16-fp8kv", 128, "decode", True)
    assert_assembled(compiled, arch)
    assert_tensor_core_dot(compiled, arch, "fp16-fp8kv")


@pytest.mark.parametrize("arch", [*MATRIX_CUDA, *MATRIX_HIP], ids=ARCH_IDS)
@pytest.mark.parametrize(("head_size", "sinks", "v_descale"), [(128, False, False), (80, True, True)])
def test_attention_reduce_splits_kernel_compiles(arch, head_size, sinks, v_descale):
    assert_assembled(compile_reduce_splits(arch, head_size, sinks, v_descale), arch)


# The shared memory one program may take on each CUDA arch the cuda backend launches attention on, bytes:
# the CUDA C++ Programming Guide's maximum shared memory per thread block (163 KB on 8.0, 99 KB on 8.6,
# 8.9 and 12.x, 227 KB on 9.0 and 10.x). Past it the first launch fails with Triton's OutOfResources.
# The AMD targets are compiled above but launched by no backend (gfx942's 64 KB LDS would not take the
# head-128 prefill tile).
SHARED_MEMORY = {80: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024, 120: 99 * 1024}


@pytest.mark.parametrize("arch", [*SHARED_MEMORY], ids=ARCH_IDS)
@pytest.mark.parametrize("launch", ["prefill", "decode"])
@pytest.mark.parametrize("head_size", sorted(unified_attention.PREFILL))
def test_attention_launch_table_fits_each_arch_shared_memory(arch, launch, head_size):
    """One table for every arch, tuned on the H100: its tiles must fit the smaller parts too. A
    bfloat16 cache, whose 16-bit K/V tiles take the most shared memory."""
    compiled = compile_attention(arch, "bf16", head_size, launch, options_on=True)
    config = attention_plan(launch, head_size).config
    assert compiled.metadata.shared <= SHARED_MEMORY[arch], (
        f"{config} takes {compiled.metadata.shared} bytes, sm_{arch} has {SHARED_MEMORY[arch]}")


def attention_records():
    return [kernel.capability for kernel in CUDA_BACKEND.kernels_for("unified_attention")]


def claims_fp8(record, arch) -> bool:
    """The record accepts a float8_e4m3fn query or cache on sm_`arch`."""
    e4m3 = torch.float8_e4m3fn
    return arch in record.archs["cuda"] and (e4m3 in record.dtypes
                                             or any(e4m3 in kv for kv in (record.kv_dtypes or {}).values()))


def test_attention_compiles_for_the_oldest_arch_a_cuda_record_claims():
    oldest = min(arch for arch in CUDA if any(arch in record.archs["cuda"] for record in attention_records()))
    compiled = compile_attention(oldest, "bf16", 128, "prefill")
    assert_assembled(compiled, oldest)
    assert_tensor_core_dot(compiled, oldest, "bf16")


def test_attention_fp8_compiles_on_the_oldest_arch_a_cuda_record_claims_it_for():
    oldest = min(arch for arch in CUDA if any(claims_fp8(record, arch) for record in attention_records()))
    for dtypes in ("fp8kv", "fp8"):
        compiled = compile_attention(oldest, dtypes, 128, "decode")
        assert_assembled(compiled, oldest)
        assert_tensor_core_dot(compiled, oldest, dtypes)
        assert E4M3_TO_F16_CVT in compiled.asm["ptx"]


def test_attention_fp8_fails_to_compile_before_sm89_and_no_cuda_record_claims_it_there(capfd):
    # Triton has no float8_e4m3fn (fp8e4nv) type before sm_89
    with pytest.raises(CompilationError, match="fp8e4nv not supported"):
        compile_attention(80, "fp8kv", 128, "decode")
    capfd.readouterr()  # Triton prints the kernel source on a compilation error: drop it
    for record in attention_records():
        assert not any(claims_fp8(record, arch) for arch in CUDA if arch < 89), record
    assert any(claims_fp8(record, 89) for record in attention_records())
