"""polykeops.dask on the local schedulers: every reduction family equals polykeops.numpy on the
same data (indices exactly, values to tolerance), whatever the chunks; the graph is the plan
(one state task per pair of chunks, a split_every tree, one finalize per i-chunk, parameters
and the call once); batch dimensions, block-sparse ranges, gradients, K @ v and solve."""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import polykeops.dask as pkd  # noqa: E402
import polykeops.numpy as pkn  # noqa: E402
from polykeops.backends import ReductionCall  # noqa: E402
from polykeops.errors import NotDifferentiableError, ShapeError  # noqa: E402

#: reduction -> (formula, second formula or None, K or None); together, every reduction family
CASES = {
    "Sum": ("Exp(-SqDist(x, y)) * b", None, None),
    "LogSumExp": ("-SqDist(x, y) * p", None, None),
    "LogSumExpWeight": ("-SqDist(x, y)", "Exp(b)", None),
    "Max_SumShiftExp": ("-SqDist(x, y)", None, None),
    "SumSoftMaxWeight": ("-SqDist(x, y)", "b", None),
    "Min": ("SqDist(x, y) * p", None, None),
    "ArgMax": ("SqDist(x, y) - b", None, None),
    "Min_ArgMin": ("x - y", None, None),
    "Max_ArgMax": ("x * y", None, None),
    "KMin": ("SqDist(x, y) + p", None, 4),
    "ArgKMin": ("x - y", None, 3),
    "KMin_ArgKMin": ("SqDist(x, y)", None, 5),
}
ALIASES = ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)", "p = Pm(1)"]


