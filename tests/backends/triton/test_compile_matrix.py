"""Every Triton kernel variant compiled ahead of time for the GPU targets lowbit claims, on a machine
without a GPU (the triton wheel's ptxas and AMD backend do the work): the portable kernels for
sm_90/sm_100/sm_120 and gfx942/gfx950, the PTX specialisations for the sm_100 families, and the
capability records checked against what the assembler accepts. Arguments are specialised as a real
launch on contiguous, 16-byte-aligned tensors specialises them: the last-dim stride is the constexpr
1 and pointers, K and row strides carry tt.divisibility=16, so the loads can vectorize."""

import os

import pytest

triton = pytest.importorskip("triton")

from lowbit.backends.cuda import BACKEND as CUDA_BACKEND  # noqa: E402
from lowbit.backends.cuda import mxfp4 as cuda_mxfp4  # noqa: E402
from lowbit.backends.cuda import ptx  # noqa: E402
from lowbit.backends.triton import fp8_group_packed, mxfp4  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

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


def compile_mxfp4(arch, *, dtype="*bf16", floor=False, hooks="portable", index="i32"):
    encode, rceil = {"portable": (mxfp4.encode_portable, mxfp4.rceil_exponent_portable),
                     "ptx": (ptx.encode_ptx, ptx.rceil_exponent_ptx)}[hooks]
    signature = {"x_ptr": dtype, "q_ptr": "*u8", "s_ptr": "*u8", "rows": "i32", "k": "i32", "stride_xm": index,
                 "stride_xk": "constexpr", "FLOOR": "constexpr", "ENCODE": "constexpr",
                 "RCEIL_EXPONENT": "constexpr", "BLOCK_M": "constexpr", "BLOCK_K": "constexpr"}
    constexprs = {"stride_xk": 1, "FLOOR": floor, "ENCODE": encode, "RCEIL_EXPONENT": rceil,
                  "BLOCK_M": BLOCK_M, "BLOCK_K": BLOCK_K}
    return compile_kernel(mxfp4.quantize_mxfp4_kernel, signature, constexprs, arch,
                          divisible=("x_ptr", "q_ptr", "s_ptr", "k", "stride_xm"))


def compile_fp8(arch, *, hardware_e4m3, dtype="*bf16", index="i32"):
    signature = {"x_ptr": dtype, "q_ptr": "*u8", "s_ptr": "*i32", "mn": "i32", "k": "i32", "groups": "i32",
                 "q_rows": "i32", "s_rows": "i32", "tiles_per_batch": "i32", "stride_xb": index, "stride_xm": "i32",
                 "stride_xk": "constexpr", "stride_qb": index, "stride_sb": index, "stride_sw": "i32", "eps": "fp32",
                 "HARDWARE_E4M3": "constexpr", "GROUP": "constexpr", "BLOCK_M": "constexpr"}
    constexprs = {"stride_xk": 1, "HARDWARE_E4M3": hardware_e4m3, "GROUP": GROUP, "BLOCK_M": BLOCK_M}
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
    (kernel,) = CUDA_BACKEND.kernels_for("quantize_fp8_group_packed")
    archs = kernel.capability.archs["cuda"]
    assert 89 in archs and 90 in archs and 100 in archs and 120 in archs and 80 not in archs
