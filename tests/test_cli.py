"""`python -m lowbit info`, `python -m lowbit demo` and `python -m lowbit bench`'s parser."""

import functools
import importlib.util
import io
import re
import subprocess
import sys

import pytest

from lowbit import OPS, cli, registry

VENDOR_MXFP4_OPS = ("quantize_mxfp4", "per_token_group_quant_mxfp4")


def info_text() -> str:
    out = io.StringIO()
    cli.info(out)
    return out.getvalue()


def info_rows(text: str, op: str) -> dict[str, dict[str, str]]:
    """The table of `op` in `info`'s text: per backend label, its cells by column name."""
    section = text[text.index(f"\n{op}: ") + 1:].split("\n\n")[0].splitlines()  # title, header, rows
    header = re.split(r"\s{2,}", section[1].strip())
    rows = [re.split(r"\s{2,}", line.strip()) for line in section[2:] if not line.startswith("  on ")]
    return {cells[0]: dict(zip(header, cells, strict=True)) for cells in rows}


def test_info_shows_every_op_with_its_backends_and_the_choice_here():
    out = io.StringIO()
    cli.info(out)
    text = out.getvalue()
    for op in ("quantize_mxfp4", "dequantize_mxfp4", "quantize_mxfp8", "dequantize_mxfp8", "quantize_fp8_group_packed",
               "dequantize_fp8_group_packed",
               "quantize_fp8_group", "dequantize_fp8_group", "quantize_fp8_block", "dequantize_fp8_block"):
        assert f"\n{op}: " in text
    assert "\nunified_attention: " in text and "no installed backend implements it" not in text
    attention = text[text.index("\nunified_attention: "):]
    assert "\n  cpu " in attention and "\n  on cpu: cpu" in attention
    header = next(line for line in text.splitlines() if line.split()[:2] == ["backend", "here"])
    for column in ("devices", "arch", "dtypes", "sizes", "rules", "fidelity", "graph-safe", "compile-safe"):
        assert column in header
    assert "block 32" in text and "rceil/floor" in text and "any divisor of the last dim" in text
    assert "group 64/128" in text and "block 128x128" in text
    assert text.count("  on cpu: cpu") == len(OPS) == 15


def test_info_has_an_auto_column_that_names_the_opt_in():
    text = info_text()
    header = next(line for line in text.splitlines() if line.split()[:2] == ["backend", "here"])
    assert re.split(r"\s{2,}", header.strip())[:3] == ["backend", "here", "auto"]
    for op in VENDOR_MXFP4_OPS:
        rows = info_rows(text, op)
        assert list(rows) == ["cuda/ptx", "cuda/bf16x2", "cuda/triton", "xpu/vendor", "xpu/triton", "cpu"]
        assert rows["xpu/vendor"]["auto"] == "only with LOWBIT_XPU_PROVIDER=vendor"
        assert rows["xpu/vendor"]["strides"] == "contiguous"
        assert {label: row["auto"] for label, row in rows.items() if label != "xpu/vendor"} == dict.fromkeys(
            ["cuda/ptx", "cuda/bf16x2", "cuda/triton", "xpu/triton", "cpu"], "yes")
    for op in OPS:  # every other op's rows are always used by auto-dispatch
        if op not in VENDOR_MXFP4_OPS:
            assert {row["auto"] for row in info_rows(text, op).values()} == {"yes"}, op


def test_info_does_not_probe_an_opt_in_variant_that_is_not_opted_into(monkeypatch):
    """Without LOWBIT_XPU_PROVIDER=vendor, info neither imports the vendor library nor says it is
    missing: the row says "not probed (opt-in)". Fails if info asks the vendor kernel's hook."""
    asked = []
    real = registry.kernel_unavailable

    @functools.cache
    def spy(kernel):
        asked.append(kernel.capability.label)
        return real(kernel)

    monkeypatch.setattr(registry, "kernel_unavailable", spy)
    text = info_text()
    for op in VENDOR_MXFP4_OPS:
        assert info_rows(text, op)["xpu/vendor"]["here"] == "not probed (opt-in)"
        assert info_rows(text, op)["xpu/triton"]["here"] == "no: no xpu device here"
    assert asked and "xpu/vendor" not in asked


@pytest.mark.skipif(importlib.util.find_spec("vllm_xpu_kernels") is not None,
                    reason="vllm_xpu_kernels is installed here: the vendor row would not say it is missing")
def test_info_with_the_vendor_opt_in_shows_why_the_vendor_op_cannot_load(monkeypatch):
    monkeypatch.setenv("LOWBIT_XPU_PROVIDER", "vendor")
    text = info_text()
    for op in VENDOR_MXFP4_OPS:
        rows = info_rows(text, op)
        assert rows["xpu/vendor"]["here"] == "no: vllm-xpu-kernels is not installed (pip install vllm-xpu-kernels)"
        assert rows["xpu/triton"]["here"] == "no: no xpu device here"  # the backend itself loads
    assert text.count("  on cpu: cpu") == len(OPS)  # the opt-in changes nothing on cpu


def test_info_refuses_an_undeclared_provider_value(monkeypatch):
    monkeypatch.setenv("LOWBIT_XPU_PROVIDER", "sycl")
    with pytest.raises(ValueError, match="LOWBIT_XPU_PROVIDER='sycl' is not one of 'triton', 'vendor'"):
        info_text()


def test_demo_runs_and_checks_bits_against_the_reference():
    result = subprocess.run([sys.executable, "-m", "lowbit", "demo"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("bits identical to the CPU reference: yes") == 6
    assert "relative RMS error" in result.stdout


def test_info_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "lowbit", "info"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "quantize_mxfp4" in result.stdout


@pytest.mark.parametrize("suite", sorted(cli.BENCHMARKS))
def test_bench_help_reaches_the_suites_own_options_without_a_gpu(suite, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", suite, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m lowbit bench {suite} [-h]")


def test_info_refuses_an_unknown_option():
    with pytest.raises(SystemExit) as exit_:
        cli.main(["info", "--rows", "8"])
    assert exit_.value.code == 2


def test_info_choice_names_a_kernel_for_some_dtypes_with_them_and_goes_on():
    """The "on cuda:" answer for an arch: sm_90 takes bfloat16 on its bf16x2 variant, the rest portably."""
    assert cli._choice("quantize_mxfp4", "cuda", 90) == "cuda/bf16x2 for bfloat16, else cuda/triton"
    assert cli._choice("per_token_group_quant_mxfp4", "cuda", 90) == "cuda/bf16x2 for bfloat16, else cuda/triton"
    assert cli._choice("quantize_mxfp4", "cuda", 100) == "cuda/ptx"
    assert cli._choice("quantize_mxfp4", "cuda", 80) == "cuda/triton"
    assert cli._choice("quantize_fp8_group_packed", "cuda", 90) == "cuda/triton"
