"""polykeops.dask with ``backend="cuda"``: every task hands its NumPy chunks to the CUDA backend
(copied to the device and the partial state back). Without a GPU the kernels run on the fake GPU
(real code generation and NVRTC builds, launches by the host emulator: see ``fake_gpu``); on a
GPU (``needs_gpu``) against the CPU engine."""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

from test_cuda_codegen import needs_cxx, needs_gpu, needs_nvrtc  # noqa: E402
from test_cuda_host import CpuAsDevice, available_cuda, fake_gpu  # noqa: E402, F401 (fixtures)

import polykeops.dask as pkd  # noqa: E402
import polykeops.numpy as pkn  # noqa: E402


def _data(nx=23, ny=31):
    rng = np.random.default_rng(0)
    return rng.standard_normal((nx, 3)), rng.standard_normal((ny, 3)), rng.standard_normal((ny, 2))


def _reductions(V_i, V_j, x, y, b, **kw):
    D = V_i(x).sqdist(V_j(y))
    return (((-D).exp() * V_j(b)).sum(dim=1, **kw),
            D.Kmin_argKmin(4, dim=1, **kw), (-D).logsumexp(dim=1, **kw),
            (-D).sumsoftmaxweight(V_j(b), dim=1, **kw), D.argmin(dim=0, **kw))


@needs_cxx
@needs_nvrtc
def test_numpy_chunks_with_backend_cuda_on_the_fake_gpu(fake_gpu, available_cuda, monkeypatch):  # noqa: F811
    # modules loaded by earlier tests in this process (their fake GPU is gone): load them again here
    monkeypatch.setattr(available_cuda, "_loaded", {})
    x, y, b = _data()
    dx = da.from_array(x, chunks=10)
    dy, db = da.from_array(y, chunks=(9, 3)), da.from_array(b, chunks=(9, 2))
    with dask.config.set(scheduler="synchronous"):
        got = dask.compute(*_reductions(pkd.Vi, pkd.Vj, dx, dy, db, backend="cuda"))
    want = _reductions(pkn.Vi, pkn.Vj, x, y, b, backend="cpu")
    for g, w in zip(got, want):
        for gi, wi in zip(g if isinstance(g, tuple) else (g,), w if isinstance(w, tuple) else (w,)):
            assert gi.dtype == wi.dtype and gi.shape == wi.shape
            if wi.dtype.kind == "i":
                np.testing.assert_array_equal(gi, wi)
            else:
                np.testing.assert_allclose(gi, wi, rtol=1e-12, atol=1e-14)
    # every state task ran on "the GPU" (the state reductions), none elsewhere: 3 x 4 pairs for the
    # four reductions over j, 4 x 3 for the one over i
    assert len(fake_gpu) == 5 * 12
    assert set(fake_gpu) == {"Sum", "KMin_ArgKMin", "Max_SumShiftExp", "Max_SumShiftExpWeight", "Min_ArgMin"}
    assert len(CpuAsDevice.copied) == 5 * 12


@needs_gpu
def test_numpy_chunks_with_backend_cuda_on_a_gpu():
    x, y, b = _data(2000, 3001)
    dx, dy, db = (da.from_array(a, chunks=(700, a.shape[1])) for a in (x, y, b))
    with dask.config.set(scheduler="threads", num_workers=2):
        got = dask.compute(*_reductions(pkd.Vi, pkd.Vj, dx, dy, db, backend="cuda"))
    want = _reductions(pkn.Vi, pkn.Vj, x, y, b, backend="cpu")
    for g, w in zip(got, want):
        for gi, wi in zip(g if isinstance(g, tuple) else (g,), w if isinstance(w, tuple) else (w,)):
            if wi.dtype.kind == "i":
                np.testing.assert_array_equal(gi, wi)
            else:
                np.testing.assert_allclose(gi, wi, rtol=1e-10, atol=1e-12)
