"""Block-sparse reductions (``ranges``) on the CUDA backend.

* the host block map (:mod:`polykeops.backends.cuda.ranges`) against the definition of
  the ranges, pair by pair;
* NVRTC compiles the ranged kernels of every reduction and gradient for sm_80 and sm_90;
* the emulator runs them against the reference backend: reductions, sizes across tile and
  block boundaries, empty ranges, per-batch ranges, gradient reductions (transposed ranges);
* ``CudaBackend.evaluate`` and the torch front end (autograd included) on a fake GPU;
* on a GPU (tests marked by ``needs_gpu``): the CUDA backend against the reference backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_cuda_codegen import (
    _REF,
    ARCHS,
    _assert_no_spill,
    _close,
    _compile,
    _data,
    all_reduction_specs,
    needs_cxx,
    needs_gpu,
    needs_nvrtc,
    reduction_spec,
    with_gradients,
)

from polykeops.backends.cuda import emulator
from polykeops.backends.cuda.ranges import block_map, empty_outputs
from polykeops.errors import ShapeError
from polykeops.formula.reduction_grads import sum_like_gradient
from polykeops.numpy import cluster as ncluster

# ---------------------------------------------------------------------------
# ranges
# ---------------------------------------------------------------------------


def random_ranges(nx, ny, seed, clusters=(4, 5), density=0.5):
    """pykeops' 6-tuple for random clusters of [0, nx) x [0, ny): some rows and columns in no
    cluster, an i-cluster that meets nothing, an empty cluster."""
    rng = np.random.default_rng(seed)

    def cut(n, k):
        edges = np.sort(rng.choice(np.arange(1, n), size=min(k - 1, max(n - 1, 0)), replace=False))
        edges = np.concatenate([[0], edges, [n]])
        r = np.stack([edges[:-1], edges[1:]], axis=1)
        if len(r) > 2:
            r = np.delete(r, rng.integers(len(r)), axis=0)  # rows of that cluster are in no range
        return np.concatenate([r, [[r[-1, 1], r[-1, 1]]]])  # plus an empty cluster

    rx, ry = cut(nx, clusters[0]), cut(ny, clusters[1])
    keep = rng.random((len(rx), len(ry))) < density
    keep[0] = False  # the first i-cluster reduces over nothing
    keep[-1, :] = True
    if len(rx) > 1:
        keep[1, 0] = True
    return ncluster.from_matrix(rx, ry, keep)


def ranges_mask(ranges3, nx, ny):
    """The (nx, ny) boolean mask of the pairs (i, j) that the 3-tuple reduces over."""
    rx, sx, ry = (np.asarray(r) for r in ranges3)
    mask = np.zeros((nx, ny), bool)
    prev = 0
    for k in range(len(rx)):
        for s in range(prev, int(sx[k])):
            mask[rx[k, 0] : rx[k, 1], ry[s, 0] : ry[s, 1]] = True
        prev = int(sx[k])
    return mask


def block_map_mask(bmap, nbatch, nx, ny):
    """The same mask, per batch entry, from a block map (checks the block invariants too)."""
    mask = np.zeros((nbatch, nx, ny), bool)
    for b, i0, i1, v0, v1 in bmap.items:
        assert 0 <= i0 < i1 <= nx and i1 - i0 <= bmap.block, (i0, i1)
        assert bmap.nbatch == (nbatch if b < 0 else 1)  # -1: every batch entry (over gridDim.z)
        for j0, j1 in bmap.ivals[v0:v1]:
            mask[slice(None) if b < 0 else b, i0:i1, j0:j1] = True
    return mask


def per_batch_ranges(shape, nx, ny, seed):
    """Batched 6-tuples (one per entry of ``shape``, padded with empty ranges to common
    lengths) and the list of the unpadded ones."""
    sets = [random_ranges(nx, ny, seed + n) for n in range(int(np.prod(shape)))]
    out = []
    for k in range(6):
        n = max(len(s[k]) for s in sets)
        if k in (1, 4):  # slices: repeat the last end (empty slices)
            rows = [
                np.concatenate([s[k], np.full(n - len(s[k]), s[k][-1] if len(s[k]) else 0)]) for s in sets
            ]
        else:
            rows = [np.concatenate([s[k], np.zeros((n - len(s[k]), 2), np.int64)]) for s in sets]
        a = np.stack(rows).astype(np.int64)
        out.append(a.reshape(tuple(shape) + a.shape[1:]))
    return tuple(out), sets


def test_block_map_covers_exactly_the_ranges():
    for nx, ny, seed in [(1, 1, 0), (2, 3, 1), (31, 257, 2), (257, 31, 3), (1000, 900, 4)]:
        r = random_ranges(nx, ny, seed)[:3]
        for max_block in (32, 256):
            bmap = block_map(r, (), nx, ny, max_block)
            assert bmap.block <= max_block and bmap.block % 32 == 0
            np.testing.assert_array_equal(block_map_mask(bmap, 1, nx, ny)[0], ranges_mask(r, nx, ny))
        # no item for an i-range that meets no column (its rows keep the empty values)
        items_rows = {(int(i0), int(i1)) for _, i0, i1, _, _ in block_map(r, (), nx, ny, 1024).items}
        assert all(i0 < r[0][0, 0] or i0 >= r[0][0, 1] for i0, _ in items_rows)


def test_block_map_batches():
    nx, ny = 40, 50
    r = random_ranges(nx, ny, 7)[:3]
    bmap = block_map(r, (2, 3), nx, ny, 32)  # the same ranges for every batch entry
    mask = block_map_mask(bmap, 6, nx, ny)
    for b in range(6):
        np.testing.assert_array_equal(mask[b], ranges_mask(r, nx, ny))
    batched, sets = per_batch_ranges((2, 1), nx, ny, 11)  # broadcast over the second batch dim
    mask = block_map_mask(block_map(batched[:3], (2, 3), nx, ny, 64), 6, nx, ny)
    for b in range(6):
        np.testing.assert_array_equal(mask[b], ranges_mask(sets[b // 3][:3], nx, ny))


def test_block_map_block_size_follows_the_longest_range():
    r = (np.array([[0, 10], [10, 40]]), np.array([1, 2]), np.array([[0, 5], [5, 9]]))
    assert block_map(r, (), 40, 9, 256).block == 32
    r = (np.array([[0, 100]]), np.array([1]), np.array([[0, 5]]))
    bmap = block_map(r, (), 100, 9, 256)
    assert bmap.block == 128 and bmap.nitems == 1
    bmap = block_map(r, (), 100, 9, 64)
    assert bmap.block == 64 and bmap.items[:, 1:3].tolist() == [[0, 64], [64, 100]]


def test_block_map_rejects_bad_shapes():
    r = random_ranges(10, 10, 0)[:3]
    with pytest.raises(ShapeError, match="batch dimension"):
        block_map(tuple(a[None, None] for a in r), (2,), 10, 10, 32)
    with pytest.raises(ShapeError, match="slices_x has shape"):
        block_map((r[0][None], r[1], r[2][None]), (1,), 10, 10, 32)
    with pytest.raises(ShapeError, match="broadcasting"):
        block_map(tuple(np.stack([a] * 3) for a in r), (2,), 10, 10, 32)
    with pytest.raises(ShapeError, match="ranges_x, slices_x, redranges_y"):
        block_map(random_ranges(10, 10, 0), (), 10, 10, 32)


# ---------------------------------------------------------------------------
# NVRTC
# ---------------------------------------------------------------------------


@needs_nvrtc
@pytest.mark.parametrize("arch, nb", list(zip(ARCHS, (0, 1))))
def test_ranged_kernels_of_every_reduction_and_gradient_compile(arch, nb):
    _built, sources, res = _compile(with_gradients(all_reduction_specs()), arch, ranges=True, n_batch_dims=nb)
    for ks in sources.values():
        assert ks.ranges and [n for _, n in ks.main_params[-2:]] == ["items", "ivals"]
    _assert_no_spill(sources, res)
    for dtype in ("float16", "float64"):
        _compile(all_reduction_specs(dtype)[:4], arch, ranges=True, idx64=True)


# ---------------------------------------------------------------------------
# the emulator against the reference backend
# ---------------------------------------------------------------------------


def _ref(spec, args, nx, ny, batch, ranges3):
    with np.errstate(all="ignore"):
        return _REF.evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch, ranges=ranges3)


def _run_cases(cases, tile_j=16, block=32):
    kss = [
        emulator.kernel_source(c["spec"], n_batch_dims=len(c.get("batch", ())), tile_j=tile_j, ranges=True)
        for c in cases
    ]
    emulator.build(*{ks.digest: ks for ks in kss}.values())
    for c in cases:
        spec, nx, ny, batch, r = c["spec"], c["nx"], c["ny"], c.get("batch", ()), c["ranges"]
        args = c.get("args") or _data(spec, nx, ny, batch, c.get("per_var_batch"), seed=c.get("seed", 0))
        out = emulator.evaluate(
            spec, args, nx=nx, ny=ny, batch_shape=batch, ranges=r, tile_j=tile_j, block=block
        )
        if c.get("all_empty"):  # every row holds the reduction of nothing
            exp = [np.broadcast_to(np.array(f, o.dtype), o.shape) for f, o in zip(empty_outputs(spec), out)]
        else:
            exp = _ref(spec, args, nx, ny, batch, r)
        _close(out, exp, spec.dtype, f"{spec} {nx}x{ny} {batch}")


_REDUCTIONS = (
    "Sum",
    "LogSumExp",
    "LogSumExpWeight",
    "Max_SumShiftExp",
    "SumSoftMaxWeight",
    "Min",
    "ArgMin",
    "Min_ArgMin",
    "Max_ArgMax",
    "KMin",
    "ArgKMin",
    "KMin_ArgKMin",
)


@needs_cxx
def test_emulated_ranges_match_reference():
    """Many reductions; sizes 1, 2, 31 and 257 (tiles of 16 columns and blocks of 32 rows)."""
    cases = []
    for n, name in enumerate(_REDUCTIONS):
        spec = reduction_spec(name)
        for nx, ny in [(1, 5), (2, 2), (31, 257), (257, 31)]:
            if spec.k is not None and spec.k > ny:
                continue
            cases.append(dict(spec=spec, nx=nx, ny=ny, ranges=random_ranges(nx, ny, n)[:3], seed=n))
    for dtype, name in (("float16", "Sum"), ("float64", "LogSumExp"), ("float64", "ArgKMin")):
        cases.append(
            dict(spec=reduction_spec(name, dtype), nx=70, ny=90, ranges=random_ranges(70, 90, 4)[:3])
        )
    cases.append(
        dict(
            spec=reduction_spec("Sum", sum_scheme="kahan_scheme"),
            nx=70,
            ny=90,
            ranges=random_ranges(70, 90, 3)[:3],
        )
    )
    _run_cases(cases)


@needs_cxx
def test_emulated_ranges_large_and_default_tiles():
    """~1000 x 1000 with the default tile and block sizes (several tiles per interval)."""
    cases = [
        dict(spec=reduction_spec(name), nx=1000, ny=1100, ranges=random_ranges(1000, 1100, 5, (6, 3)))
        for name in ("Sum", "ArgKMin")
    ]
    for c in cases:
        c["ranges"] = c["ranges"][:3]
    kss = [emulator.kernel_source(c["spec"], ranges=True) for c in cases]
    emulator.build(*kss)
    for c in cases:
        spec = c["spec"]
        args = _data(spec, 1000, 1100)
        out = emulator.evaluate(spec, args, nx=1000, ny=1100, batch_shape=(), ranges=c["ranges"])
        _close(out, _ref(spec, args, 1000, 1100, (), c["ranges"]), spec.dtype, str(spec))


@needs_cxx
def test_emulated_empty_ranges():
    """No i-range at all, ranges without any column, empty intervals, nothing to reduce."""
    spec_sum, spec_am, spec_lse = (reduction_spec(r) for r in ("Sum", "Min_ArgMin", "LogSumExp"))
    z2 = np.zeros((0, 2), np.int64)
    no_range = (z2, np.zeros(0, np.int64), z2)
    no_column = (np.array([[0, 5], [5, 9]]), np.array([1, 3]), np.array([[4, 4], [7, 7], [9, 3]]))
    partly = (np.array([[0, 5], [5, 9]]), np.array([2, 3]), np.array([[4, 4], [2, 7], [0, 0]]))
    cases = []
    for spec in (spec_sum, spec_am, spec_lse):
        cases += [dict(spec=spec, nx=9, ny=11, ranges=r) for r in (no_column, partly)]
        cases.append(dict(spec=spec, nx=9, ny=11, ranges=no_range, all_empty=True))
        cases.append(
            dict(spec=spec, nx=9, ny=0, ranges=(np.array([[0, 9]]), np.array([1]), np.array([[0, 0]])))
        )
    _run_cases(cases)
    out = emulator.evaluate(
        spec_am, _data(spec_am, 9, 11), nx=9, ny=11, batch_shape=(), ranges=no_column, tile_j=16, block=32
    )
    assert np.all(out[0] == np.inf) and np.all(out[1] == -1)


@needs_cxx
def test_emulated_per_batch_ranges():
    nx, ny = 37, 45
    batched = per_batch_ranges((2, 3), nx, ny, 20)[0][:3]
    broadcast = per_batch_ranges((2, 1), nx, ny, 30)[0][:3]
    shared = random_ranges(nx, ny, 40)[:3]
    cases = []
    for name in ("Sum", "LogSumExp", "ArgKMin"):
        spec = reduction_spec(name)
        for r in (batched, broadcast, shared):
            cases.append(
                dict(
                    spec=spec,
                    nx=nx,
                    ny=ny,
                    batch=(2, 3),
                    ranges=r,
                    per_var_batch=[(2, 1), (1, 3), (2, 3), (1, 1)],
                )
            )
    _run_cases(cases)


@needs_cxx
def test_emulated_gradient_reductions_with_transposed_ranges():
    """The reductions autograd runs for gradients, with the ranges it gives them: the 6-tuple
    as is for gradients reduced over j, swapped for those reduced over i."""
    nx, ny = 45, 38
    r6 = random_ranges(nx, ny, 50)
    cases = []
    for name in ("Sum", "LogSumExp", "SumSoftMaxWeight"):
        spec = reduction_spec(name)
        for p in range(len(spec.variables)):
            g = sum_like_gradient(spec, p).spec
            r = r6[:3] if g.axis == 1 else r6[3:]
            gx, gy = (nx, ny) if g.axis == 1 else (ny, nx)
            cases.append(dict(spec=g.canonical(), nx=gx, ny=gy, ranges=r))
    assert any(c["nx"] == ny for c in cases)  # some gradients are reduced over i
    _run_cases(cases)


# ---------------------------------------------------------------------------
# the backend and the front end on a fake GPU
# ---------------------------------------------------------------------------


@needs_cxx
@needs_nvrtc
def test_backend_evaluate_with_ranges_on_a_fake_gpu(monkeypatch, tmp_path):
    import torch
    from fake_gpu import fake_backend, install

    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(tmp_path))
    loads = install(monkeypatch)
    backend = fake_backend(monkeypatch)
    assert backend.capabilities.ranges
    nx, ny = 300, 70
    for spec, batch in [(reduction_spec("Sum"), ()), (reduction_spec("ArgKMin"), (2,))]:
        r = random_ranges(nx, ny, 60)[:3]
        args = [torch.from_numpy(a) for a in _data(spec, nx, ny, batch)]
        for ranges in (r, tuple(torch.from_numpy(a) for a in r)):  # NumPy or torch ranges
            out = backend.evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch, ranges=ranges)
            exp = _ref(spec, [a.numpy() for a in args], nx, ny, batch, r)
            _close([o.numpy() for o in out], exp, spec.dtype, str(spec))
        dense = backend.evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch)  # other kernels
        _close(
            [o.numpy() for o in dense],
            _REF.evaluate(spec, [a.numpy() for a in args], nx=nx, ny=ny, batch_shape=batch),
            spec.dtype,
            str(spec),
        )
    assert len(loads) == 4  # ranged and dense modules, once each


@needs_cxx
@needs_nvrtc
def test_torch_autograd_with_ranges_runs_every_reduction_on_the_backend(monkeypatch, tmp_path):
    """LazyTensor reductions with ranges and backend="cuda": forward and backward (gradients
    reduced over i get the transposed ranges) match the reference backend."""
    import torch
    from fake_gpu import fake_backend, install

    import polykeops.backends as registry
    from polykeops.torch import LazyTensor

    monkeypatch.setenv("POLYKEOPS_CACHE_DIR", str(tmp_path))
    install(monkeypatch)
    backend = fake_backend(monkeypatch, registry.instance("cuda"))
    calls = []
    real = type(backend).evaluate

    def counting(self, spec, args, **kw):
        calls.append(kw.get("ranges") is not None)
        return real(self, spec, args, **kw)

    monkeypatch.setattr(type(backend), "evaluate", counting)
    nx, ny = 70, 45
    r = tuple(torch.from_numpy(a) for a in random_ranges(nx, ny, 70))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(nx, 3, generator=g, dtype=torch.float64)
    y0 = torch.randn(ny, 3, generator=g, dtype=torch.float64)
    b0 = torch.randn(ny, 2, generator=g, dtype=torch.float64)
    results = {}
    for name in ("cuda", "reference"):
        x, y, b = (t.clone().requires_grad_() for t in (x0, y0, b0))
        k = (-((LazyTensor(x[:, None]) - LazyTensor(y[None])) ** 2).sum(-1)).exp() * LazyTensor(b[None])
        out = k.sum(1, ranges=r, backend=name)
        lse = (-((LazyTensor(x[:, None]) - LazyTensor(y[None])) ** 2).sum(-1)).logsumexp(
            0, ranges=r, backend=name
        )
        loss = (out**2).sum() + lse.sum()
        results[name] = (out, lse, *torch.autograd.grad(loss, [x, y, b]))
    assert calls and all(calls) and len(calls) >= 6  # forward x2 and the gradient reductions
    for u, v in zip(results["cuda"], results["reference"]):
        assert torch.allclose(u, v, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------
# on a GPU
# ---------------------------------------------------------------------------


def _gpu_ranges(nx, ny, seed, batch=None):
    import torch

    r = random_ranges(nx, ny, seed) if batch is None else per_batch_ranges(batch, nx, ny, seed)[0]
    return tuple(torch.from_numpy(a).cuda() for a in r)


@needs_gpu
@pytest.mark.parametrize("name", ["Sum", "LogSumExp", "ArgMin", "KMin_ArgKMin", "SumSoftMaxWeight"])
@pytest.mark.parametrize("nx, ny", [(1, 5), (31, 257), (1000, 1100)])
def test_gpu_ranges_match_reference(name, nx, ny):
    import torch

    from polykeops.backends.cuda import CudaBackend

    spec = reduction_spec(name, "float64")
    args = [torch.from_numpy(a).cuda() for a in _data(spec, nx, ny)]
    r = _gpu_ranges(nx, ny, 1)[:3]
    out = CudaBackend().evaluate(spec, args, nx=nx, ny=ny, batch_shape=(), ranges=r)
    exp = _ref(spec, [a.cpu().numpy() for a in args], nx, ny, (), tuple(a.cpu().numpy() for a in r))
    _close([o.cpu().numpy() for o in out], exp, "float64", f"{spec} {nx}x{ny}")


@needs_gpu
def test_gpu_per_batch_ranges_and_gradients_match_reference():
    import torch

    from polykeops.torch import LazyTensor

    nx, ny = 300, 280
    r = _gpu_ranges(nx, ny, 3, batch=(2,))
    torch.manual_seed(0)
    x0 = torch.randn(2, nx, 1, 3, dtype=torch.float64, device="cuda")
    y0 = torch.randn(2, 1, ny, 3, dtype=torch.float64, device="cuda")
    res = {}
    for name in ("cuda", "reference"):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        out = (-((LazyTensor(x) - LazyTensor(y)) ** 2).sum(-1)).exp().sum(2, ranges=r, backend=name)
        res[name] = (out, *torch.autograd.grad((out**2).sum(), [x, y]))
    for u, v in zip(res["cuda"], res["reference"]):
        assert torch.allclose(u, v, rtol=1e-10, atol=1e-10)
