"""polykeops.dask on a real cluster: ``distributed.LocalCluster`` with 2 worker processes.

Every reduction family equals polykeops.numpy on the same data (values and indices); a worker
killed (SIGKILL) in the middle of a reduction is replaced, its tasks (and the states it held)
are recomputed by Dask, and the result is still exact.  Everything is bounded in time.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import polykeops  # noqa: E402
import polykeops.dask as pkd  # noqa: E402
import polykeops.numpy as pkn  # noqa: E402
from polykeops.backends.cpu import CpuBackend  # noqa: E402

TIMEOUT = 60  # seconds, for any one result


@pytest.fixture(scope="module")
def client():
    import cloudpickle

    # the plugin and the backend below are defined here: ship them by value to the workers
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # the workers import the same polykeops as this process (PYTHONPATH is inherited)
    root = os.path.dirname(os.path.dirname(polykeops.__file__))
    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40, timeout=TIMEOUT)
    c = distributed.Client(cluster, timeout=TIMEOUT)
    try:
        c.wait_for_workers(2, timeout=TIMEOUT)
        yield c
    finally:
        c.close(timeout=TIMEOUT)
        cluster.close(timeout=TIMEOUT)
        os.environ["PYTHONPATH"] = path
        if not path:
            del os.environ["PYTHONPATH"]
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _result(client, arrays):
    """The computed ``arrays`` (a nested structure of Dask arrays), waiting at most TIMEOUT."""
    return client.compute({"r": arrays}).result(timeout=TIMEOUT)["r"]


def test_workers_run_this_checkout(client):
    files = client.run(lambda: __import__("polykeops").__file__, wait=True)
    assert set(files.values()) == {polykeops.__file__}
    pids = client.run(os.getpid)
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()


def test_every_family_equals_numpy(client):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((203, 3))
    y = rng.standard_normal((151, 3))
    b = rng.standard_normal((151, 2))
    y[77] = y[3]  # a tie across chunks
    dx = da.from_array(x, chunks=41)
    dy, db = da.from_array(y, chunks=(17, 3)), da.from_array(b, chunks=(17, 2))
    Dd, Dn = pkd.Vi(dx).sqdist(pkd.Vj(dy)), pkn.Vi(x).sqdist(pkn.Vj(y))
    lazy = {
        "sum": ((-Dd).exp() @ db, (-Dn).exp() @ b),
        "lse": ((-Dd).logsumexp(dim=1), (-Dn).logsumexp(dim=1)),
        "softmax": ((-Dd).sumsoftmaxweight(pkd.Vj(db), dim=1), (-Dn).sumsoftmaxweight(pkn.Vj(b), dim=1)),
        "min_argmin": (Dd.min_argmin(dim=1), Dn.min_argmin(dim=1)),
        "argmax_i": (Dd.argmax(dim=0), Dn.argmax(dim=0)),
        "kmin": (Dd.Kmin_argKmin(7, dim=1), Dn.Kmin_argKmin(7, dim=1)),
        "argkmin_i": (Dd.argKmin(4, dim=0), Dn.argKmin(4, dim=0)),
    }
    got = _result(client, {k: v[0] for k, v in lazy.items()})
    for k, (_, want) in lazy.items():
        g = got[k] if isinstance(got[k], tuple) else (got[k],)
        w = want if isinstance(want, tuple) else (want,)
        for gi, wi in zip(g, w):
            assert gi.shape == wi.shape and gi.dtype == wi.dtype, k
            if wi.dtype.kind == "i":
                np.testing.assert_array_equal(gi, wi, err_msg=k)
            else:
                np.testing.assert_allclose(gi, wi, rtol=1e-12, atol=1e-13, err_msg=k)


class CrashOnce(CpuBackend):
    """The CPU backend, except that the first worker to reach its third state task kills itself
    (SIGKILL, no cleanup) in the middle of it; the marker file makes it happen once."""

    name = "crash_once"
    priority = -20
    marker = ""
    calls = 0

    def evaluate_states(self, spec, args, **kwargs):
        type(self).calls += 1
        if type(self).calls == 3:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return super().evaluate_states(spec, args, **kwargs)


class RegisterCrashOnce(distributed.WorkerPlugin):
    """Registers ``crash_once`` on every worker, the replacement of a killed one included."""

    def __init__(self, marker):
        self.marker = marker

    def setup(self, worker):
        from polykeops.backends import register_backend

        CrashOnce.marker = self.marker
        register_backend("crash_once", CrashOnce, replace=True)


@pytest.fixture
def crash_once(client, tmp_path):
    """The marker file's path; ``crash_once`` registered here (the request names it) and on
    every worker."""
    from polykeops.backends import register_backend, unregister_backend

    marker = str(tmp_path / "killed")
    register_backend("crash_once", CrashOnce, replace=True)
    client.register_plugin(RegisterCrashOnce(marker), name="crash-once")
    try:
        yield marker
    finally:
        client.unregister_worker_plugin("crash-once")
        unregister_backend("crash_once")


def test_killed_worker_is_retried_and_nothing_is_lost(client, crash_once):
    marker = crash_once
    before = set(client.run(os.getpid).values())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 3))
    y = rng.standard_normal((160, 3))
    b = rng.standard_normal((160, 2))
    dx = da.from_array(x, chunks=20)
    dy, db = da.from_array(y, chunks=(16, 3)), da.from_array(b, chunks=(16, 2))
    Dd, Dn = pkd.Vi(dx).sqdist(pkd.Vj(dy)), pkn.Vi(x).sqdist(pkn.Vj(y))
    genred = pkd.Genred("Exp(-SqDist(x, y)) * b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1,
                        dtype="float64")
    lazy = (genred(dx, dy, db, backend="crash_once"), Dd.Kmin_argKmin(5, dim=1, backend="crash_once"))
    s, (vals, idx) = _result(client, lazy)
    assert os.path.exists(marker), "no worker was killed"
    killed = int(open(marker).read())
    assert killed in before
    client.wait_for_workers(2, timeout=TIMEOUT)  # the nanny restarted it
    after = set(client.run(os.getpid).values())
    assert killed not in after
    want = pkn.Genred("Exp(-SqDist(x, y)) * b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1,
                      dtype="float64")(x, y, b)
    np.testing.assert_allclose(s, want, rtol=1e-12)
    want_vals, want_idx = Dn.Kmin_argKmin(5, dim=1)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(vals, want_vals, rtol=1e-13)
