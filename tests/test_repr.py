"""str/repr of LazyTensors, and their shape / ndim / dtype metadata (pykeops meanings)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import polykeops.numpy as pknp
import polykeops.torch as pkt


def _kernel(dtype=torch.float32):
    x = pkt.LazyTensor(torch.randn(10, 1, 3, dtype=dtype))
    y = pkt.LazyTensor(torch.randn(1, 20, 3, dtype=dtype))
    return x, y, (-((x - y) ** 2).sum(dim=2)).exp()


@pytest.mark.parametrize("fmt", [str, repr])
def test_repr_shows_formula_shape_dtype_device_backend(fmt, auto_backend):
    x, y, K = _kernel()
    text = fmt(K)
    assert "Exp" in text and "Sum" in text and "Square" in text
    assert "Vi" in text and "Vj" in text
    assert "(10, 20)" in text
    assert "float32" in text
    assert "cpu" in text
    from polykeops.backends import available

    usable = [name for name, (ok, _) in available().items() if ok]
    assert "backend: auto (" in text
    assert any(f"auto ({name})" in text for name in usable)


def test_repr_numpy_and_float64():
    x = pknp.LazyTensor(np.random.randn(4, 1, 2))
    y = pknp.LazyTensor(np.random.randn(1, 6, 2))
    text = repr(x.sqdist(y))
    assert "float64" in text and "(4, 6)" in text and "cpu" in text


def test_repr_follows_backend_env(monkeypatch):
    monkeypatch.setenv("POLYKEOPS_BACKEND", "reference")
    _, _, K = _kernel()
    assert "backend: reference" in repr(K)


def test_repr_never_raises_on_bad_env(monkeypatch):
    monkeypatch.setenv("POLYKEOPS_BACKEND", "nope")
    _, _, K = _kernel()
    assert "backend" in repr(K)


def test_shape_ndim_dtype():
    x, y, K = _kernel(torch.float64)
    assert x.shape == (10, 1, 3) and x.ndim == 3
    assert y.shape == (1, 20, 3) and y.ndim == 3
    assert (x - y).shape == (10, 20, 3) and (x - y).ndim == 3
    assert K.shape == (10, 20) and K.ndim == 1
    assert K.dtype == torch.float64
    assert (x - y).concat(K).ndim == 4
    assert (x - y)[0:2].shape == (10, 20, 2)


def test_shape_batched_and_2d():
    xb = pkt.LazyTensor(torch.randn(2, 5, 1, 4))
    yb = pkt.LazyTensor(torch.randn(1, 1, 7, 4))
    assert (xb | yb).shape == (2, 5, 7)
    assert (xb - yb).shape == (2, 5, 7, 4)
    assert (xb - yb).nbatchdims == 1
    vi = pkt.Vi(torch.randn(5, 2))
    vj = pkt.Vj(torch.randn(8, 2))
    assert (vi - vj).shape == (5, 8, 2)
    assert pkt.Pm(torch.randn(3)).ndim == 3
    assert pkt.Pm(0.5).ndim == 1


def test_numpy_dtype_object():
    x = pknp.LazyTensor(np.random.randn(4, 1, 2).astype(np.float32))
    assert x.dtype == np.float32
    assert x.ndim == 2
    assert x.shape == (4, 1, 2)
