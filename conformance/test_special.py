"""Documented semantics: ties, NaN and infinities, overflow-free LogSumExp, sizes, batches.

See the conventions of :mod:`polykeops.formula.reductions`: ties go to the
smallest index, a NaN wins Min/Max/ArgMin (first NaN) and comes first in KMin,
LogSumExp of an all ``-inf`` row is ``-inf`` and ``+inf`` with a ``+inf`` value.
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import strategies as st

from polykeops.formula import algebra as A
from polykeops.formula.composite import sqdist
from polykeops.formula.nodes import Const, Var
from polykeops.formula.ops import OPS
from polykeops.formula.reductions import REDUCTIONS
from polykeops.formula.spec import ReductionSpec

from .checks import check_forward
from .session import AXES, claims, property_test
from .strategies import case_from, draw_case, formulas

SELECT_INDEX = sorted(n for n, r in REDUCTIONS.items() if r.is_selection and r.want_index)
#: ops that are exact on small integers (so that ties are exact ties)
EXACT_OPS = [
    OPS[n]
    for n in (
        "Add",
        "Subtract",
        "Mult",
        "Abs",
        "Square",
        "Minus",
        "Sum",
        "Min",
        "Max",
        "ReLU",
        "Concat",
        "Elem",
    )
    if n in OPS
]


def _dtype(backend):
    dts = backend.capabilities.dtypes
    return "float32" if "float32" in dts else sorted(dts)[0]


@AXES
@pytest.mark.parametrize("reduction", SELECT_INDEX)
@property_test(1.0)
def test_selection_ties(backend, device, options, reduction, axis, data):
    """Integer data (many exact ties): the smallest index must win, ascending j for ArgKMin."""
    caps = claims(backend, reduction)
    forms = formulas(reduction, max_depth=2, ops=EXACT_OPS, out_dims=[1, 2, 3])
    case = draw_case(
        data,
        caps,
        reduction,
        axis,
        _dtype(backend),
        tier=options.tier,
        forms=forms,
        data="int",
        int_range=(-2, 2),
        array_kinds=tuple(backend.array_kinds()),
        max_size=options.max_size(150),
    )
    check_forward(backend, case, device=device)


SPECIAL_REDUCTIONS = [
    "Sum",
    "LogSumExp",
    "Min",
    "Max",
    "ArgMin",
    "ArgMax",
    "Min_ArgMin",
    "Max_ArgMax",
    "KMin",
    "ArgKMin",
    "KMin_ArgKMin",
]


@AXES
@pytest.mark.parametrize("reduction", SPECIAL_REDUCTIONS)
@property_test(1.0)
def test_nan_and_infinities(backend, device, reduction, axis, data):
    """NaN / +inf / -inf in the data: propagated and selected as documented."""
    claims(backend, reduction)
    d = 1 if REDUCTIONS[reduction].scalar_formula else data.draw(st.sampled_from([1, 2]), label="dim")
    x, y = Var(0, d, 0), Var(1, d, 1)
    shape_f = data.draw(st.sampled_from(["y", "x+y", "x*y"]), label="formula")
    f = {"y": y, "x+y": A.add(x, y), "x*y": A.mul(x, y)}[shape_f]
    spec = ReductionSpec(
        reduction,
        (f,),
        (x, y),
        axis=axis,
        dtype=_dtype(backend),
        k=data.draw(st.integers(1, 3), label="K") if REDUCTIONS[reduction].uses_k else None,
    )
    M = data.draw(st.integers(3 if axis == 0 else 1, 40), label="M")
    N = data.draw(st.integers(3, 40), label="N")
    base = case_from(spec, M, N, seed=data.draw(st.integers(0, 2**31), label="seed"))
    sizes = [int(np.prod(s)) for s in base.shapes]
    n_special = data.draw(st.integers(1, 6), label="number of special values")
    specials = []
    for _ in range(n_special):
        p = data.draw(st.sampled_from([0, 1]), label="argument")
        idx = data.draw(st.integers(0, sizes[p] - 1), label="position")
        value = data.draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]), label="value")
        specials.append((p, idx, value))
    if data.draw(st.booleans(), label="a whole row of -inf / +inf?") and shape_f == "y":
        fill = data.draw(st.sampled_from([float("-inf"), float("inf")]), label="row value")
        specials += [(1, k, fill) for k in range(sizes[1])]
    case = replace(base, specials=tuple(specials))
    check_forward(backend, case, device=device)


@pytest.mark.parametrize("shift", [-20000, -1000, 1000, 20000])
@pytest.mark.parametrize("reduction", ["LogSumExp", "LogSumExpWeight", "Max_SumShiftExp", "SumSoftMaxWeight"])
@property_test(0.5)
def test_logsumexp_large_values(backend, device, options, reduction, shift, data):
    """F + shift with |shift| far beyond exp's range: the max-shifted sums must not overflow or underflow."""
    caps = claims(backend, reduction)
    dtype = data.draw(
        st.sampled_from(sorted(d for d in ("float32", "float64") if d in caps.dtypes)), label="dtype"
    )
    if dtype == "float32" and abs(shift) > 1000:
        shift = 1000 if shift > 0 else -1000  # float32 values must stay meaningful (|F| eps << 1)
    forms, vars_ = data.draw(formulas(reduction, max_depth=2), label="formulas")
    forms = (A.add(forms[0], Const(shift, 1)),) + forms[1:]
    axis = data.draw(st.sampled_from([0, 1]), label="axis")
    kinds = tuple(backend.array_kinds())
    case = draw_case(
        data, caps, reduction, axis, dtype, tier=options.tier, forms=(forms, vars_), array_kinds=kinds,
        max_size=options.max_size(150),
    )
    check_forward(backend, replace(case, value_limit=1e5), device=device)


