"""Host inputs (NumPy arrays, CPU torch tensors) with ``backend="cuda"``.

Without a GPU: the placement logic, the copies (with injected transfer functions), the
registry's wrapping and ``device_id`` handling, and the front ends end to end on a fake
GPU (kernels run by the emulator, see ``fake_gpu``); the error when no GPU is present.
On a GPU (``needs_gpu``): the same against the CPU backend.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from test_cuda_codegen import GPU_MISSING, NVRTC_MISSING, needs_cxx, needs_gpu, needs_nvrtc, reduction_spec

import polykeops.backends as registry
from polykeops.backends.cuda import CudaBackend, host_inputs
from polykeops.backends.cuda.host_inputs import HostInputs, Placement, placement
from polykeops.errors import BackendError, DeviceError

# ---------------------------------------------------------------------------
# placement
# ---------------------------------------------------------------------------


class _OnDevice(torch.Tensor):
    """A stand-in for a CUDA tensor (no GPU here): an empty CPU tensor that reports a CUDA device
    (only its ``device`` is read)."""

    def __new__(cls, index):
        t = torch.Tensor._make_subclass(cls, torch.zeros(0))
        t.cuda_index = index
        return t

    @property
    def device(self):
        return torch.device("cuda", self.cuda_index)


def test_placement_of_host_and_device_inputs():
    x, t = np.zeros((3, 2)), torch.zeros(3, 2)
    assert placement([x, x], "numpy", None) == Placement("numpy", None)
    assert placement([x], "numpy", 1) == Placement("numpy", 1)
    assert placement([t, t], "torch", None) == Placement("cpu", None)
    assert placement([t], "torch", 2).copies
    assert placement([], "numpy", None) == Placement("numpy", None)  # a constant formula
    assert placement([], "torch", 0) == Placement("cpu", 0)
    on_gpu = placement([_OnDevice(1), _OnDevice(1)], "torch", None)
    assert on_gpu == Placement("cuda", 1) and not on_gpu.copies
    assert placement([_OnDevice(1)], "torch", 1) == Placement("cuda", 1)


def test_placement_errors_name_the_devices():
    with pytest.raises(DeviceError, match=r"several devices \(cpu, cuda:0\)"):
        placement([torch.zeros(2), _OnDevice(0)], "torch", None)
    with pytest.raises(DeviceError, match=r"device_id=1 but the tensors are on cuda:0"):
        placement([_OnDevice(0)], "torch", 1)
    with pytest.raises(DeviceError, match="argument 0 is on meta"):
        placement([torch.zeros(2, device="meta")], "torch", None)


# ---------------------------------------------------------------------------
# HostInputs with injected transfers and a recording backend
# ---------------------------------------------------------------------------


class _Device(torch.Tensor):
    """A CPU tensor standing for device memory."""


class FakeTransfers:
    def __init__(self):
        self.log = []

    def device(self, device_id):
        self.log.append(("device", device_id))
        return f"gpu{0 if device_id is None else device_id}"

    def current(self, device):
        self.log.append(("current", device))
        return contextlib.nullcontext()

    def to_device(self, a, device):
        self.log.append(("to_device", type(a).__name__, device))
        t = torch.from_numpy(a) if isinstance(a, np.ndarray) else a
        return t.clone().as_subclass(_Device)

    def to_origin(self, t, origin):
        self.log.append(("to_origin", origin))
        assert isinstance(t, _Device)
        t = t.as_subclass(torch.Tensor)
        return t.numpy() if origin == "numpy" else t


class RecordingBackend:
    name = "recording"
    priority = 0
    capabilities = CudaBackend.capabilities

    def __init__(self):
        self.calls = []

    def availability(self):
        return True, "ok"

    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        self.calls.append((tuple(type(a) for a in args), ranges))
        return (torch.full((nx, 1), float(len(args))).as_subclass(_Device),)


def test_host_inputs_copy_in_and_out():
    inner, tr = RecordingBackend(), FakeTransfers()
    spec = reduction_spec("Sum")
    wrapped = HostInputs(inner, "numpy", 3, transfers=tr)
    assert wrapped.capabilities.devices == {"cpu", "cuda"} and wrapped.capabilities.array_kinds >= {"numpy"}
    ranges = (np.zeros((1, 2), np.int64),) * 3
    (out,) = wrapped.evaluate(
        spec, [np.ones((4, 3)), np.ones((5, 3))], nx=4, ny=5, batch_shape=(), ranges=ranges
    )
    assert type(out) is np.ndarray and out.shape == (4, 1) and out[0, 0] == 2
    assert inner.calls == [((_Device, _Device), ranges)]  # ranges are not copied
    assert tr.log == [
        ("device", 3),
        ("to_device", "ndarray", "gpu3"),
        ("to_device", "ndarray", "gpu3"),
        ("current", "gpu3"),
        ("to_origin", "numpy"),
    ]
    tr.log.clear()
    wrapped = HostInputs(inner, "torch", None, transfers=tr)
    (out,) = wrapped.evaluate(spec, [torch.ones(4, 3)], nx=4, ny=5, batch_shape=())
    assert type(out) is torch.Tensor and out.device.type == "cpu"
    assert tr.log[0] == ("device", None) and tr.log[-1] == ("to_origin", "cpu")


def test_host_inputs_pass_device_tensors_through():
    class PassThrough(RecordingBackend):
        def evaluate(self, spec, args, **kw):
            self.calls.append(args)
            return ("untouched",)

    inner, tr = PassThrough(), FakeTransfers()
    args = [_OnDevice(0), _OnDevice(0)]
    assert HostInputs(inner, "torch", 0, transfers=tr).evaluate(
        reduction_spec("Sum"), args, nx=1, ny=1, batch_shape=()
    ) == ("untouched",)
    assert inner.calls == [args] and tr.log == []


# ---------------------------------------------------------------------------
# the registry and the front ends' device_id
# ---------------------------------------------------------------------------


@pytest.fixture
def available_cuda(monkeypatch):
    """The registry's CUDA backend, pretending to be available (it still takes CUDA tensors only)."""
    backend = registry.instance("cuda")
    monkeypatch.setattr(backend, "_availability", (True, "fake GPU"))
    return backend


