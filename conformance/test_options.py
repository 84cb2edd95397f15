"""Every option a backend receives has an observable effect, and the suite checks it.

A backend that ignores an option must fail.  The generic tolerances of the oracle
cannot tell a float32 accumulator from a float64 one (they allow for the
formula's own rounding), so the accumulation options are checked on sums built
for it (:func:`.strategies.cancelling`): pairs ``+a, -a`` with full mantissas,
shuffled, plus ``1/2``.  The exact sum is 1/2, every partial sum is exact in an
accumulator a few bits wider than the data, and an accumulator of the data's
own precision loses digits in *any* order of summation:

* ``dtype_acc="float64"`` with float32 data: the result must be exact;
* float16 data (``dtype_acc="auto"``): accumulated in (at least) float32, exact;
* ``sum_scheme="kahan_scheme"``: compensated, within ``2 eps |s| + 4 N eps^2 sum |F|``
  (plain float32 summation is ~100 times off).

:data:`OPTION_CHECKS` names, for every field of :class:`ReductionSpec` and every
keyword of ``Backend.evaluate``, the tests that fail a backend ignoring it:
:func:`test_every_option_is_checked` fails when an option is added without one.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

from polykeops.backends.contract import Backend
from polykeops.backends.reference import ReferenceBackend
from polykeops.formula import algebra as A
from polykeops.formula.composite import sqdist
from polykeops.formula.nodes import Var
from polykeops.formula.reductions import REDUCTIONS
from polykeops.formula.spec import ReductionSpec

from .checks import check_forward, fail
from .pending import ISSUE11_PENDING
from .runner import run_forward, to_torch_cpu
from .session import AXES, claims, property_test
from .strategies import K_REDUCTIONS, SPECIAL_SIZES_FAST, case_from, draw_case, formulas, k_values

#: option (a ReductionSpec field or a keyword of Backend.evaluate) -> "file::test" that fail a
#: backend ignoring it
OPTION_CHECKS = {
    "reduction": ["test_reductions.py::test_reduction"],
    "formulas": ["test_ops.py::test_op", "test_reductions.py::test_reduction"],
    "variables": ["test_reductions.py::test_reduction", "test_gradients.py::test_parameter_gradient"],
    "axis": ["test_reductions.py::test_reduction"],
    "k": ["test_options.py::test_k_whole_range", "test_reductions.py::test_reduction"],
    "dtype": ["test_reductions.py::test_reduction"],
    "dtype_acc": ["test_options.py::test_accumulation_dtype"],
    "sum_scheme": ["test_options.py::test_kahan_scheme"],
    "precision": ["test_options.py::test_precision"],
    "nx": ["test_special.py::test_sizes"],
    "ny": ["test_special.py::test_sizes"],
    "batch_shape": ["test_special.py::test_batch_broadcasting"],
    "ranges": ["test_ranges.py::test_ranges_forward", "test_ranges.py::test_ranges_per_batch"],
}


def test_every_option_is_checked():
    """Every field of ReductionSpec and keyword of Backend.evaluate has a test of its effect."""
    fields = {f.name for f in dataclasses.fields(ReductionSpec) if not f.name.startswith("_")}
    params = inspect.signature(Backend.evaluate).parameters
    keywords = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    missing = sorted((fields | keywords) - set(OPTION_CHECKS))
    assert not missing, (
        f"options without a test of their effect: {missing}: add a test on which ignoring the "
        "option changes the result beyond tolerance, and list it in OPTION_CHECKS"
    )
    package = __name__.rpartition(".")[0]
    for option, tests in OPTION_CHECKS.items():
        for test in tests:
            module, _, name = test.partition("::")
            mod = importlib.import_module(f"{package}.{module[:-3]}" if package else module[:-3])
            assert callable(getattr(mod, name, None)), f"{option}: {test} does not exist"


def _batched(caps):
    """Four different shuffles (batch dimension) where batches are claimed, else one."""
    return ((4,), [(1,), (4,)]) if caps.batch else ((), None)


def _cancelling_case(caps, dtype, n_pairs, *, axis=1, dtype_acc="auto", scheme="block_sum", seed=0):
    x, y = Var(0, 1, 0), Var(1, 1, 1)
    spec = ReductionSpec("Sum", (y,), (x, y), axis=1, dtype=dtype, dtype_acc=dtype_acc, sum_scheme=scheme)
    batch, per = _batched(caps)
    case = case_from(spec, 3, 2 * n_pairs + 1, seed=seed, batch=batch, per_var_batch=per, data="cancelling")
    if axis == 0:  # the same sums over i: swap the roles of the two variables
        spec0 = spec.with_(variables=(Var(0, 1, 1), Var(1, 1, 0)), formulas=(Var(1, 1, 0),), axis=0)
        case = case_from(spec0, 2 * n_pairs + 1, 3, seed=seed, batch=batch, per_var_batch=per,
                         data="cancelling")
    return case


def _check_sum(bt, case, device, tol_of, what: str):
    """The backend's sums against their exact value (float64 sums of these data are exact)."""
    arrays = case.arrays64()
    outs, problems = run_forward(bt, case, arrays, device)
    if problems:
        fail(case, bt, "the backend broke the output contract", ["  " + p for p in problems], device=device)
    terms = torch.from_numpy(arrays[1])  # (*batch, n, 1): the reduced variable
    exact = terms.sum(-2, keepdim=True)
    S = terms.abs().sum(-2, keepdim=True)
    got = to_torch_cpu(outs[0]).to(torch.float64)
    exact = exact.expand_as(got) if got.dim() == exact.dim() else exact
    err = (got - exact).abs()
    tol = tol_of(exact.abs(), S)
    bad = ~(err <= tol)
    if bool(bad.any()):
        k = int(torch.argmax(torch.nan_to_num(err, nan=np.inf).reshape(-1)))
        fail(case, bt, f"wrong reduction result ({what})", [
            f"output 0 (values): {int(bad.sum())} of {bad.numel()} entries out of tolerance",
            f"  max abs error {float(err.reshape(-1)[k]):.6g}: got {float(got.reshape(-1)[k])!r}, exact "
            f"{float(exact.reshape(-1)[k])!r}, tolerance {float(tol.reshape(-1)[k]):.3g}",
            f"  the {case.N if case.spec.axis == 1 else case.M} terms are +-a pairs (full mantissas, "
            "shuffled) and 1/2: an accumulator of the data's precision loses digits, the one asked "
            "for does not",
        ], device=device)


