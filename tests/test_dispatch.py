"""The one dispatch point: BackendRequest (parsed once per call), ReductionCall, dispatch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import polykeops.numpy as pknp
import polykeops.torch as pkt
from polykeops import BackendError
from polykeops import backends as registry
from polykeops.backends import BackendRequest, ReductionCall, dispatch
from polykeops.backends.contract import Backend
from polykeops.backends.reference import ReferenceBackend
from polykeops.formula.parser import parse_reduction_formula
from polykeops.formula.spec import ReductionSpec


class RecordingBackend(Backend):
    """The reference backend, recording every call it receives."""

    name = "recording"
    priority = -5  # never chosen automatically
    capabilities = ReferenceBackend.capabilities

    def __init__(self):
        self.inner = ReferenceBackend()
        self.calls = []

    def evaluate(self, spec, args, *, nx, ny, batch_shape):
        self.calls.append((spec, nx, ny, tuple(batch_shape)))
        return self.inner.evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape)


@pytest.fixture
def recording(monkeypatch):
    backend = RecordingBackend()
    registry.register_backend(backend.name, lambda: backend, replace=True)
    monkeypatch.delenv("POLYKEOPS_BACKEND", raising=False)
    yield backend
    registry.unregister_backend(backend.name)


def _spec(axis=1):
    f, vs = parse_reduction_formula("Exp(-SqDist(x, y)) * b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"])
    return ReductionSpec("Sum", (f,), vs, axis=axis, dtype="float64")


def test_request_parses_names_aliases_and_devices(monkeypatch):
    monkeypatch.delenv("POLYKEOPS_BACKEND", raising=False)
    assert BackendRequest.parse(None) == BackendRequest("auto", None, "POLYKEOPS_BACKEND")
    assert BackendRequest.parse("CPU").name == "cpu"
    assert BackendRequest.parse("GPU:3") == BackendRequest("cuda", 3)
    assert str(BackendRequest.parse("cuda", 2)) == "cuda:2"
    assert BackendRequest.parse("cpu", 1).device_id is None  # CPU backends ignore device_id (pykeops)
    request = BackendRequest.parse("reference")
    assert BackendRequest.parse(request) is request
    with pytest.raises(BackendError, match="Did you mean 'reference'"):
        BackendRequest.parse("referance")
    with pytest.raises(BackendError, match="needs a backend name"):
        BackendRequest.parse("auto:1")
    with pytest.raises(BackendError, match="device_id must be"):
        BackendRequest.parse("cuda", -3)
    monkeypatch.setenv("POLYKEOPS_BACKEND", "cpuu")
    with pytest.raises(BackendError, match="POLYKEOPS_BACKEND='cpuu'"):
        BackendRequest.parse(None)


def test_call_of_an_axis0_spec_is_canonical_with_swapped_sizes_and_ranges():
    ranges = tuple(np.full((1, 2), k, dtype=np.int64) for k in range(6))
    call = ReductionCall.of(_spec(axis=0), 7, 5, ranges=ranges)
    assert call.spec.axis == 1 and (call.nx, call.ny) == (5, 7)
    assert [int(r[0, 0]) for r in call.ranges] == [3, 4, 5, 0, 1, 2]
    assert [int(r[0, 0]) for r in call.block_sparse_ranges] == [3, 4, 5]
    back = call.gradient(_spec(axis=0))  # a gradient reducing over the call's i swaps back
    assert (back.nx, back.ny) == (7, 5) and [int(r[0, 0]) for r in back.ranges] == [0, 1, 2, 3, 4, 5]
    rows = call.gradient(_spec(axis=1), nx=12, ny=1, ranges=None)
    assert (rows.nx, rows.ny, rows.ranges, rows.request) == (12, 1, None, call.request)


def test_dispatch_evaluates_with_the_requested_backend(recording):
    rng = np.random.default_rng(0)
    x, y, b = rng.normal(size=(4, 2)), rng.normal(size=(6, 2)), rng.normal(size=(6, 1))
    call = ReductionCall.of(_spec(), 4, 6, request=BackendRequest.parse("recording"))
    (out,) = dispatch(call, [x, y, b])
    ref = (np.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) @ b)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    assert recording.calls == [(call.spec, 4, 6, ())]


def test_numpy_and_torch_front_ends_go_through_dispatch(recording):
    x, y = np.random.rand(5, 2), np.random.rand(3, 2)
    pknp.Vi(x).sqdist(pknp.Vj(y)).sum(1, backend="recording")
    pkt.Vi(torch.from_numpy(x)).sqdist(pkt.Vj(torch.from_numpy(y))).sum(0, backend="recording")
    g = pknp.Genred("SqDist(x, y)", ["x = Vi(2)", "y = Vj(2)"], axis=1)
    g(x, y, backend="recording")
    assert [(nx, ny) for _, nx, ny, _ in recording.calls] == [(5, 3), (3, 5), (5, 3)]
    assert all(spec.axis == 1 for spec, *_ in recording.calls)  # backends see canonical specs


def test_backward_uses_the_request_of_the_forward_call(recording, monkeypatch):
    """POLYKEOPS_BACKEND is read once per call: changing it before backward changes nothing."""
    monkeypatch.setenv("POLYKEOPS_BACKEND", "recording")
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(7, 2, dtype=torch.float64)
    s = (-pkt.Vi(x).sqdist(pkt.Vj(y))).exp().sum(1).sum()
    forward_calls = len(recording.calls)
    monkeypatch.setenv("POLYKEOPS_BACKEND", "no-such-backend")  # would fail if read again
    (gx,) = torch.autograd.grad(s, [x])
    assert forward_calls == 1 and len(recording.calls) == 2
    xd = x.detach().requires_grad_()
    (ref,) = torch.autograd.grad(torch.exp(-((xd[:, None] - y[None]) ** 2).sum(-1)).sum(), [xd])
    torch.testing.assert_close(gx, ref)


def test_solve_parses_the_request_once(recording, monkeypatch):
    """Every product of a conjugate gradient runs with the request parsed at its start."""
    monkeypatch.setenv("POLYKEOPS_BACKEND", "recording")
    x = np.random.rand(30, 2)
    K = (-pknp.Vi(x).sqdist(pknp.Vj(x)) * 4).exp()
    b = np.random.rand(30, 1)
    calls = []
    parse = BackendRequest.parse.__func__

    def counting(cls, backend=None, device_id=None):
        calls.append(backend)
        return parse(cls, backend, device_id)

    monkeypatch.setattr(BackendRequest, "parse", classmethod(counting))
    a = K.solve(b, alpha=1.0)
    dense = np.exp(-4 * ((x[:, None] - x[None]) ** 2).sum(-1))
    np.testing.assert_allclose(dense @ a + a, b, atol=1e-6)
    assert len(recording.calls) > 2
    assert sum(c is None for c in calls) == 1  # the environment was read once, for the whole solve
