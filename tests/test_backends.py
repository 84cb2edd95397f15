"""The backend registry: availability, registration, selection, health report."""

from __future__ import annotations

import pytest
import torch

import polykeops
import polykeops.numpy as pknp
import polykeops.torch as pkt
from polykeops import BackendError
from polykeops import backends as registry
from polykeops.backends.contract import Backend, Capabilities
from polykeops.backends.reference import ReferenceBackend


class ToyBackend(Backend):
    """Wraps the reference backend and counts its calls."""

    name = "toy"
    priority = -5  # below the reference backend: never picked automatically
    capabilities = ReferenceBackend.capabilities

    def __init__(self):
        self.inner = ReferenceBackend()
        self.calls = 0

    def evaluate(self, spec, args, *, nx, ny, batch_shape):
        self.calls += 1
        return self.inner.evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape)


class UnavailableBackend(ToyBackend):
    name = "unicorn"
    priority = 1000  # would win the automatic choice if it were available

    def availability(self):
        return False, "needs a unicorn GPU"

    def evaluate(self, spec, args, *, nx, ny, batch_shape):  # pragma: no cover - must not run
        raise AssertionError("an unavailable backend was used")


class BrokenFactoryError(Exception):
    pass


def _broken_factory():
    raise BrokenFactoryError("plugin import failed")


@pytest.fixture
def registered(auto_backend):
    names = []

    def register(name, factory):
        registry.register_backend(name, factory)
        names.append(name)
        ok, _ = registry.available()[name]
        return registry.get_backend(name) if ok else None

    yield register
    for n in names:
        registry.unregister_backend(n)


def _problem():
    x = torch.randn(6, 1, 2, dtype=torch.float64)
    y = torch.randn(1, 5, 2, dtype=torch.float64)
    F = (-pkt.LazyTensor(x).sqdist(pkt.LazyTensor(y))).exp()
    ref = torch.exp(-((x - y) ** 2).sum(-1, keepdim=True)).sum(1)
    return F, ref


def test_reference_is_available():
    avail = registry.available()
    assert "reference" in avail
    ok, reason = avail["reference"]
    assert ok is True and isinstance(reason, str)


def test_select_toy_backend_by_name(registered):
    toy = registered("toy", ToyBackend)
    assert "toy" in registry.available() and registry.available()["toy"][0]
    F, ref = _problem()
    torch.testing.assert_close(F.sum(dim=1, backend="toy"), ref)
    assert toy.calls == 1
    F.sum(dim=1)  # automatic choice: reference (higher priority), not the toy
    assert toy.calls == 1


def test_select_toy_backend_by_env(registered, monkeypatch):
    toy = registered("toy", ToyBackend)
    monkeypatch.setenv("POLYKEOPS_BACKEND", "toy")
    F, ref = _problem()
    torch.testing.assert_close(F.sum(dim=1), ref)
    assert toy.calls == 1
    x = pknp.LazyTensor(torch.randn(3, 1, 2).numpy())
    y = pknp.LazyTensor(torch.randn(1, 4, 2).numpy())
    (x - y).sqnorm2().min(dim=0)
    assert toy.calls == 2


def test_toy_backend_used_for_gradients(registered):
    toy = registered("toy", ToyBackend)
    x = torch.randn(4, 1, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 3, 2, dtype=torch.float64)
    res = (pkt.LazyTensor(x) * pkt.LazyTensor(y)).sum(dim=1, backend="toy")
    (g,) = torch.autograd.grad(res.sum(), [x])
    torch.testing.assert_close(g, y.sum(1, keepdim=True).expand(4, 1, 2))
    assert toy.calls >= 2  # forward and backward both went through the toy


def test_duplicate_registration_refused(registered):
    registered("toy", ToyBackend)
    with pytest.raises(BackendError, match="already registered"):
        registry.register_backend("toy", ToyBackend)
    with pytest.raises(BackendError, match="already registered"):
        registry.register_backend("reference", ToyBackend)


def test_unavailable_backend(registered):
    registered("unicorn", UnavailableBackend)
    ok, reason = registry.available()["unicorn"]
    assert ok is False and "unicorn GPU" in reason
    F, ref = _problem()
    with pytest.raises(BackendError, match="needs a unicorn GPU"):
        F.sum(dim=1, backend="unicorn")
    with pytest.raises(BackendError, match="needs a unicorn GPU"):
        registry.get_backend("unicorn")
    # the automatic choice skips it, although its priority is the highest
    torch.testing.assert_close(F.sum(dim=1), ref)


def test_broken_plugin_does_not_break_others(registered):
    registered("broken", _broken_factory)
    ok, reason = registry.available()["broken"]
    assert ok is False and "plugin import failed" in reason
    F, ref = _problem()
    torch.testing.assert_close(F.sum(dim=1), ref)
    with pytest.raises(BackendError, match="plugin import failed"):
        F.sum(dim=1, backend="broken")


def test_capabilities_are_respected(registered):
    class Float64Only(ToyBackend):
        name = "f64only"
        capabilities = Capabilities(dtypes=frozenset({"float64"}))

    registered("f64only", Float64Only)
    x = torch.randn(3, 1, 2)
    y = torch.randn(1, 4, 2)
    with pytest.raises(BackendError, match="float32"):
        (pkt.LazyTensor(x) * pkt.LazyTensor(y)).sum(dim=1, backend="f64only")


def test_unknown_backend_lists_available():
    with pytest.raises(BackendError) as info:
        registry.get_backend("nope")
    assert "reference" in str(info.value)


def test_invalid_backend_names():
    for bad in ("", "auto", None):
        with pytest.raises(BackendError):
            registry.register_backend(bad, ToyBackend)


def test_check_health(capsys):
    report = polykeops.check_health(verbose=False)
    assert isinstance(report, dict)
    assert report["backends"]["reference"][0] is True
    assert report["version"] == polykeops.__version__
    assert capsys.readouterr().out == ""
    report = polykeops.check_health()
    out = capsys.readouterr().out
    assert "reference" in out


def test_unregister_backend_forgets_a_registered_backend():
    registry.register_backend("toy_unregistered", ToyBackend)
    assert registry.get_backend("toy_unregistered").name == "toy"
    registry.unregister_backend("toy_unregistered")
    assert "toy_unregistered" not in registry.names()
    registry.unregister_backend("toy_unregistered")  # unknown names are ignored
    with pytest.raises(BackendError, match="built-in"):
        registry.unregister_backend("reference")