@AXES
@pytest.mark.parametrize("n_pairs", [64, 512])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_accumulation_dtype(backend, device, dtype, n_pairs, axis):
    """float32 data with ``dtype_acc="float64"``, float16 data with the default accumulation
    (float32): sums whose partial sums are exact in the accumulator asked for, not in the data's
    precision, must come out exact."""
    caps = claims(backend, "Sum", dtype)
    acc = "float64" if dtype == "float32" else "auto"
    case = _cancelling_case(caps, dtype, n_pairs, axis=axis, dtype_acc=acc, seed=n_pairs)
    eps = float(torch.finfo(getattr(torch, dtype)).eps)
    _check_sum(backend, case, device, lambda e, S: 2 * eps * e, f"dtype_acc={acc}, dtype={dtype}")


@pytest.mark.parametrize("n_pairs", [64, 512])
def test_kahan_scheme(backend, device, request, n_pairs):
    """``sum_scheme="kahan_scheme"`` in float32: compensated summation, within
    ``2 eps |s| + 4 N eps^2 sum |F|`` of the exact sum (plain float32 summation is far off)."""
    caps = claims(backend, "Sum", "float32")
    if "kahan_scheme" not in caps.sum_schemes:
        pytest.skip(f"{backend.label} does not claim the kahan_scheme sum scheme")
    built_on = getattr(backend.backend, "inner", backend.backend)  # wrappers of meta/broken.py
    if ISSUE11_PENDING and type(built_on) is ReferenceBackend:
        request.applymarker(pytest.mark.xfail(
            strict=False, reason="issue 11: the reference backend compensates between tiles only"))
    case = _cancelling_case(caps, "float32", n_pairs, scheme="kahan_scheme", seed=n_pairs + 1)
    eps = float(torch.finfo(torch.float32).eps)
    n = 2 * n_pairs + 1
    _check_sum(backend, case, device, lambda e, S: 2 * eps * e + 4 * n * eps**2 * S, "kahan_scheme")


@pytest.mark.parametrize("precision", ["ieee", "tf32"])
def test_precision(backend, device, precision):
    """``precision`` is a permission: with ``"ieee"`` (the default) float32 inner products
    are computed in float32 -- a backend using TF32 anyway fails here --, with ``"tf32"`` a
    backend may round their inputs to TF32 (10-bit mantissas) or compute exactly.  Data:
    ``x_i . y_j`` at D = 64 with ``x = 1 + 2^-15``, ``y = 1``, summed over j: every partial
    sum is exact in float32, and TF32 rounds x to 1 (a relative error of 2^-15)."""
    claims(backend, "Sum", "float32")
    D, M, N = 64, 40, 33
    x, y = Var(0, D, 0), Var(1, D, 1)
    spec = ReductionSpec("Sum", (A.scalprod(x, y),), (x, y), dtype="float32", precision=precision)
    case = case_from(spec, M, N, seed=5)
    arrays = [np.full(case.shapes[0], 1 + 2.0**-15), np.ones(case.shapes[1])]
    outs, problems = run_forward(backend, case, arrays, device)
    if problems:
        fail(case, backend, "the backend broke the output contract", ["  " + p for p in problems],
             device=device)
    exact = N * D * (1 + 2.0**-15)
    got = to_torch_cpu(outs[0]).to(torch.float64)
    eps = float(torch.finfo(torch.float32).eps)
    tol = 2 * eps * exact if precision == "ieee" else 2.0**-10 * exact
    err = float((got - exact).abs().max())
    if not err <= tol:
        fail(case, backend, f"wrong reduction result (precision={precision!r})", [
            f"  max abs error {err:.6g} against the exact {exact!r}, tolerance {tol:.3g}",
            "  precision='ieee' must not round float32 inner products to TF32" if precision == "ieee"
            else "  precision='tf32' allows TF32 inputs (2^-10 relative), no more",
        ], device=device)