def _data(nx, ny, dtype, seed=0, batch=()):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(batch + (nx, 3)).astype(dtype)
    y = rng.standard_normal(batch + (ny, 3)).astype(dtype)
    b = rng.standard_normal(batch + (ny, 2)).astype(dtype)
    y[..., ny // 2, :] = y[..., 0, :]  # ties between chunks
    p = np.array([0.7], dtype=dtype)
    return x, y, b, p


def _genred(module, reduction, axis, dtype):
    f, f2, k = CASES[reduction]
    name = "LogSumExp" if reduction == "LogSumExpWeight" else reduction
    aliases = ALIASES if axis == 1 else [a.replace("Vi", "Vt").replace("Vj", "Vi").replace("Vt", "Vj")
                                         for a in ALIASES]
    return module.Genred(f, aliases, reduction_op=name, axis=axis, formula2=f2, opt_arg=k, dtype=dtype)


def _same(got, want, dtype):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert isinstance(g, da.Array)
        g = g.compute()
        assert g.shape == w.shape and g.dtype == w.dtype
        if w.dtype.kind == "i":
            np.testing.assert_array_equal(g, w)
        else:
            tol = 1e-12 if dtype == "float64" else 3e-5
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


@pytest.fixture(autouse=True)
def _synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


CHUNKINGS = [  # (nx, ny, i-chunks, j-chunks, split_every)
    (7, 9, 1, 1, 2),  # chunks of one row / one column, a deep binary tree
    (37, 53, 10, 7, 3),  # sizes that are not multiples of the chunks
    (12, 20, 12, 20, 8),  # one chunk each
    (5, 40, (2, 3), (1, 30, 9), 8),  # uneven chunks, a j-chunk shorter than K
]


@pytest.mark.parametrize("reduction", sorted(CASES))
@pytest.mark.parametrize("axis", [0, 1])
def test_every_reduction_equals_numpy(reduction, axis):
    for n, (nx, ny, ci, cj, split) in enumerate(CHUNKINGS):
        for dtype in ("float32", "float64"):
            x, y, b, p = _data(nx, ny, dtype, seed=n)
            if axis == 0:  # the reduced variables indexed by i
                want = _genred(pkn, reduction, 0, dtype)(x, y, b, p)
            else:
                want = _genred(pkn, reduction, 1, dtype)(x, y, b, p)
            dx = da.from_array(x, chunks=(ci, 3))
            dy, db = da.from_array(y, chunks=(cj, 3)), da.from_array(b, chunks=(cj, 2))
            with dask.config.set({"polykeops.split_every": split}):
                got = _genred(pkd, reduction, axis, dtype)(dx, dy, db, p)
            _same(got, want, dtype)
            out = got[0] if isinstance(got, tuple) else got
            assert out.chunks[0] == dx.chunks[0]  # the output axis keeps the input's chunks


def test_lazy_tensor_methods_equal_numpy():
    x, y, b, _ = _data(41, 29, "float64", seed=3)
    dx, dy, db = da.from_array(x, chunks=9), da.from_array(y, chunks=(8, 3)), da.from_array(b, chunks=(8, 2))
    Dd, Dn = pkd.Vi(dx).sqdist(pkd.Vj(dy)), pkn.Vi(x).sqdist(pkn.Vj(y))
    _same(Dd.argKmin(4, dim=1), Dn.argKmin(4, dim=1), "float64")
    _same(Dd.Kmin_argKmin(3, dim=0), Dn.Kmin_argKmin(3, dim=0), "float64")
    _same(Dd.min_argmin(dim=1), Dn.min_argmin(dim=1), "float64")
    _same((-Dd).logsumexp(dim=1), (-Dn).logsumexp(dim=1), "float64")
    _same((-Dd).sumsoftmaxweight(pkd.Vj(db), dim=1), (-Dn).sumsoftmaxweight(pkn.Vj(b), dim=1), "float64")
    _same((-Dd).exp() @ db, (-Dn).exp() @ b, "float64")
    _same((-Dd).exp() @ db[:, 0], (-Dn).exp() @ b[:, 0], "float64")  # (N,) -> (M,)
    # against dense NumPy directly
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose((-Dd).exp().sum(dim=1).compute()[:, 0],
                               np.exp(-d2).sum(1), rtol=1e-12)
    np.testing.assert_array_equal(Dd.argKmin(3, dim=1).compute(), np.argsort(d2, 1, kind="stable")[:, :3])


def test_graph_is_the_plan():
    x, y, b, p = _data(30, 50, "float64")
    dx, dy = da.from_array(x, chunks=10), da.from_array(y, chunks=(5, 3))
    res = (-pkd.Vi(dx).sqdist(pkd.Vj(dy)) * pkd.Pm(p)).exp().sum(dim=1)
    with dask.config.set({"polykeops.split_every": 4}):
        res4 = (-pkd.Vi(dx).sqdist(pkd.Vj(dy)) * pkd.Pm(p)).exp().sum(dim=1)
    graph = dict(res4.__dask_graph__())
    names = [k[0] if isinstance(k, tuple) else k for k in graph]
    kinds = ("state", "combine", "final", "call")
    count = {w: sum(1 for n in names if n.startswith(f"polykeops-{w}-")) for w in kinds}
    # 3 i-chunks x 10 j-chunks; per i-chunk a tree of fan-in 4: 10 -> 3 -> 1 (4 combine tasks)
    assert count == {"state": 30, "combine": 3 * 4, "final": 3, "call": 1}
    states = [graph[k] for k in graph if isinstance(k, tuple) and k[0].startswith("polykeops-state")]
    # every task names the same call key and the same parameter key (the last argument): each is
    # sent once to a worker, not once per task
    assert len({t[1] for t in states}) == 1 and len({t[-1] for t in states}) == 1
    assert isinstance(graph[states[0][1]], ReductionCall) and states[0][-1] in graph
    assert len({t[-2] for t in states}) == 10  # the j-chunks of y
    assert res.chunks == ((10, 10, 10), (1,))
    np.testing.assert_allclose(res.compute(), res4.compute(), rtol=1e-13)
    with pytest.raises(ValueError, match="split_every"), dask.config.set({"polykeops.split_every": 1}):
        pkd.Vi(dx).sqdist(pkd.Vj(dy)).sum(dim=1)


def test_threaded_scheduler_and_numpy_inputs():
    x, y, b, _ = _data(64, 70, "float32", seed=2)
    dx = da.from_array(x, chunks=16)
    with dask.config.set(scheduler="threads", num_workers=2):
        got = pkd.Vi(dx).sqdist(pkd.Vj(y)).argKmin(6, dim=1).compute()  # y: a NumPy array, one chunk
    np.testing.assert_array_equal(got, pkn.Vi(x).sqdist(pkn.Vj(y)).argKmin(6, dim=1))


def test_batch_dimensions():
    x, y, b, _ = _data(11, 17, "float64", seed=4, batch=(2, 3))
    b = b[:1]  # a broadcast batch dimension
    dx, dy, db = (da.from_array(a, chunks=(1, 2, 4, -1)) for a in (x, y, b))
    for name in ("Sum", "SumSoftMaxWeight", "KMin_ArgKMin", "Min_ArgMin", "LogSumExp"):
        fd, fn = _genred(pkd, name, 1, "float64"), _genred(pkn, name, 1, "float64")
        p = np.array([0.3])
        _same(fd(dx, dy, db, p), fn(x, y, b, p), "float64")
    Kd = (-pkd.LazyTensor(dx[..., :, None, :]).sqdist(pkd.LazyTensor(dy[..., None, :, :]))).exp()
    Kn = (-pkn.LazyTensor(x[..., :, None, :]).sqdist(pkn.LazyTensor(y[..., None, :, :]))).exp()
    _same(Kd.sum(dim=3), Kn.sum(dim=3), "float64")
    _same(Kd.sum(dim=2), Kn.sum(dim=2), "float64")


def _ranges(nx, ny):
    ranges_i = np.array([[0, 6], [6, 14], [14, nx]], dtype=np.int64)
    slices_i = np.array([1, 3, 4], dtype=np.int64)
    redranges_j = np.array([[0, 5], [9, 14], [20, ny], [3, 11]], dtype=np.int64)
    ranges_j = np.array([[0, 5], [5, ny]], dtype=np.int64)
    slices_j = np.array([2, 4], dtype=np.int64)
    redranges_i = np.array([[0, 6], [6, 14], [6, 14], [14, nx]], dtype=np.int64)
    return (ranges_i, slices_i, redranges_j, ranges_j, slices_j, redranges_i)


def test_block_sparse_ranges():
    nx, ny = 20, 30
    x, y, b, p = _data(nx, ny, "float64", seed=6)
    ranges = _ranges(nx, ny)
    dx, dy, db = da.from_array(x, chunks=4), da.from_array(y, chunks=(7, 3)), da.from_array(b, chunks=(7, 2))
    for name in ("Sum", "LogSumExp", "Min_ArgMin", "KMin_ArgKMin", "SumSoftMaxWeight", "ArgKMin"):
        got = _genred(pkd, name, 1, "float64")(dx, dy, db, p, ranges=ranges)
        _same(got, _genred(pkn, name, 1, "float64")(x, y, b, p, ranges=ranges), "float64")
    # pairs of chunks without interaction get no task: rows [0, 4) only meet columns [0, 5)
    got = _genred(pkd, "Sum", 1, "float64")(dx, dy, db, p, ranges=ranges)
    graph = dict(got.__dask_graph__())
    states = [k for k in graph if isinstance(k, tuple) and k[0].startswith("polykeops-state")]
    assert {k[2] for k in states if k[1] == 0} == {0}
    assert len(states) < 5 * 5
    # a reduction over i: the canonical call uses the other half of the ranges (i-size 30, j-size 20)
    transposed = _ranges(ny, nx)
    for name in ("Sum", "Min_ArgMin", "KMin_ArgKMin"):
        got = _genred(pkd, name, 0, "float64")(dx, dy, db, p, ranges=transposed)
        _same(got, _genred(pkn, name, 0, "float64")(x, y, b, p, ranges=transposed), "float64")


@pytest.mark.parametrize("reduction", ["sum", "logsumexp", "sumsoftmaxweight"])
def test_grad_equals_torch_autograd(reduction):
    torch = pytest.importorskip("torch")
    import polykeops.torch as pkt

    x, y, b, _ = _data(23, 31, "float64", seed=8)
    g = np.random.default_rng(1).standard_normal((23, 2 if reduction != "logsumexp" else 1))
    s = np.array([0.8])
    tx, ty, tb, ts = (torch.tensor(a, requires_grad=True) for a in (x, y, b, s))
    Kt = -pkt.Vi(tx).sqdist(pkt.Vj(ty)) * pkt.Pm(ts)
    dx, dy, db = da.from_array(x, chunks=5), da.from_array(y, chunks=(6, 3)), da.from_array(b, chunks=(6, 2))
    Kd = -pkd.Vi(dx).sqdist(pkd.Vj(dy)) * pkd.Pm(s)
    if reduction == "sum":
        out = (Kt.exp() * pkt.Vj(tb)).sum(dim=1)
        Kd = Kd.exp() * pkd.Vj(db)
        weight = None
    elif reduction == "logsumexp":
        out = Kt.logsumexp(dim=1)
        weight = None
    else:
        out = Kt.sumsoftmaxweight(pkt.Vj(tb), dim=1)
        weight = pkd.Vj(db)
    grads = torch.autograd.grad(out, (tx, ty, tb, ts), torch.tensor(g), allow_unused=True)
    for wrt, want in zip((dx, dy, db, s), grads):
        if want is None:
            continue
        got = pkd.grad(Kd, wrt, g, reduction, dim=1, weight=weight)
        assert isinstance(got, da.Array) and got.shape == wrt.shape
        np.testing.assert_allclose(got.compute(), want.numpy(), rtol=1e-10, atol=1e-12)
    gi = pkd.grad(Kd, dx, g, reduction, dim=1, weight=weight)
    assert gi.chunks[0] == dx.chunks[0]
    with pytest.raises(NotDifferentiableError):
        pkd.grad(Kd, dx, g, "argmin", dim=1)


def test_grad_of_a_reduction_over_i():
    torch = pytest.importorskip("torch")
    import polykeops.torch as pkt

    x, y, _, _ = _data(13, 19, "float64", seed=9)
    g = np.random.default_rng(2).standard_normal((19, 1))
    tx, ty = torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)
    want = torch.autograd.grad((-pkt.Vi(tx).sqdist(pkt.Vj(ty))).exp().sum(dim=0), (tx, ty), torch.tensor(g))
    dx, dy = da.from_array(x, chunks=4), da.from_array(y, chunks=(5, 3))
    Kd = (-pkd.Vi(dx).sqdist(pkd.Vj(dy))).exp()
    for wrt, w in zip((dx, dy), want):
        np.testing.assert_allclose(pkd.grad(Kd, wrt, g, "sum", dim=0).compute(), w.numpy(), rtol=1e-10)
    with pytest.raises(ShapeError, match="gradin"):
        pkd.grad(Kd, dy, g[:5], "sum", dim=0)


