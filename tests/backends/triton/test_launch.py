"""backends/triton/launch.py: `Launch` goes through Triton's JIT entry point once per device and
specialisation and straight to the compiled launcher after that, on its tensors' device whatever the
current one; `bind`'s key is at least as fine as Triton's.

The compiled path is tested here with a stand-in kernel (our code, no GPU): the GPU suite
(tests/backends/cuda/test_fast_path.py) runs the real launcher.
"""

import contextlib
import types

import pytest
import torch

triton = pytest.importorskip("triton")

from lowbit.backends.triton import launch as launch_module  # noqa: E402
from lowbit.backends.triton.launch import Launch, LaunchConfig, bind, fitting, size_class  # noqa: E402


class OnDevice0(torch.Tensor):
    """A CPU tensor that says it lives on device 0, so that Launch takes its compiled path."""

    def get_device(self):
        return 0


def on_device0(t):
    return t.as_subclass(OnDevice0)


class StandInKernel:
    """Triton's JIT function as Launch sees it: params, and kernel[grid](*args, **kw) returning a
    compiled kernel whose `run` is the launcher."""

    def __init__(self, names=("x", "n", "BLOCK"), constexprs=("BLOCK",)):
        self.fn = types.SimpleNamespace(__name__="stand_in")
        self.params = [types.SimpleNamespace(name=n, is_constexpr=n in constexprs) for n in names]
        self.jit_calls, self.launches = [], []

    def __getitem__(self, grid):
        def jit(*args, **kwargs):
            self.jit_calls.append((grid, args, kwargs))
            return types.SimpleNamespace(run=lambda *a: self.launches.append(a), function="fn",
                                         packed_metadata="meta")
        return jit


@pytest.fixture(name="driver")
def _driver(monkeypatch):
    """Device 0 is current; its stream is 77."""
    monkeypatch.setattr(launch_module, "_driver", lambda: (lambda: 0, lambda index: 77))


def test_launch_goes_through_the_jit_entry_point_once_per_specialisation(driver):
    kernel = StandInKernel()
    launch = Launch(kernel, {"BLOCK": 64}, num_warps=4)
    x = on_device0(torch.zeros(64))
    launch((2, 1, 1), x, 32)
    assert len(kernel.jit_calls) == 1 and kernel.jit_calls[0][2] == {"BLOCK": 64, "num_warps": 4}
    assert kernel.launches == []
    launch((3, 1, 1), x, 48)  # also a multiple of 16: the same specialisation
    assert len(kernel.jit_calls) == 1
    assert kernel.launches == [(3, 1, 1, 77, "fn", "meta", None, None, None, x.data_ptr(), 48, 64)]
    launch((3, 1, 1), x, 17)  # not a multiple of 16: Triton specialises differently
    launch((3, 1, 1), x[1:], 32)  # not 16-byte aligned
    launch((3, 1, 1), x.to(torch.float16), 32)  # another pointer type
    launch((3, 1, 1), x, 1)  # 1 is a constant to Triton
    launch((3, 1, 1), x, 2**40)  # i64
    assert len(kernel.jit_calls) == 6 and len(kernel.launches) == 1
    launch((5, 1, 1), x, 2**40 + 16)
    assert len(kernel.jit_calls) == 6 and len(kernel.launches) == 2


def test_launch_takes_the_jit_entry_point_while_a_launch_hook_is_set(driver, monkeypatch):
    kernel = StandInKernel()
    launch = Launch(kernel, {"BLOCK": 64})
    x = on_device0(torch.zeros(64))
    launch((1, 1, 1), x, 32)
    runtime = types.SimpleNamespace(launch_enter_hook=lambda *a: None, launch_exit_hook=None)
    monkeypatch.setattr(launch_module.triton, "knobs", types.SimpleNamespace(runtime=runtime))
    launch((1, 1, 1), x, 32)
    assert len(kernel.jit_calls) == 2 and kernel.launches == []
    runtime.launch_enter_hook = types.SimpleNamespace(calls=[])  # Triton 3.9: an empty chain is no hook
    launch((1, 1, 1), x, 32)
    assert len(kernel.jit_calls) == 2 and len(kernel.launches) == 1


