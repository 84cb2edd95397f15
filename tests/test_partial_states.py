"""Partial states: a reduction cut along j, each piece reduced to its state by a backend, the
states combined with the reduction's own rules and finalized, equals the reduction of the whole
(and a dense NumPy computation written here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polykeops.backends import BackendRequest, ReductionCall, dispatch, partial_states
from polykeops.backends.contract import Backend, Capabilities
from polykeops.backends.dispatch import dispatch_states
from polykeops.backends.split_j import combine_tree, evaluate_split, piece_states
from polykeops.errors import BackendError, ShapeError
from polykeops.formula.parser import parse_reduction_formula
from polykeops.formula.spec import ReductionSpec

FORMULAS = {  # reduction -> (formula, weight or None)
    "Sum": ("Exp(-SqDist(x, y)) * b", None),
    "LogSumExp": ("-SqDist(x, y)", None),
    "LogSumExpWeight": ("-SqDist(x, y)", "b"),
    "Max_SumShiftExp": ("-SqDist(x, y)", None),
    "SumSoftMaxWeight": ("-SqDist(x, y)", "b"),
    "Min": ("SqDist(x, y) * b", None),
    "ArgMax": ("SqDist(x, y) - b", None),
    "Min_ArgMin": ("x - y", None),
    "Max_ArgMax": ("x * y", None),
    "KMin": ("SqDist(x, y) + b", None),
    "ArgKMin": ("x - y", None),
    "KMin_ArgKMin": ("SqDist(x, y)", None),
}
ALIASES = ["x = Vi(3)", "y = Vj(3)", "b = Vj(3)"]


def _spec(reduction, dtype="float64", k=None, axis=1, **options):
    text, weight = FORMULAS[reduction]
    f, vs = parse_reduction_formula(text, ALIASES)
    formulas = (f,) if weight is None else (f, parse_reduction_formula(weight, ALIASES)[0])
    return ReductionSpec(reduction, formulas, vs, axis=axis, dtype=dtype, k=k, **options)


def _data(nx, ny, dtype, kind, batch=(), seed=0, specials=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(batch + (nx, 3))
    y = rng.standard_normal(batch + (ny, 3))
    b = rng.standard_normal(batch + (ny, 3))
    if specials and ny > 3:
        y[..., ny - 1, 0] = np.nan  # a NaN in the last piece
        b[..., 1, :] = np.inf
        y[..., ny // 2, :] = y[..., 0, :]  # ties across pieces
    arrays = [a.astype(dtype) for a in (x, y, b)]
    if kind == "torch":
        arrays = [torch.from_numpy(a) for a in arrays]
    return arrays


def _call(spec, nx, ny, backend, kind, batch=(), ranges=None):
    return ReductionCall(spec, nx, ny, batch_shape=batch, ranges=ranges,
                         request=BackendRequest.parse(backend), array_kind=kind)


def _same(got, want, dtype):
    for g, w in zip(got, want):
        g = np.asarray(g)
        w = np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype
        if g.dtype == np.int64:
            np.testing.assert_array_equal(g, w)
        else:
            tol = 1e-12 if dtype == "float64" else 2e-5
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


def _bounds(ny, sizes):
    bounds, at = [0], 0
    for s in sizes:
        at = min(ny, at + s)
        bounds.append(at)
    if bounds[-1] != ny:
        bounds.append(ny)
    return bounds


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("reduction", sorted(FORMULAS))
def test_split_equals_whole(backend, kind, reduction):
    k = 4 if "KMin" in reduction else None
    for nx, ny, sizes in [(1, 1, [1]), (31, 257, [100, 1, 2, 3, 60]), (5, 12, [1] * 12), (7, 9, [3, 3])]:
        if k is not None and k > ny:
            continue
        for dtype in ("float32", "float64"):
            spec = _spec(reduction, dtype, k=k)
            args = _data(nx, ny, dtype, kind, specials=True)
            call = _call(spec, nx, ny, backend, kind)
            whole = dispatch(call, args)
            split = evaluate_split(call, args, _bounds(ny, sizes))
            _same(split, whole, dtype)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_batch_dimensions_and_pieces_shorter_than_k(backend):
    batch = (2, 3)
    spec = _spec("KMin_ArgKMin", "float64", k=5)
    args = _data(6, 11, "float64", "numpy", batch=batch, seed=3)
    args[2] = args[2][:1]  # a broadcast batch dimension
    call = _call(spec, 6, 11, backend, "numpy", batch=batch)
    _same(evaluate_split(call, args, [0, 2, 3, 7, 11]), dispatch(call, args), "float64")


def test_dense_reference_for_each_family():
    """The split results against NumPy written directly (not another backend)."""
    x, y, b = _data(13, 40, "float64", "numpy", seed=5)
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    bounds = [0, 7, 8, 30, 40]

    def split(reduction, k=None):
        spec = _spec(reduction, "float64", k=k)
        return evaluate_split(_call(spec, 13, 40, "cpu", "numpy"), [x, y, b], bounds)

    np.testing.assert_allclose(split("Sum")[0], (np.exp(-d2)[..., None] * b[None]).sum(1), rtol=1e-12)
    lse = np.log(np.exp(-d2).sum(1))
    np.testing.assert_allclose(split("LogSumExp")[0][:, 0], lse, rtol=1e-12)
    w = np.exp(-d2 - (-d2).max(1, keepdims=True))
    np.testing.assert_allclose(split("SumSoftMaxWeight")[0], (w @ b) / w.sum(1, keepdims=True), rtol=1e-12)
    order = np.argsort(d2, axis=1, kind="stable")[:, :3]
    vals, idx = split("KMin_ArgKMin", k=3)
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(vals, np.take_along_axis(d2, order, 1), rtol=1e-12)
    val, arg = split("Min_ArgMin")
    diff = x[:, None, :] - y[None, :, :]
    np.testing.assert_array_equal(arg, diff.argmin(1))
    np.testing.assert_allclose(val, diff.min(1), rtol=1e-12)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_block_sparse_ranges(backend):
    nx, ny = 20, 30
    ranges_i = np.array([[0, 10], [10, 20]], dtype=np.int64)
    slices_i = np.array([2, 3], dtype=np.int64)
    redranges_j = np.array([[0, 5], [12, 30], [3, 9]], dtype=np.int64)
    ranges_j = np.array([[0, 30]], dtype=np.int64)
    slices_j = np.array([2], dtype=np.int64)
    redranges_i = np.array([[0, 20], [0, 0]], dtype=np.int64)
    ranges = (ranges_i, slices_i, redranges_j, ranges_j, slices_j, redranges_i)
    for reduction, k in [("Sum", None), ("LogSumExp", None), ("Min_ArgMin", None), ("KMin_ArgKMin", 4),
                         ("SumSoftMaxWeight", None)]:
        spec = _spec(reduction, "float64", k=k)
        args = _data(nx, ny, "float64", "numpy", seed=7)
        call = _call(spec, nx, ny, backend, "numpy", ranges=ranges)
        _same(evaluate_split(call, args, [0, 4, 10, 13, 30]), dispatch(call, args), "float64")


def test_empty_piece_loses_against_infinite_values():
    """A piece holding nothing (index -1) never wins a tie against +inf values of a later piece."""
    spec = _spec("Min_ArgMin", "float64")
    x = np.zeros((2, 3))
    y = np.full((4, 3), -np.inf)  # x - y = +inf everywhere: a tie with the empty piece's +inf
    b = np.zeros((4, 3))
    call = _call(spec, 2, 4, "cpu", "numpy")
    state = combine_tree(spec, [piece_states(call, [x, y, b], 0, 0), piece_states(call, [x, y, b], 0, 4)])
    val, idx = partial_states.finalize(spec, state)
    np.testing.assert_array_equal(idx, 0)
    assert np.isposinf(val).all()
    val, idx = dispatch(call, [x, y, b])  # the whole call agrees
    assert (idx == 0).all()


def test_state_fields_follow_the_layout():
    spec = _spec("SumSoftMaxWeight", "float32")
    args = _data(4, 6, "float32", "numpy")
    state = dispatch_states(_call(spec, 4, 6, "cpu", "numpy"), args)
    assert [s.shape for s in state] == [(4, f.size) for f in partial_states.layout(spec)] == [(4, 1), (4, 1),
                                                                                                (4, 3)]
    spec16 = _spec("Sum", "float16")
    args16 = _data(4, 6, "float16", "numpy")
    assert dispatch_states(_call(spec16, 4, 6, "cpu", "numpy"), args16)[0].dtype == np.float32  # accumulator
    assert partial_states.state_spec(spec).reduction == "Max_SumShiftExpWeight"


def test_backends_must_claim_partial_states(monkeypatch):
    from polykeops import backends as registry

    class NoStates(Backend):
        name = "no-states"
        priority = -5
        capabilities = Capabilities(dtypes=frozenset({"float64"}))

        def evaluate(self, spec, args, *, nx, ny, batch_shape):
            raise AssertionError("not called")

    registry.register_backend("no-states", NoStates, replace=True)
    try:
        spec = _spec("Sum")
        with pytest.raises(BackendError, match="partial states not supported"):
            dispatch_states(_call(spec, 2, 3, "no-states", "numpy"), _data(2, 3, "float64", "numpy"))
    finally:
        registry.unregister_backend("no-states")


def test_bad_pieces_are_refused():
    spec = _spec("Sum")
    call = _call(spec, 2, 5, "cpu", "numpy")
    with pytest.raises(ShapeError, match="consecutive pieces"):
        evaluate_split(call, _data(2, 5, "float64", "numpy"), [0, 3, 2, 5])
    with pytest.raises(ShapeError, match="not inside"):
        piece_states(call, _data(2, 5, "float64", "numpy"), 3, 9)
