"""Gradients through the backend against torch.autograd on the dense computation.

First order for every differentiable reduction (w.r.t. i-, j-variables and
parameters, with batch broadcasting), second order for Sum and LogSumExp.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from polykeops.formula import algebra as A
from polykeops.formula.composite import sqdist
from polykeops.formula.nodes import Const, Var
from polykeops.formula.reductions import REDUCTIONS
from polykeops.formula.spec import ReductionSpec

from .checks import check_gradients
from .session import AXES, claims, property_test
from .strategies import case_from, draw_case

DIFFERENTIABLE = sorted(name for name, red in REDUCTIONS.items() if red.differentiable)


def grad_dtypes(backend, options):
    wanted = ("float32", "float64", "float16") if options.full else ("float32", "float64")
    return [d for d in wanted if d in backend.capabilities.dtypes]


def needs_torch(backend, reduction=None):
    if "torch" not in backend.capabilities.array_kinds:
        pytest.skip(f"{backend.label} does not claim torch tensors (gradients go through torch.autograd)")
    return claims(backend, reduction)


@AXES
@pytest.mark.parametrize("reduction", DIFFERENTIABLE)
@property_test(1.0)
def test_gradient(backend, device, options, reduction, axis, data):
    """d(reduction)/d(every argument) for a random formula, random cotangents."""
    caps = needs_torch(backend, reduction)
    dtype = data.draw(st.sampled_from(grad_dtypes(backend, options)), label="dtype")
    depth = 2 if dtype == "float16" else 3
    case = draw_case(
        data, caps, reduction, axis, dtype, tier=options.tier, max_depth=depth, max_size=options.max_size(120)
    )
    check_gradients(backend, case, device=device)


@AXES
@pytest.mark.parametrize("reduction", ["Sum", "LogSumExp"])
@property_test(1.0)
def test_second_order(backend, device, options, reduction, axis, data):
    """Second derivatives (gradient of <gradient, V>) through the backend's gradient reductions."""
    caps = needs_torch(backend, reduction)
    wanted = [d for d in grad_dtypes(backend, options) if d != "float16"]
    dtype = data.draw(st.sampled_from(wanted), label="dtype")
    case = draw_case(
        data, caps, reduction, axis, dtype, tier=options.tier, max_depth=2, max_size=options.max_size(60)
    )
    check_gradients(backend, case, order=2, device=device)


@pytest.mark.parametrize("large_dim", [20, 64, 257])
@pytest.mark.parametrize("reduction", ["Sum", "LogSumExp", "SumSoftMaxWeight", "Min"])
@property_test(0.4)
def test_large_dimension_gradient(backend, device, options, reduction, large_dim, data):
    """Gradients of formulas of large vectors (20 to 257 components: the chunked code paths of
    the gradient reductions, e.g. the LogSumExp of squared distances), first and second order."""
    caps = needs_torch(backend, reduction)
    dtype = data.draw(st.sampled_from(grad_dtypes(backend, options)), label="dtype")
    axis = data.draw(st.sampled_from([0, 1]), label="axis")
    case = draw_case(
        data, caps, reduction, axis, dtype, tier=options.tier, max_depth=2, large_dim=large_dim,
        max_size=options.max_size(60),
    )
    check_gradients(backend, case, device=device)
    if reduction in ("Sum", "LogSumExp") and data.draw(st.booleans(), label="second order?"):
        check_gradients(backend, case, order=2, device=device)


def _param_spec(reduction, dtype):
    """exp(-p |x_i - y_j|^2) with weights: a parameter p (dim 1) and a parameter vector q (dim 3)."""
    x, y, p, q, b = Var(0, 3, 0), Var(1, 3, 1), Var(2, 1, 2), Var(3, 3, 2), Var(4, 2, 1)
    f = A.sub(A.vsum(A.mul(q, A.node("Sin", A.add(x, y)))), A.mul(A.square(p), sqdist(x, y)))
    variables = (x, y, p, q, b)
    if reduction in ("Sum",):
        forms = (A.mul(A.node("Exp", f), b),)
    elif reduction in ("SumSoftMaxWeight", "LogSumExpWeight"):
        forms = (f, A.add(A.node("Exp", b), Const(1, 1)) if reduction == "LogSumExpWeight" else b)
    else:
        forms = (f,)
        variables = variables[:4]
    k = 3 if reduction.startswith("KMin") else None
    return ReductionSpec(reduction, forms, variables, axis=1, k=k, dtype=dtype)


@pytest.mark.parametrize("batched", [False, True], ids=["plain", "batched"])
@pytest.mark.parametrize(
    "reduction", ["Sum", "LogSumExp", "SumSoftMaxWeight", "LogSumExpWeight", "Min", "KMin"]
)
def test_parameter_gradient(backend, device, reduction, batched):
    """Parameter gradients are summed over every i and j (and broadcast batch dimensions)."""
    caps = needs_torch(backend, reduction)
    if batched and not caps.batch:
        pytest.skip("batch dimensions not claimed")
    dtype = "float64" if "float64" in caps.dtypes else "float32"
    spec = _param_spec(reduction, dtype)
    per = None
    batch = ()
    if batched:
        batch = (2,)
        per = [(2,), (1,), (), (2,), (1,)][: len(spec.variables)]
    case = case_from(spec, 37, 41, seed=7, batch=batch, per_var_batch=per)
    check_gradients(backend, case, device=device, deterministic=True)