def test_select_backend_wraps_the_cuda_backend_for_host_inputs(available_cuda, monkeypatch):
    spec = reduction_spec("Sum")
    for kind, device in (("numpy", "cpu"), ("torch", "cpu")):
        chosen = registry.select_backend("cuda", spec, kind, device, False)
        assert isinstance(chosen, HostInputs) and chosen.backend is available_cuda
        assert chosen.device_id is None and chosen.array_kind == kind
    chosen = registry.select_backend("GPU:1", spec, "numpy", "cpu", False, True)
    assert isinstance(chosen, HostInputs) and chosen.device_id == 1
    chosen = registry.select_backend("cuda:0", spec, "torch", "cuda", False)  # checks the tensors' device
    assert isinstance(chosen, HostInputs) and chosen.device_id == 0
    assert registry.select_backend("cuda", spec, "torch", "cuda", False) is available_cuda
    monkeypatch.setenv("POLYKEOPS_BACKEND", "GPU:2")
    assert registry.select_backend(None, spec, "numpy", "cpu", False).device_id == 2
    monkeypatch.delenv("POLYKEOPS_BACKEND")
    assert registry.select_backend(None, spec, "numpy", "cpu", False).name != "cuda"  # auto: no copies
    with pytest.raises(BackendError, match="does not take a device index"):
        registry.select_backend("cpu:1", spec, "numpy", "cpu", False)
    with pytest.raises(BackendError, match="needs a backend name"):
        registry.select_backend("auto:1", spec, "numpy", "cpu", False)