def test_solve_and_kernel_solve():
    x, _, _, _ = _data(40, 2, "float64", seed=10)
    b = np.random.default_rng(3).standard_normal((40, 2))
    dx, db = da.from_array(x, chunks=15), da.from_array(b, chunks=(15, 2))
    Kd = (-pkd.Vi(dx).sqdist(pkd.Vj(dx))).exp()
    Kn = (-pkn.Vi(x).sqdist(pkn.Vj(x))).exp()
    a = Kd.solve(db, alpha=0.5)
    assert isinstance(a, da.Array)
    np.testing.assert_allclose(a.compute(), Kn.solve(b, alpha=0.5), rtol=1e-7, atol=1e-8)
    dense = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1))
    np.testing.assert_allclose(0.5 * a.compute() + dense @ a.compute(), b, atol=1e-7)
    solver = pkd.KernelSolve("Exp(-SqDist(x, y)) * a", ["x = Vi(3)", "y = Vj(3)", "a = Vj(2)"], "a", axis=1,
                             dtype="float64")
    np.testing.assert_allclose(solver(dx, dx, db, alpha=0.5).compute(), a.compute(), rtol=1e-7, atol=1e-8)


def test_errors():
    x, y, _, _ = _data(10, 12, "float64")
    dx = da.from_array(x, chunks=5)
    unknown = dx[dx[:, 0] > 0]  # unknown chunk sizes
    with pytest.raises(ShapeError, match="compute_chunk_sizes|unknown|empty|nan"):
        pkd.Vi(unknown).sqdist(pkd.Vj(y)).sum(dim=1)
    with pytest.raises(Exception, match="dtype"):
        pkd.Vi(dx).sqdist(pkd.Vj(y.astype("float32"))).sum(dim=1)


