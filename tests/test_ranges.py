"""Block-sparse reductions (the ``ranges`` argument) and the cluster helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import polykeops
from polykeops.numpy import LazyTensor as NLazyTensor
from polykeops.numpy import cluster as ncluster
from polykeops.torch import Genred, LazyTensor
from polykeops.torch import cluster as tcluster


def _mask(rx, ry, keep, m, n):
    mask = torch.zeros(m, n, dtype=torch.bool)
    for k in range(len(rx)):
        for l in range(len(ry)):
            if keep[k, l]:
                mask[rx[k, 0] : rx[k, 1], ry[l, 0] : ry[l, 1]] = True
    return mask


def _problem(m=300, n=257, d=2, seed=0, size=0.2, radius=0.35):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(m, d, dtype=torch.float64, generator=g)
    y = torch.rand(n, d, dtype=torch.float64, generator=g)
    x, lx = tcluster.sort_clusters(x, tcluster.grid_cluster(x, size))
    y, ly = tcluster.sort_clusters(y, tcluster.grid_cluster(y, size))
    rx, cx, _ = tcluster.cluster_ranges_centroids(x, lx)
    ry, cy, _ = tcluster.cluster_ranges_centroids(y, ly)
    keep = ((cx[:, None] - cy[None]) ** 2).sum(-1) < radius**2
    keep[0] = False  # the rows of the first cluster reduce over nothing
    ranges = tcluster.from_matrix(rx, ry, keep)
    return x, y, ranges, _mask(rx, ry, keep, m, n)


def test_cluster_helpers_values():
    x = torch.tensor([[0.05, 0.05], [0.95, 0.9], [0.1, 0.0], [0.9, 0.99]], dtype=torch.float64)
    lab = tcluster.grid_cluster(x, 0.5)
    assert lab[0] == lab[2] and lab[1] == lab[3] and lab[0] != lab[1]
    xs, ls = tcluster.sort_clusters(x, lab)
    assert torch.equal(ls, torch.sort(lab, stable=True).values)
    ranges = tcluster.cluster_ranges(ls)
    assert ranges.tolist() == [[0, 2], [2, 4]]
    cent = tcluster.cluster_centroids(xs, ls)
    assert torch.allclose(cent[ls[0]], x[[0, 2]].mean(0))
    keep = torch.tensor([[True, False], [True, True]])
    r = tcluster.from_matrix(ranges, ranges, keep)
    assert r[1].tolist() == [1, 3] and r[2].tolist() == [[0, 2], [0, 2], [2, 4]]
    assert r[4].tolist() == [2, 3] and r[5].tolist() == [[0, 2], [2, 4], [2, 4]]
    assert tcluster.swap_axes(r)[0] is r[3]


def test_numpy_cluster_matches_torch():
    x, y, ranges, _ = _problem()
    nx = x.numpy()
    lab_t = tcluster.grid_cluster(x, 0.2).numpy()
    # as pykeops 2.3: torch counts the voxels from the data's minimum, NumPy from 0
    lab_n = ncluster.grid_cluster(nx - nx.min(0, keepdims=True), 0.2)
    assert np.array_equal(lab_t, lab_n)
    rt, ct, wt = tcluster.cluster_ranges_centroids(x, torch.as_tensor(lab_n))
    rn, cn, wn = ncluster.cluster_ranges_centroids(nx, lab_n)
    assert np.array_equal(rt.numpy(), rn) and np.allclose(ct.numpy(), cn) and np.allclose(wt.numpy(), wn)


@pytest.mark.parametrize(
    "points",
    [
        np.random.default_rng(1).normal(size=(2000, 3)) * 3,  # negative and positive cells
        np.random.default_rng(2).uniform(-5, 5, size=(500, 1)),
        np.random.default_rng(3).uniform(size=(700, 5)),
        # spans too large for one int64 key per cell: the row-wise fallback
        np.array([[1e15, -1e15, 3.0], [-1e15, 1e15, 3.0], [1e15, -1e15, 3.2], [0.0, 0.0, 0.0]]),
        np.zeros((0, 2)),
    ],
)
def test_grid_cluster_labels_are_those_of_rowwise_unique(points):
    # regression: labels come from one packed int64 key per cell (fast) when it fits; they must
    # be exactly those of the row-wise unique (lexicographic order of the cells)
    size = 0.5
    _, expected = np.unique(np.floor(points / size).astype(np.int64), axis=0, return_inverse=True)
    expected = expected.reshape(-1)
    lab_n = ncluster.grid_cluster(points, size)
    lab_t = tcluster.grid_cluster(torch.as_tensor(points), size)
    assert lab_n.dtype == np.int64 and lab_t.dtype == torch.int64
    # torch counts the voxels from the data's minimum (as pykeops 2.3)
    shifted = points - points.min(0, keepdims=True) if len(points) else points
    _, expected_t = np.unique(np.floor(shifted / size).astype(np.int64), axis=0, return_inverse=True)
    assert np.array_equal(lab_n, expected) and np.array_equal(lab_t.numpy(), expected_t.reshape(-1))


@pytest.mark.parametrize("reduction", ["sum", "sum0", "lse", "min", "argmin", "kmin", "argkmin"])
def test_reductions_with_ranges(reduction):
    x, y, ranges, mask = _problem()
    d = ((x[:, None] - y[None]) ** 2).sum(-1)
    D = ((LazyTensor(x[:, None]) - LazyTensor(y[None])) ** 2).sum(-1)
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    if reduction == "sum":
        res, ref = (-D).exp().sum(1, ranges=ranges), (torch.exp(-d) * mask).sum(1, keepdim=True)
    elif reduction == "sum0":
        res, ref = (-D).exp().sum(0, ranges=ranges), (torch.exp(-d) * mask).sum(0)[:, None]
    elif reduction == "lse":
        res = (-D).logsumexp(1, ranges=ranges)
        ref = torch.logsumexp(torch.where(mask, -d, -inf), 1, keepdim=True)
    elif reduction == "min":
        res, ref = D.min(1, ranges=ranges), torch.where(mask, d, inf).min(1, keepdim=True).values
    elif reduction == "argmin":
        res = D.argmin(1, ranges=ranges)
        ref = torch.where(mask, d, inf).argmin(1, keepdim=True)
        ref = torch.where(mask.any(1, keepdim=True), ref, -1)
    elif reduction == "kmin":
        res, ref = D.Kmin(3, 1, ranges=ranges), torch.where(mask, d, inf).topk(3, 1, largest=False).values
    else:
        res = D.argKmin(3, 1, ranges=ranges)
        vals, idx = torch.where(mask, d, inf).topk(3, 1, largest=False)
        ref = torch.where(torch.isinf(vals), -1, idx)
    assert not mask.any(1).all()  # some rows are empty: they hold the reduction of nothing
    assert torch.equal(res, ref) if res.dtype == torch.int64 else torch.allclose(res, ref, atol=1e-12)


def test_ranges_gradients_first_and_second_order():
    x, y, ranges, mask = _problem(m=120, n=90)
    x.requires_grad_()
    y.requires_grad_()
    K = (-((LazyTensor(x[:, None]) - LazyTensor(y[None])) ** 2).sum(-1)).exp()
    a = K.sum(1, ranges=ranges)
    ad = (torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) * mask).sum(1, keepdim=True)
    g = torch.autograd.grad((a**2).sum(), [x, y], create_graph=True)
    gd = torch.autograd.grad((ad**2).sum(), [x, y], create_graph=True)
    for u, v in zip(g, gd):
        assert torch.allclose(u, v, atol=1e-10)
    h = torch.autograd.grad(g[0].sum() + g[1].sum(), [x])[0]
    hd = torch.autograd.grad(gd[0].sum() + gd[1].sum(), [x])[0]
    assert torch.allclose(h, hd, atol=1e-9)


def test_ranges_with_batch_dimensions_differ_per_batch():
    """pykeops refuses ranges with batch dimensions; here each batch has its own blocks."""
    torch.manual_seed(0)
    B, M, N = 2, 40, 30
    x = torch.randn(B, M, 1, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 1, N, 2, dtype=torch.float64)
    rx = torch.tensor([[[0, 20], [20, 40]], [[0, 10], [10, 40]]])
    ry = torch.tensor([[[0, 15], [15, 30]], [[0, 5], [5, 30]]])
    keep = torch.tensor([[[True, False], [False, True]], [[False, True], [True, True]]])
    per = [tcluster.from_matrix(rx[b], ry[b], keep[b]) for b in range(B)]
    # same number of clusters per batch: the block lists are padded with empty intervals
    width = max(len(p[2]) for p in per)
    width_t = max(len(p[5]) for p in per)

    def pad(a, n):
        return torch.cat([a, torch.zeros(n - len(a), 2, dtype=torch.int64)])

    ranges = (
        rx, torch.stack([p[1] for p in per]), torch.stack([pad(p[2], width) for p in per]),
        ry, torch.stack([p[4] for p in per]), torch.stack([pad(p[5], width_t) for p in per]),
    )
    K = (-((LazyTensor(x) - LazyTensor(y)) ** 2).sum(-1)).exp()
    a = K.sum(2, ranges=ranges)
    d = ((x - y) ** 2).sum(-1)
    mask = torch.stack([_mask(rx[b], ry[b], keep[b], M, N) for b in range(B)])
    ad = (torch.exp(-d) * mask).sum(2, keepdim=True)
    assert torch.allclose(a, ad, atol=1e-12)
    g = torch.autograd.grad(a.sum(), [x])[0]
    gd = torch.autograd.grad(ad.sum(), [x])[0]
    assert torch.allclose(g, gd, atol=1e-12)


def test_genred_and_numpy_ranges():
    x, y, ranges, mask = _problem(m=64, n=50)
    ref = (torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) * mask).sum(1, keepdim=True)
    gen = Genred("Exp(-SqDist(x,y))", ["x=Vi(2)", "y=Vj(2)"], reduction_op="Sum", axis=1)
    assert torch.allclose(gen(x, y, ranges=ranges), ref, atol=1e-12)
    nranges = tuple(r.numpy() for r in ranges)
    xn, yn = x.numpy(), y.numpy()
    res = (-((NLazyTensor(xn[:, None]) - NLazyTensor(yn[None])) ** 2).sum(-1)).exp().sum(1, ranges=nranges)
    assert np.allclose(res, ref.numpy(), atol=1e-12)


def test_bad_ranges_raise_clear_errors():
    x, y, ranges, _ = _problem(m=20, n=20)
    K = (-((LazyTensor(x[:, None]) - LazyTensor(y[None])) ** 2).sum(-1)).exp()
    with pytest.raises(polykeops.ShapeError, match="6-tuple"):
        K.sum(1, ranges=ranges[:3])
    bad = list(ranges)
    bad[0] = ranges[0] * 100
    with pytest.raises(polykeops.ShapeError, match="ranges_i"):
        K.sum(1, ranges=tuple(bad))
    bad = list(ranges)
    bad[2] = ranges[2].double()
    with pytest.raises(polykeops.DTypeError, match="redranges_j"):
        K.sum(1, ranges=tuple(bad))


def _halves(ri, si, rj):
    """A 6-tuple whose two halves are the same (i, j) structure, square problem."""
    t = [torch.tensor(a, dtype=torch.int64) for a in (ri, si, rj)]
    return (*t, *t)


@pytest.mark.parametrize(
    "structure, fragment",
    [
        (([[0, 5], [4, 9]], [1, 2], [[0, 3], [3, 9]]), r"ranges_i\[0\] = \[0, 5\) and .* overlap"),
        (([[0, 5], [5, 9]], [1, 3], [[0, 4], [2, 6], [5, 7]]), r"ranges_i\[1\] reduces over overlapping"),
        (([[0, 5], [9, 5]], [1, 2], [[0, 3], [3, 9]]), r"ranges_i\[1\] = \[9, 5\) ends before it starts"),
        (([[0, 5], [5, 9]], [2, 1], [[0, 3], [3, 9]]), "slices_i must be non-decreasing"),
    ],
)
def test_overlapping_or_backward_ranges_are_refused(structure, fragment):
    """Overlaps would count pairs twice (or race between threads): a clear error instead."""
    x = torch.randn(9, 2, dtype=torch.float64)
    K = LazyTensor(x[:, None]).sqdist(LazyTensor(x[None]))
    with pytest.raises(polykeops.ShapeError, match=fragment):
        K.sum(1, ranges=_halves(*structure))
    batched = tuple(torch.stack([r, r]) for r in _halves(*structure))
    xb = torch.randn(2, 9, 2, dtype=torch.float64)
    Kb = LazyTensor(xb[:, :, None]).sqdist(LazyTensor(xb[:, None]))
    with pytest.raises(polykeops.ShapeError, match=r"batch element \(0,\)"):
        Kb.sum(2, ranges=batched)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_no_block_at_all_gives_the_empty_reduction(backend):
    """Ranges that keep no block (zero i-ranges): every row holds the reduction of nothing."""
    x, y = torch.randn(31, 2, dtype=torch.float64), torch.randn(257, 2, dtype=torch.float64)
    empty = torch.zeros(0, 2, dtype=torch.int64)
    none = torch.zeros(0, dtype=torch.int64)
    ranges = (empty, none, empty, empty, none, empty)
    d = LazyTensor(x[:, None]).sqdist(LazyTensor(y[None]))
    assert torch.equal(d.sum(1, ranges=ranges, backend=backend), torch.zeros(31, 1, dtype=torch.float64))
    lse = (-d).logsumexp(1, ranges=ranges, backend=backend)
    assert torch.equal(lse, torch.full((31, 1), -torch.inf, dtype=torch.float64))
    idx = d.argmin(1, ranges=ranges, backend=backend)
    assert torch.equal(idx, torch.full((31, 1), -1, dtype=torch.int64))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("reduction", ["min", "Kmin"])
def test_selection_gradient_skips_rows_that_selected_nothing(backend, reduction):
    """Rows with no kept pair (index -1), or fewer than K: gradients only from the selected pairs."""
    x, y, ranges, mask = _problem()
    x = x.clone().requires_grad_(True)
    d = LazyTensor(x[:, None]).sqdist(LazyTensor(y[None]))
    dense = ((x[:, None] - y[None]) ** 2).sum(-1).masked_fill(~mask, torch.inf)
    if reduction == "min":
        got, expected = d.min(1, ranges=ranges, backend=backend), dense.min(1, keepdim=True).values
    else:
        got = d.Kmin(5, 1, ranges=ranges, backend=backend)
        expected = dense.topk(5, 1, largest=False).values
    kept = torch.isfinite(expected)
    assert (~kept).any()  # some rows select nothing (or fewer than K)
    torch.testing.assert_close(got[kept], expected[kept])
    (gx,) = torch.autograd.grad(got[kept].sum(), [x])
    (ex,) = torch.autograd.grad(expected[kept].sum(), [x])
    torch.testing.assert_close(gx, ex)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_second_order_and_forward_mode_through_ranges(backend):
    """create_graph backward (second order) and torch.func.jvp reuse the ranges, vs masked dense."""
    x, y, ranges, mask = _problem()
    x = x.clone().requires_grad_(True)
    keep = mask.any(1)  # rows that reduce over nothing hold -inf: left out of the loss

    def lazy(x):
        d = LazyTensor(x[:, None]).sqdist(LazyTensor(y[None]))
        return (-d).logsumexp(1, ranges=ranges, backend=backend)[keep]

    def dense(x):
        d = ((x[:, None] - y[None]) ** 2).sum(-1)
        return torch.logsumexp((-d).masked_fill(~mask, -torch.inf), 1, keepdim=True)[keep]

    grads = []
    for fn in (lazy, dense):
        r = fn(x)
        (g,) = torch.autograd.grad((r * torch.sin(r)).sum(), [x], create_graph=True)
        (h,) = torch.autograd.grad((g**2).sum(), [x])
        grads.append((g.detach(), h))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    v = torch.randn_like(x)
    _, t = torch.func.jvp(lazy, (x.detach(),), (v,))
    _, td = torch.func.jvp(dense, (x.detach(),), (v,))
    torch.testing.assert_close(t, td)