def test_device_request():
    assert registry.device_request("cuda", 2) == "cuda:2"
    assert registry.device_request("GPU", 0) == "cuda:0"
    assert registry.device_request("cuda:1", 2) == "cuda:2"
    for unset in (None, -1):
        assert registry.device_request("cuda", unset) == "cuda"
    assert registry.device_request("cpu", 1) == "cpu"  # CPU backends: ignored, as pykeops does
    assert registry.device_request(None, 1) is None
    assert registry.device_request("auto", 1) == "auto"
    for bad in (-2, 1.5, "1", True):
        with pytest.raises(BackendError, match="device_id must be"):
            registry.device_request("cuda", bad)


def test_device_id_reaches_the_backend(available_cuda, monkeypatch):
    """LazyTensor reductions and Genred turn device_id into the backend request."""
    from polykeops.numpy import Genred, LazyTensor

    seen = []

    def for_host_inputs(self, array_kind, device_id=None):
        seen.append((array_kind, device_id))
        return registry.get_backend("reference")

    monkeypatch.setattr(CudaBackend, "for_host_inputs", for_host_inputs)
    x, y = np.random.rand(5, 3), np.random.rand(6, 3)
    k = ((LazyTensor(x[:, None]) - LazyTensor(y[None])) ** 2).sum(-1)
    k.sum(1, backend="cuda", device_id=1)
    k.sum(1, backend="GPU", device_id=-1)
    k.sum(1, backend="cpu", device_id=1)  # not a GPU backend: device_id ignored
    Genred("SqDist(x, y)", ["x = Vi(3)", "y = Vj(3)"], axis=1)(x, y, backend="GPU", device_id=0)
    assert seen == [("numpy", 1), ("numpy", None), ("numpy", 0)]


@pytest.mark.skipif(GPU_MISSING is None, reason="a GPU is present")
def test_backend_cuda_without_a_gpu_says_what_is_missing():
    from polykeops.numpy import LazyTensor
    from polykeops.torch import LazyTensor as TLazyTensor

    x, y = np.random.rand(5, 3), np.random.rand(6, 3)
    k = ((LazyTensor(x[:, None]) - LazyTensor(y[None])) ** 2).sum(-1)
    for call in (
        lambda: k.sum(1, backend="cuda"),
        lambda: k.sum(1, backend="GPU", device_id=1),
        lambda: TLazyTensor(torch.rand(5, 1, 3)).sum(-1).sum(1, backend="cuda"),
    ):
        with pytest.raises(BackendError) as info:
            call()
        msg = str(info.value)
        assert "backend 'cuda' is not available" in msg and GPU_MISSING in msg


# ---------------------------------------------------------------------------
# end to end on a fake GPU
# ---------------------------------------------------------------------------


class CpuAsDevice(host_inputs.Transfers):
    """Transfers where "the GPU" is the CPU (the fake GPU runs kernels on CPU tensors)."""

    copied = []

    @staticmethod
    def device(device_id):
        CpuAsDevice.copied.append(device_id)
        return torch.device("cpu")

    @staticmethod
    def current(device):
        return contextlib.nullcontext()

    @staticmethod
    def to_device(a, device):
        return (torch.from_numpy(a) if isinstance(a, np.ndarray) else a).clone()


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path, available_cuda):
    from fake_gpu import install

    if NVRTC_MISSING is not None:
        pytest.skip(f"NVRTC unavailable: {NVRTC_MISSING}")
    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(tmp_path))
    install(monkeypatch)
    monkeypatch.setattr(host_inputs, "Transfers", CpuAsDevice)
    CpuAsDevice.copied.clear()
    calls = []
    real = CudaBackend.evaluate

    def counting(self, spec, args, **kw):
        calls.append(spec.reduction)
        return real(self, spec, args, **kw)

    monkeypatch.setattr(CudaBackend, "evaluate", counting)
    return calls