def test_launch_on_cpu_tensors_is_the_interpreters_entry_point_every_time(driver):
    kernel = StandInKernel()
    launch = Launch(kernel, {"BLOCK": 64})
    for _ in range(3):
        launch((1, 1, 1), torch.zeros(64), 32)
    assert len(kernel.jit_calls) == 3 and kernel.launches == []


def test_launch_refuses_a_kernel_whose_constexprs_are_not_last(driver):
    kernel = StandInKernel(names=("x", "BLOCK", "n"))
    with pytest.raises(TypeError, match="stand_in: Launch needs the runtime arguments first"):
        Launch(kernel, {"BLOCK": 64})((1, 1, 1), on_device0(torch.zeros(64)), 32)


def test_binds_key_is_at_least_as_fine_as_tritons_specialisation():
    """Arguments our key calls alike, Triton's own specialiser (3.7+) calls alike too."""
    libtriton = pytest.importorskip("triton._C.libtriton")
    native = getattr(libtriton, "native_specialize_impl", None)
    if native is None:
        pytest.skip("this Triton specialises in Python (before 3.7): nothing native to compare with")
    from triton.backends.compiler import BaseBackend

    base = torch.zeros(64, dtype=torch.uint8)
    ints = [0, 1, 2, 15, 16, 17, 32, -1, -16, -17, 2**31 - 16, 2**31 - 1, 2**31, 2**31 + 16, -(2**31), -(2**31) - 1,
            2**40, 2**40 + 1, 2**63 - 16, 2**63 - 1, 2**63, 2**63 + 16, 2**64 - 1, -(2**63)]
    tensors = [base[i:].view(torch.uint8) for i in range(16)] + [base[i:i + 32].view(torch.int32) for i in (0, 4, 16)]
    values = ints + tensors + [0.5, 3.0, True, False]
    groups = {}
    for v in values:
        groups.setdefault(bind([v])[0], []).append(native(BaseBackend, v, False, True, True))
    for key, theirs in groups.items():
        assert len(set(theirs)) == 1, (key, theirs)


def test_fitting_keeps_the_entries_for_k_in_order_up_to_the_first_without_a_row_limit():
    small, large = LaunchConfig(1, 256, 4), LaunchConfig(4, 1024, 8)
    table = ((128, 1024, small), (128, None, large), (None, 2048, small), (None, None, large))
    assert fitting(table, 1024) == ((128, small), (128, large), (None, small))
    assert fitting(table, 4096) == ((128, large), (None, large))
    assert size_class(fitting(table, 1024), 129) == (None, small)
    assert size_class(fitting(table, 1024), 128) == (128, small)
    with pytest.raises(LookupError):
        fitting(((128, None, small),), 64)


@pytest.mark.interpret
@pytest.mark.parametrize("op", ["mxfp4", "mxfp8", "fp8_group_packed"])
def test_a_later_launcher_call_of_a_kind_resolves_no_launch_table(op, monkeypatch):
    """The launch table is resolved once per kind of call (`launches`), never per row count."""
    import importlib

    module = importlib.import_module(f"lowbit.backends.triton.{op}")
    resolved = []
    real = module.fitting
    monkeypatch.setattr(module, "fitting", lambda *args: resolved.append(args) or real(*args))
    module.launches.cache_clear()
    for rows in (3, 200, 1500, 5):
        x = torch.randn(rows, 512)
        if op == "mxfp4":
            module.quantize(x, torch.empty(rows, 256, dtype=torch.uint8), torch.empty(rows, 16, dtype=torch.uint8),
                            scale_rule="rceil")
        elif op == "mxfp8":
            module.quantize(x, torch.empty(rows, 512, dtype=torch.float8_e4m3fn),
                            torch.empty(rows, 16, dtype=torch.uint8), scale_rule="floor", swizzled=False,
                            hardware_e4m3=False)
        else:
            module.quantize(x, torch.empty(rows, 512, dtype=torch.float8_e4m3fn),
                            torch.empty(rows, 1, dtype=torch.int32), group_size=128, eps=1e-10, hardware_e4m3=False)
    assert len(resolved) == 1


