"""Documented semantics: ties, NaN and infinities, overflow-free LogSumExp, sizes, batches.

See the conventions of :mod:`polykeops.formula.reductions`: ties go to the
smallest index, a NaN wins Min/Max/ArgMin (first NaN) and comes first in KMin,
LogSumExp of an all ``-inf`` row is ``-inf`` and ``+inf`` with a ``+inf`` value.
"""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import strategies as st

from polykeops.formula import algebra as A
from polykeops.formula.composite import sqdist
from polykeops.formula.nodes import Const, Node, Var
from polykeops.formula.ops import OPS
from polykeops.formula.reductions import REDUCTIONS
from polykeops.formula.spec import ReductionSpec

from .checks import check_forward
from .pending import ISSUE11_PENDING, issue11_xfail
from .session import AXES, claims, property_test
from .strategies import (
    FINITE_SPECIALS,
    NONFINITE,
    case_from,
    draw_case,
    formulas,
    sizes,
    special_positions,
)

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


def _special_values(dtype):
    """NaN, +-inf, +-0, huge and tiny (subnormal) magnitudes of ``dtype``, exact halves (huge:
    their squares and products stay finite, so that overflow is the data's, not the formula's)."""
    huge = {"float16": 200.0, "bfloat16": 1e18, "float32": 1e18, "float64": 1e150}[dtype]
    return NONFINITE + (0.0, -0.0, huge, -huge) + FINITE_SPECIALS[dtype][2:]


@st.composite
def _special_case(draw, spec, *, max_size=300, nonfinite_rows=True, without=()):
    """``spec`` on drawn sizes (up to ``max_size``, tile boundaries weighted) with special values
    at drawn positions (first / last / middle tile, next to tile boundaries), sometimes a whole
    row of one infinity."""
    axis = spec.axis
    M = draw(sizes("fast", max_size=max_size), label="M")
    N = draw(sizes("fast", max_size=max_size), label="N")
    if spec.k is not None:
        n_red = N if axis == 1 else M
        if n_red < spec.k:
            spec = spec.with_(k=n_red)
    base = case_from(spec, M, N, seed=draw(st.integers(0, 2**31), label="seed"))
    specials = []
    values = [v for v in _special_values(spec.dtype) if not any(v is w or v == w for w in without)]
    if any(isinstance(w, float) and math.isnan(w) for w in without):
        values = [v for v in values if not math.isnan(v)]
    for _ in range(draw(st.integers(1, 6), label="number of special values")):
        p = draw(st.integers(0, len(spec.variables) - 1), label="argument")
        idx = draw(special_positions(base, p), label="position")
        value = draw(st.sampled_from(values), label="value")
        specials.append((p, idx, value))
    if nonfinite_rows and draw(st.booleans(), label="a whole row of -inf / +inf?"):
        j_vars = [p for p, v in enumerate(spec.variables) if v.cat == (1 if axis == 1 else 0)]
        fill = draw(st.sampled_from([float("-inf"), float("inf")]), label="row value")
        p = j_vars[0]
        specials += [(p, k, fill) for k in range(int(np.prod(base.shapes[p])))]
    return replace(base, specials=tuple(specials))


#: formulas of x (i) and y (j) that special values go through
SPECIAL_FORMULAS = {
    "y": lambda x, y: y,
    "x+y": lambda x, y: A.add(x, y),
    "x*y": lambda x, y: A.mul(x, y),
    "-(x-y)^2": lambda x, y: A.neg(A.square(A.sub(x, y))),
    "exp(x)*y": lambda x, y: A.mul(A.node("Exp", x), y),
}


@AXES
@pytest.mark.parametrize("reduction", SPECIAL_REDUCTIONS)
@property_test(1.0)
def test_nan_and_infinities(backend, device, reduction, axis, data):
    """NaN, +-inf, +-0, huge, tiny and subnormal values at drawn positions (any tile), whole rows of
    infinities: propagated and selected as documented (see the README's special values)."""
    claims(backend, reduction)
    d = 1 if REDUCTIONS[reduction].scalar_formula else data.draw(st.sampled_from([1, 2]), label="dim")
    x, y = Var(0, d, 0), Var(1, d, 1)
    shape_f = data.draw(st.sampled_from(sorted(SPECIAL_FORMULAS)), label="formula")
    f = SPECIAL_FORMULAS[shape_f](x, y)
    spec = ReductionSpec(
        reduction,
        (f,),
        (x, y),
        axis=axis,
        dtype=_dtype(backend),
        k=data.draw(st.sampled_from([1, 2, 3, 17, 64]), label="K") if REDUCTIONS[reduction].uses_k else None,
    )
    case = data.draw(_special_case(spec, nonfinite_rows=shape_f == "y"), label="case")
    check_forward(backend, case, device=device)


#: the piecewise ops at special values: torch's semantics (dense_ops.py), issue 11 for the C rules
PIECEWISE = {
    "ReLU": lambda x, y: A.node("ReLU", A.mul(x, y)),
    "Abs": lambda x, y: A.node("Abs", A.add(x, y)),
    # of a leaf: an exact zero stays exact under the oracle's perturbation (Sign(0) = 0 is enforced)
    "Sign": lambda x, y: A.add(A.node("Sign", y), A.mul(x, Const(Fraction(1, 2), 1))),
    "Step": lambda x, y: A.add(A.node("Step", y), A.mul(x, Const(Fraction(1, 2), 1))),
    "Clamp": lambda x, y: Node("Clamp", (A.mul(x, y), Const(Fraction(-1, 2), 1), Const(2, 1))),
    "IfElse": lambda x, y: Node("IfElse", (x, y, A.neg(A.node("Abs", y)))),  # no underflow of y * y
}
PIECEWISE_PARAMS = [
    pytest.param(name, marks=issue11_xfail(f"{name} at infinities / NaN in the C rules"), id=name)
    if name in ("ReLU", "Clamp", "IfElse")
    else pytest.param(name, id=name)
    for name in PIECEWISE
]


@pytest.mark.parametrize("reduction", ["Sum", "Max_ArgMax", "LogSumExp"])
@pytest.mark.parametrize("op", PIECEWISE_PARAMS)
@property_test(1.0)
def test_piecewise_ops_at_special_values(backend, device, op, reduction, data):
    """ReLU, Abs, Sign, Step, Clamp, IfElse of NaN, +-inf, +-0 at drawn positions: torch's values
    (relu(-inf) = 0, clamp(+-inf) = its bound, the branch not taken by IfElse does not matter)."""
    claims(backend, reduction)
    x, y = Var(0, 1, 0), Var(1, 1, 1)
    spec = ReductionSpec(reduction, (PIECEWISE[op](x, y),), (x, y), dtype=_dtype(backend))
    # issue 11: Sign(NaN) of the C rules is NaN (torch: 0); its zeros are checked meanwhile
    without = (float("nan"),) if op == "Sign" and ISSUE11_PENDING else ()
    case = data.draw(_special_case(spec, max_size=100, nonfinite_rows=False, without=without), label="case")
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
SELECTING = ["ReLU", "Abs", "Sign", "Step", "Clamp", "ClampInt", "IfElse"]


@AXES
@pytest.mark.parametrize("op", SELECTING)
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