@needs_cxx
@needs_nvrtc
def test_numpy_inputs_with_backend_cuda(fake_gpu):
    from polykeops.numpy import Genred, LazyTensor
    from polykeops.numpy import cluster as ncluster

    rng = np.random.default_rng(0)
    x, y, b = rng.random((40, 3)), rng.random((30, 3)), rng.random((30, 2))
    k = (-((LazyTensor(x[:, None]) - LazyTensor(y[None])) ** 2).sum(-1)).exp() * LazyTensor(b[None])
    out = k.sum(1, backend="cuda", device_id=0)
    assert type(out) is np.ndarray and out.dtype == np.float64
    np.testing.assert_allclose(out, k.sum(1, backend="reference"), rtol=1e-12)
    rx = np.array([[0, 25], [25, 40]])
    ranges = ncluster.from_matrix(rx, np.array([[0, 10], [10, 30]]), np.array([[True, False], [True, True]]))
    gen = Genred("SqDist(x, y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="ArgMin", axis=1)
    idx = gen(x, y, backend="GPU", ranges=ranges)
    np.testing.assert_array_equal(idx, gen(x, y, backend="reference", ranges=ranges))
    assert fake_gpu == ["Sum", "ArgMin"] and CpuAsDevice.copied == [0, None]


@needs_cxx
@needs_nvrtc
def test_cpu_tensors_with_backend_cuda_and_autograd(fake_gpu):
    """Forward and backward reductions run on "the GPU"; results and gradients are CPU tensors."""
    from polykeops.torch import LazyTensor

    g = torch.Generator().manual_seed(0)
    x0, y0 = (
        torch.randn(50, 3, generator=g, dtype=torch.float64),
        torch.randn(40, 3, generator=g, dtype=torch.float64),
    )
    res = {}
    for name in ("cuda", "reference"):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        lse = (-((LazyTensor(x[:, None]) - LazyTensor(y[None])) ** 2).sum(-1)).logsumexp(1, backend=name)
        res[name] = (lse, *torch.autograd.grad(lse.exp().sum(), [x, y]))
    for u, v in zip(res["cuda"], res["reference"]):
        assert u.device.type == "cpu" and torch.allclose(u, v, rtol=1e-10, atol=1e-12)
    # the forward of a differentiable LogSumExp computes its stable state (m, s) (for an accurate
    # backward); the gradient reductions ran on the device too
    assert fake_gpu[0] == "Max_SumShiftExp" and len(fake_gpu) >= 3


# ---------------------------------------------------------------------------
# on a GPU
# ---------------------------------------------------------------------------


@needs_gpu
def test_gpu_numpy_and_cpu_tensor_inputs_match_the_cpu_backend():
    from polykeops.numpy import LazyTensor as NLazyTensor
    from polykeops.torch import LazyTensor

    rng = np.random.default_rng(1)
    x, y = rng.random((500, 3)), rng.random((400, 3))
    kn = (-((NLazyTensor(x[:, None]) - NLazyTensor(y[None])) ** 2).sum(-1)).exp()
    out = kn.sum(1, backend="cuda", device_id=0)
    assert type(out) is np.ndarray
    np.testing.assert_allclose(out, kn.sum(1, backend="cpu"), rtol=1e-10)
    res = {}
    for name in ("cuda", "cpu"):
        xt, yt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(y).requires_grad_()
        a = (-((LazyTensor(xt[:, None]) - LazyTensor(yt[None])) ** 2).sum(-1)).exp().sum(1, backend=name)
        res[name] = (a, *torch.autograd.grad((a**2).sum(), [xt, yt]))
    for u, v in zip(res["cuda"], res["cpu"]):
        assert u.device.type == "cpu" and torch.allclose(u, v, rtol=1e-10)


@needs_gpu
def test_gpu_device_id_out_of_range_is_a_clear_error():
    from polykeops.numpy import LazyTensor

    x = np.random.rand(5, 1, 3)
    with pytest.raises(DeviceError, match=f"device_id={torch.cuda.device_count()}"):
        LazyTensor(x).sum(-1).sum(1, backend="cuda", device_id=torch.cuda.device_count())