def test_import_polykeops_imports_no_dask():
    import json
    import subprocess
    import sys

    code = "import sys, json, polykeops, polykeops.numpy\nprint(json.dumps(sorted(sys.modules)))"
    mods = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True, timeout=120).stdout)
    assert [m for m in mods if m.split(".")[0] in ("dask", "distributed")] == []
    assert "polykeops.dask" not in mods


class DLPackChunk:
    """A chunk of an array library that polykeops' backends do not know but that speaks DLPack,
    as CuPy does (this module plays the library: ``from_dlpack`` and ``empty`` below)."""

    def __init__(self, a):
        self.a = np.asarray(a)
        self.shape, self.dtype, self.ndim = self.a.shape, self.a.dtype, self.a.ndim

    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()

    def __getitem__(self, key):
        return DLPackChunk(self.a[key])


def from_dlpack(x):
    return DLPackChunk(np.from_dlpack(x))


def empty(shape, dtype=None):
    return DLPackChunk(np.empty(shape, dtype=dtype))


def _dlpack_array(a, rows):
    from dask.highlevelgraph import HighLevelGraph

    bounds = np.cumsum((0,) + rows)
    name = f"dlpack-chunks-{id(a)}"
    layer = {(name, k, 0): DLPackChunk(a[s:e]) for k, (s, e) in enumerate(zip(bounds[:-1], bounds[1:]))}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    return da.Array(graph, name, chunks=(rows, (a.shape[1],)), meta=empty((0, 0), a.dtype))