def _kernel_spec(reduction, dtype, k=None):
    x, y, b = Var(0, 3, 0), Var(1, 3, 1), Var(2, 2, 1)
    f = A.mul(Const(Fraction(-1, 2), 1), sqdist(x, y))
    if reduction == "Sum":
        forms, variables = (A.mul(A.node("Exp", f), b),), (x, y, b)
    elif reduction == "SumSoftMaxWeight":
        forms, variables = (f, b), (x, y, b)
    else:
        forms, variables = (f,), (x, y)
    return ReductionSpec(reduction, forms, variables, axis=1, k=k, dtype=dtype)


SIZES_FAST = [
    (1, 1),
    (1, 2),
    (2, 1),
    (2, 2),
    (3, 5),
    (1, 300),
    (300, 1),
    (31, 33),
    (65, 129),
    (127, 255),
    (257, 63),
    (100, 1000),
    (1000, 100),
    (7, 3000),
]
SIZES_FULL = SIZES_FAST + [(513, 2049), (2049, 513), (3000, 3000), (1, 20000), (20000, 1)]


@pytest.mark.parametrize("reduction", ["Sum", "LogSumExp", "Min_ArgMin", "ArgKMin", "SumSoftMaxWeight"])
@pytest.mark.tier_parametrize("size", SIZES_FAST, SIZES_FULL, ids=lambda s: f"{s[0]}x{s[1]}")
def test_sizes(backend, device, size, reduction):
    """A Gaussian-kernel reduction at sizes around tile and block boundaries (1, 2, 2^k +- 1, ...)."""
    caps = claims(backend, reduction)
    M, N = size
    k = min(N, 4) if reduction == "ArgKMin" else None
    spec = _kernel_spec(reduction, "float64" if "float64" in caps.dtypes else _dtype(backend), k=k)
    check_forward(backend, case_from(spec, M, N, seed=M * 7919 + N), device=device, deterministic=True)
    if reduction == "ArgKMin" and N <= 5:  # K equal to the number of reduced elements
        check_forward(backend, case_from(spec.with_(k=N), M, N, seed=1), device=device, deterministic=True)


BATCH_LAYOUTS = [
    # batch shape, per-variable batch shapes (x, y, b)
    ((2,), [(2,), (2,), (2,)]),
    ((3,), [(3,), (1,), ()]),
    ((2, 3), [(2, 1), (1, 3), (3,)]),
    ((2, 3), [(1, 1), (2, 3), (1, 1)]),
    ((3, 2), [(2,), (3, 1), (3, 2)]),
]


@pytest.mark.parametrize("reduction", ["Sum", "LogSumExp", "ArgMin", "KMin", "SumSoftMaxWeight"])
@pytest.mark.parametrize("layout", range(len(BATCH_LAYOUTS)), ids=lambda k: f"layout{k}")
def test_batch_broadcasting(backend, device, reduction, layout):
    """Batch dimensions broadcast per argument (sizes 1 and missing leading dimensions)."""
    caps = claims(backend, reduction)
    if not caps.batch:
        pytest.skip("batch dimensions not claimed")
    batch, per = BATCH_LAYOUTS[layout]
    spec = _kernel_spec(reduction, _dtype(backend), k=3 if reduction == "KMin" else None)
    per = per[: len(spec.variables)]
    case = case_from(spec, 23, 37, seed=layout, batch=batch, per_var_batch=per)
    check_forward(backend, case, device=device, deterministic=True)


#: piecewise ops that select (see the README's IEEE section): the branch not taken may be infinite
PIECEWISE = ["ReLU", "Abs", "Sign", "Step", "Clamp", "ClampInt", "IfElse"]


@AXES
@pytest.mark.parametrize("op", PIECEWISE)
@property_test(0.5)
def test_piecewise_ops_select_with_infinities(backend, device, op, axis, data):
    """±inf and NaN fed to the selecting ops, and in the branch IfElse / Clamp do not take:
    selections, never arithmetic with a zero (relu(-inf) = 0, clamp(+inf, a, b) = b...)."""
    reduction = data.draw(st.sampled_from(["Sum", "Min", "Max"]), label="reduction")
    claims(backend, reduction)
    x, y = Var(0, 1, 0), Var(1, 1, 1)
    if op == "IfElse":
        f = A.node("IfElse", A.sub(x, y), y, x)  # y where x >= y, else x: either may be infinite
    elif op == "Clamp":
        f = A.node("Clamp", x, A.sub(y, Const(1)), A.add(y, Const(1)))
    elif op == "ClampInt":
        f = A.node("ClampInt", A.add(x, y), params=(-1, 2))
    else:
        f = A.node(op, A.add(x, y))
    spec = ReductionSpec(reduction, (f,), (x, y), axis=axis, dtype=_dtype(backend))
    M = data.draw(st.integers(1, 40), label="M")
    N = data.draw(st.integers(1, 40), label="N")
    base = case_from(spec, M, N, seed=data.draw(st.integers(0, 2**31), label="seed"))
    sizes = [int(np.prod(s)) for s in base.shapes]
    specials = []
    for _ in range(data.draw(st.integers(1, 6), label="number of special values")):
        p = data.draw(st.sampled_from([0, 1]), label="argument")
        idx = data.draw(st.integers(0, sizes[p] - 1), label="position")
        value = data.draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]), label="value")
        specials.append((p, idx, value))
    check_forward(backend, replace(base, specials=tuple(specials)), device=device)
