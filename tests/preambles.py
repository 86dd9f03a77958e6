"""Where a test runs: the pytest marks (and the device facts behind them) that test modules put in
their `pytestmark` or on single tests, one definition each. Imported by name, as tests/oracles.py
is (`from preambles import on_cuda`); nothing here imports lowbit.

* on_cuda / ARCH: an NVIDIA GPU (CI row cuda), optionally of a least compute capability.
* on_xpu: an Intel GPU (CI row xpu).
* interpreted: Triton kernels run by the interpreter on CPU tensors (CI row triton-interpret).
* FAKE_DEVICE / ACCELERATORS / DEVICES: fake cuda and xpu tensors (FakeTensorMode) on any machine.
"""

import os

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

# --- NVIDIA GPUs (CI row cuda) -------------------------------------------------------------------

ARCH = (lambda c: c[0] * 10 + c[1])(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None
"""The compute capability of the current NVIDIA GPU as one number (sm_90: 90); None without one."""


def on_cuda(min_arch: int | None = None, reason: str = "") -> list:
    """The marks of a module that needs an NVIDIA GPU (marker cuda), of sm_`min_arch`+ when given
    (`reason`: why, the skip reason on an older GPU)."""
    marks = [
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CI row cuda)"),
    ]
    if min_arch is not None:
        marks.append(pytest.mark.skipif(ARCH is not None and ARCH < min_arch, reason=reason))
    return marks


# --- Intel GPUs (CI row xpu) ---------------------------------------------------------------------

def on_xpu() -> list:
    """The marks of a module that needs an Intel GPU (marker xpu)."""
    has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    return [
        pytest.mark.xpu,
        pytest.mark.skipif(not has_xpu, reason="needs an Intel GPU (torch XPU build); CI row xpu on a self-hosted "
                                               "Intel runner"),
    ]


# --- the Triton interpreter (CI row triton-interpret) --------------------------------------------

INTERPRETER_WARNINGS = "ignore::RuntimeWarning:triton.runtime.interpreter"


def interpreted(warnings: str = INTERPRETER_WARNINGS) -> list:
    """The marks of a module that runs Triton kernels under TRITON_INTERPRET=1 on CPU tensors
    (marker interpret). The interpreter computes with numpy, which warns on signalling NaNs,
    overflows, -inf - -inf and NaN in masked-off lanes: all meant, so `warnings` (a filterwarnings
    filter: by default the interpreter's RuntimeWarnings) are ignored."""
    return [
        pytest.mark.interpret,
        pytest.mark.filterwarnings(warnings),
        pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                           reason="needs TRITON_INTERPRET=1 (CI row triton-interpret): without the interpreter the "
                                  "Triton kernels need a GPU"),
    ]


# --- fake cuda and xpu tensors ---------------------------------------------------------------------

def fake_tensors_unavailable(device: str) -> str:
    """Why this torch cannot make fake `device` tensors here ('' if it can). A CPU-only torch makes
    fake cuda and xpu tensors; a CUDA build with a GPU present tries to initialise XPU."""
    try:
        with FakeTensorMode():
            torch.empty(1, device=device)
    except (AssertionError, RuntimeError) as error:
        return f"this torch cannot make fake {device} tensors here: {error}"
    return ""


FAKE_DEVICE = {d: pytest.mark.skipif(bool(fake_tensors_unavailable(d)), reason=fake_tensors_unavailable(d) or "-")
               for d in ("cuda", "xpu")}
ACCELERATORS = tuple(pytest.param(d, marks=mark) for d, mark in FAKE_DEVICE.items())
DEVICES = ("cpu", *ACCELERATORS)