def test_chunks_of_a_dlpack_library_go_to_the_backends_without_copies():
    """CuPy chunks on GPU workers take this path: DLPack to torch tensors on their device, the
    backend that takes them, the outputs back in the chunks' library."""
    x, y, b, p = _data(17, 22, "float64", seed=11)
    dx, dy = _dlpack_array(x, (5, 5, 7)), _dlpack_array(y, (10, 12))
    got_d, got_i = pkd.Vi(dx).sqdist(pkd.Vj(dy) * pkd.Pm(p)).Kmin_argKmin(3, dim=1)
    assert isinstance(got_i._meta, DLPackChunk) and got_i.chunks[0] == (5, 5, 7)
    blocks = [d.compute() for d in got_i.to_delayed().ravel()]
    assert all(isinstance(blk, DLPackChunk) for blk in blocks)
    want_d, want_i = pkn.Vi(x).sqdist(pkn.Vj(y) * pkn.Pm(p)).Kmin_argKmin(3, dim=1)
    np.testing.assert_array_equal(np.concatenate([blk.a for blk in blocks]), want_i)
    vals = np.concatenate([d.compute().a for d in got_d.to_delayed().ravel()])
    np.testing.assert_allclose(vals, want_d, rtol=1e-12)


def test_complex_lazy_tensors():
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((13, 2)), rng.standard_normal((17, 2))
    z = rng.standard_normal((17, 1)) + 1j * rng.standard_normal((17, 1))
    dx, dy, dz = da.from_array(x, chunks=5), da.from_array(y, chunks=(6, 2)), da.from_array(z, chunks=(6, 1))
    got = ((-pkd.Vi(dx).sqdist(pkd.Vj(dy))).exp() * pkd.LazyTensor(dz[None, :, :])).sum(dim=1)
    want = ((-pkn.Vi(x).sqdist(pkn.Vj(y))).exp() * pkn.LazyTensor(z[None, :, :])).sum(dim=1)
    assert isinstance(got, da.Array) and got.dtype == np.complex128
    np.testing.assert_allclose(got.compute(), want, rtol=1e-13)
