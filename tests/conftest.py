import pytest
import torch

from lowbit import dispatch, registry


@pytest.fixture(autouse=True)
def _fresh_dispatch(monkeypatch):
    """Each test starts with no run-time backends, no env overrides (LOWBIT_BACKEND, LOWBIT_STRICT,
    the variant settings such as LOWBIT_XPU_PROVIDER) and no cached decisions or availability."""
    monkeypatch.delenv(dispatch.ENV_BACKEND, raising=False)
    monkeypatch.delenv(dispatch.ENV_STRICT, raising=False)
    for name in registry.settings():
        monkeypatch.delenv(name, raising=False)
    registry.forget()
    yield
    for name in list(registry._registered):
        registry.unregister(name)
    registry.forget()


def spicy_tensor(shape, dtype, seed, exponent_run):
    """Random values over the whole float32 exponent range (runs of `exponent_run` elements along
    the last dim share a power of two) with NaN, ±Inf, ±0, subnormals and 672 mixed in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    runs = torch.randint(-150, 125, (*shape[:-1], shape[-1] // exponent_run, 1), generator=g)
    x = x * torch.exp2(runs.double()).expand(*runs.shape[:-1], exponent_run).reshape(shape)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 2.0**-140, -(2.0**-149), 672.0,
                             torch.finfo(dtype).max, torch.finfo(dtype).tiny], dtype=torch.float64)
    pick = torch.rand(shape, generator=g) < 0.004
    x[pick] = specials[torch.randint(0, len(specials), (int(pick.sum()),), generator=g)]
    return x.to(dtype)


@pytest.fixture
def strict_dispatch(_fresh_dispatch, monkeypatch):
    """No silent fallback: with LOWBIT_STRICT=1 a call that auto-dispatch does not give to the
    device's backend raises. The on-device suites take it for every test through
    pytest.mark.usefixtures("strict_dispatch") in their pytestmark."""
    monkeypatch.setenv(dispatch.ENV_STRICT, "1")


@pytest.fixture
def fake_arch(monkeypatch):
    """Set the arch dispatch sees for (fake) cuda tensors: fake_arch(90). A CPU-only machine cannot tell it."""
    def set_arch(arch):
        monkeypatch.setattr(dispatch, "device_arch", lambda device: arch if device.type == "cuda" else None)
    return set_arch


@pytest.fixture(name="spicy")
def _spicy():
    return spicy_tensor


@pytest.fixture(name="resolved")
def _resolved(monkeypatch) -> list[str]:
    """The labels ("xpu/triton") of the kernels dispatch.resolve picks during the test, in order
    (real calls and fakes alike)."""
    chosen = []
    real_resolve = dispatch.resolve

    def spy(call, backend=dispatch.AUTO):
        kernel = real_resolve(call, backend)
        chosen.append(kernel.capability.label)
        return kernel

    monkeypatch.setattr(dispatch, "resolve", spy)
    return chosen
