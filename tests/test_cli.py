"""`python -m lowbit info` and `python -m lowbit demo`."""

import io
import subprocess
import sys

from lowbit import cli


def test_info_shows_every_op_with_its_backends_and_the_choice_here():
    out = io.StringIO()
    cli.info(out)
    text = out.getvalue()
    for op in ("quantize_mxfp4", "dequantize_mxfp4", "quantize_fp8_group_packed", "dequantize_fp8_group_packed"):
        assert f"\n{op}: " in text
    assert "\nunified_attention: " in text and "no backend implements it yet" not in text
    attention = text[text.index("\nunified_attention: "):]
    assert "\n  cpu " in attention and "\n  on cpu: cpu" in attention
    header = next(line for line in text.splitlines() if line.strip().startswith("backend  here"))
    for column in ("devices", "arch", "dtypes", "sizes", "rules", "fidelity", "graph-safe", "compile-safe"):
        assert column in header
    assert "block 32" in text and "rceil/floor" in text and "any divisor of the last dim" in text
    assert text.count("  on cpu: cpu") == 5


def test_demo_runs_and_checks_bits_against_the_reference():
    result = subprocess.run([sys.executable, "-m", "lowbit", "demo"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("bits identical to the CPU reference: yes") == 2
    assert "relative RMS error" in result.stdout


def test_info_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "lowbit", "info"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "quantize_mxfp4" in result.stdout