#: sizes of the reduced dimension for K: boundaries of K (1..64) and of tiles
K_SIZES = sorted({s for s in SPECIAL_SIZES_FAST if s <= 300} | {64, 65, 66, 100})


@AXES
@pytest.mark.parametrize("reduction", K_REDUCTIONS)
@property_test(1.0)
def test_k_whole_range(backend, device, options, reduction, axis, data):
    """K from 1 to 64 and K = N, N - 1 (boundaries weighted) over sizes around tile boundaries,
    with exact ties (integer data) half of the time."""
    caps = claims(backend, reduction)
    dtype = "float64" if "float64" in caps.dtypes else sorted(caps.dtypes)[0]
    n_red = data.draw(st.sampled_from(K_SIZES), label="number of reduced elements")
    other = data.draw(st.sampled_from([1, 2, 7, 33]), label="number of output rows")
    k = data.draw(k_values(n_red), label="K")
    ties = data.draw(st.booleans(), label="integer data (exact ties)?")
    if data.draw(st.booleans(), label="squared distance (else random formula)?"):
        d = data.draw(st.sampled_from([1, 3]), label="dim")
        x, y = Var(0, d, 0), Var(1, d, 1)
        forms = ((sqdist(x, y),), (x, y))
    else:
        forms = data.draw(formulas(reduction, max_depth=2, out_dims=[1, 2]), label="formulas")
    spec = ReductionSpec(reduction, forms[0], forms[1], axis=axis, k=min(k, n_red), dtype=dtype)
    kind = data.draw(st.sampled_from(backend.array_kinds()), label="array kind")
    M, N = (other, n_red) if axis == 1 else (n_red, other)
    seed = data.draw(st.integers(0, 2**31), label="data seed")
    case = case_from(spec, M, N, seed=seed, data="int" if ties else "normal", int_range=(-2, 2),
                     array_kind=kind)
    check_forward(backend, case, device=device)


SMALL_BANDWIDTH = ["LogSumExp", "Sum", "SumSoftMaxWeight", "ArgMin", "ArgKMin"]


@pytest.mark.parametrize("reduction", SMALL_BANDWIDTH)
@property_test(0.6)
def test_small_bandwidth_kernels(backend, device, options, reduction, data):
    """-|x - y|^2 / sigma^2 with sigma much smaller than the spread of the data (sorted or
    clustered data, sizes across tiles): most terms underflow, the row's maximum sits in any tile."""
    caps = claims(backend, reduction)
    dtype = data.draw(st.sampled_from([d for d in ("float32", "float64") if d in caps.dtypes]), label="dtype")
    sigma = data.draw(st.sampled_from([0.3, 0.05, 0.01]), label="sigma")
    d = data.draw(st.sampled_from([1, 2, 3]), label="dim")
    x, y, b = Var(0, d, 0), Var(1, d, 1), Var(2, 2, 1)
    f = A.mul(A.const(-1.0 / sigma**2), sqdist(x, y))
    if reduction == "Sum":
        forms, vars_ = (A.mul(A.node("Exp", f), b),), (x, y, b)
    elif reduction == "SumSoftMaxWeight":
        forms, vars_ = (f, b), (x, y, b)
    else:
        forms, vars_ = (f,), (x, y)
    axis = data.draw(st.sampled_from([0, 1]), label="axis")
    case = draw_case(
        data, caps, reduction, axis, dtype, tier=options.tier, forms=(forms, vars_),
        data="normal", data_kinds=("sorted", "descending", "clustered"), k_max=8,
        array_kinds=tuple(backend.array_kinds()),
    )
    limit = 2e5 if dtype == "float64" else 2e3
    check_forward(backend, dataclasses.replace(case, value_limit=limit), device=device)


def test_reduction_names_are_all_drawn():
    """Every reduction of the table is drawn by the generic tests (a new one is tested as added)."""
    from . import test_reductions

    mark = next(m for m in test_reductions.test_reduction.pytestmark if m.args[0] == "reduction")
    assert sorted(mark.args[1]) == sorted(REDUCTIONS)