def test_tensors_triton_has_no_pointer_type_for_reach_the_jit_entry_point_as_bytes(driver):
    kernel = StandInKernel()
    launch = Launch(kernel, {"BLOCK": 64})
    q = on_device0(torch.zeros(64, dtype=torch.uint8).view(torch.float4_e2m1fn_x2))
    launch((1, 1, 1), q, 32)
    launch((1, 1, 1), q, 32)
    (_, jit_args, _), = kernel.jit_calls
    assert jit_args[0].dtype == torch.uint8 and jit_args[0].data_ptr() == q.data_ptr()
    assert kernel.launches[0][9] == q.data_ptr()  # the compiled launcher takes the address



class OnCuda(torch.Tensor):
    """A CPU tensor that says it lives on cuda:`index`, for Launch's device guard."""

    index = 0

    @property
    def device(self):
        return torch.device("cuda", self.index)

    def get_device(self):
        return self.index


def on_cuda(index):
    t = torch.zeros(64).as_subclass(OnCuda)
    t.index = index
    return t


class DeviceGuards:
    """torch.cuda as Launch uses it, with two devices: current_device() and the `device` guard."""

    def __init__(self):
        self.current = 0

    def current_device(self):
        return self.current

    @contextlib.contextmanager
    def device(self, device):
        before, self.current = self.current, device if isinstance(device, int) else device.index
        try:
            yield
        finally:
            self.current = before


class RecordingKernel(StandInKernel):
    """Records the device current when the JIT entry point compiles and when the launcher runs
    (with the stream and the compiled function it was given)."""

    def __init__(self, cuda):
        super().__init__()
        self.cuda, self.seen = cuda, []

    def __getitem__(self, grid):
        def jit(*args, **kwargs):
            self.seen.append(("jit", self.cuda.current))
            return types.SimpleNamespace(run=lambda *a: self.seen.append(("run", self.cuda.current, a[3], a[4])),
                                         function=f"compiled on {self.cuda.current}", packed_metadata="meta")
        return jit


def test_launch_runs_on_its_tensors_device_whatever_the_current_one(monkeypatch):
    """With cuda:0 current, a launch on cuda:1 tensors compiles and runs with cuda:1 current, on
    cuda:1's stream, with the kernel compiled for cuda:1 (not cuda:0's), and leaves cuda:0 current."""
    cuda = DeviceGuards()
    monkeypatch.setattr(torch, "get_device_module", lambda device_type: cuda)
    monkeypatch.setattr(launch_module, "_driver", lambda: (cuda.current_device, lambda index: f"stream {index}"))
    kernel = RecordingKernel(cuda)
    launch = Launch(kernel, {"BLOCK": 64})
    for index in (0, 0, 1, 1):
        launch((1, 1, 1), on_cuda(index), 32)
    assert kernel.seen == [("jit", 0), ("run", 0, "stream 0", "compiled on 0"),
                           ("jit", 1), ("run", 1, "stream 1", "compiled on 1")]
    assert cuda.current == 0


@pytest.mark.parametrize("dtype", [torch.float4_e2m1fn_x2, torch.float8_e8m0fnu, torch.uint8])
def test_byte_rows_passes_a_2d_tensor_with_a_unit_last_stride_as_it_is_and_copies_others_as_bytes(dtype):
    g = torch.Generator().manual_seed(3)
    wide = torch.randint(0, 256, (2, 3, 10), dtype=torch.uint8, generator=g)
    flat = wide[0].view(dtype)
    assert launch_module.byte_rows(flat, 3) is flat  # the common path: no view, no copy
    for t in (wide.view(dtype), wide[..., 2:8].view(dtype), wide[..., ::2].view(dtype), wide.transpose(0, 1).view(dtype)):
        rows = t.numel() // t.shape[-1]
        got = launch_module.byte_rows(t, rows)
        assert got.dtype == torch.uint8 and got.shape == (rows, t.shape[-1]) and got.stride(1) == 1
        assert torch.equal(got, t.view(torch.uint8).reshape(rows, t.shape[-1]))


def test_flat_bytes_keeps_a_contiguous_tensor_and_copies_others_as_bytes():
    tiles = torch.arange(512, dtype=torch.int64).to(torch.uint8).view(torch.float8_e8m0fnu).reshape(128, 4)
    assert launch_module.flat_bytes(tiles) is tiles
    column_major = tiles.t().contiguous().t()
    got = launch_module.flat_bytes(column_major)
    assert got.dtype == torch.uint8 and got.is_contiguous() and torch.equal(got, tiles.view(torch.uint8))
