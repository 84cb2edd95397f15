"""Gradients of reductions, as new reductions.

For a Sum-like reduction (Sum, LogSumExp, weighted LogSumExp, SumSoftMaxWeight)
the gradient with respect to a variable is itself a Sum reduction of a
symbolic gradient formula:

* over j for an i-variable (output indexed by i),
* over i for a j-variable (output indexed by j),
* over j, then summed over i, for a parameter.

The gradient formula uses *extra* arguments appended after the spec's own:
``"G"`` (the cotangent of the output), ``"OUT"`` (the forward output) and
``"LSE"`` (the log-sum-exp of the first formula), all indexed by i.

For the selection reductions (Min, Max, KMin and the values of Min_ArgMin...),
the gradient is the symbolic gradient evaluated at the selected pairs only:
:func:`selection_gradient` gives the formula ``Grad(F, v, e)``; the array glue
evaluates it on the gathered rows and scatters the result back.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import NotDifferentiableError
from . import algebra as A
from .derivative import grad
from .nodes import CAT_I, CAT_J, CAT_P, Var
from .spec import ReductionSpec


@dataclass(frozen=True)
class GradientPlan:
    """How to compute the gradient of a canonical spec with respect to one argument."""

    spec: ReductionSpec  # a Sum reduction; axis 0 for j-variables
    extras: tuple[str, ...]  # extra arguments, in order: "G", "OUT", "LSE"
    sum_rows: bool  # parameter: sum the result over the output rows


def sum_like_gradient(spec: ReductionSpec, p: int, split_lse: bool = False) -> GradientPlan:
    """Plan for d(output)/d(argument p) of a canonical Sum-like spec.

    ``split_lse`` (LogSumExp and LogSumExpWeight): the caller has the forward's stable state, the
    max ``m`` and ``log s`` (``OUT = m + log s``); the gradient weight ``exp(F - OUT)`` is then
    computed as ``exp((F - m) - log s)`` (extras ``"M"`` and ``"LOGS"``), without the rounding
    error of ``OUT`` (``|OUT| * eps``, large next to ``F - OUT`` when ``|OUT|`` is large).
    """
    red = spec.red
    if not red.is_sum_like or not red.differentiable:
        raise NotDifferentiableError(
            f"reduction {spec.reduction} has no gradient; use LogSumExp instead of Max_SumShiftExp"
        )
    v = spec.variables[p]
    n = len(spec.variables)
    out_dim = spec.outputs()[0].dim
    e = Var(n, out_dim, CAT_I)
    f = spec.formulas[0]
    name = spec.reduction
    extra_vars = [e, Var(n + 1, out_dim, CAT_I)]
    lse = name in ("LogSumExp", "LogSumExpWeight")
    if lse and split_lse:
        m, logs = Var(n + 1, 1, CAT_I), Var(n + 2, out_dim, CAT_I)
        shifted = A.sub(A.sub(f, m), logs)  # (F - m) first: exact-ish for the pairs that matter
        extras, extra_vars = ("G", "M", "LOGS"), [e, m, logs]
    elif lse:
        shifted = A.sub(f, Var(n + 1, out_dim, CAT_I))
        extras = ("G", "OUT")
    if name == "Sum":
        h, extras = grad(f, v, e), ("G",)
    elif name == "LogSumExp":
        h = grad(f, v, A.mul(e, A.node("Exp", shifted)))
    elif name == "LogSumExpWeight":
        g = spec.formulas[1]
        w = A.mul(e, A.node("Exp", shifted))
        h = A.add(grad(f, v, A.vsum(A.mul(w, g))), grad(g, v, w))
    elif name == "SumSoftMaxWeight":
        g = spec.formulas[1]
        lse = Var(n + 1, 1, CAT_I)
        o = Var(n + 2, out_dim, CAT_I)
        prob = A.node("Exp", A.sub(f, lse))
        h = A.add(
            grad(g, v, A.mul(prob, e)),
            grad(f, v, A.mul(prob, A.vsum(A.mul(A.sub(g, o), e)))),
        )
        extras = ("G", "LSE", "OUT")
    else:  # pragma: no cover - every Sum-like reduction is handled above
        raise NotDifferentiableError(f"no gradient rule for reduction {name}")
    if name == "SumSoftMaxWeight":
        extra_vars = [e, Var(n + 1, 1, CAT_I), Var(n + 2, out_dim, CAT_I)]
    variables = tuple(spec.variables) + tuple(extra_vars[: len(extras)])
    gspec = spec.with_(
        reduction="Sum",
        formulas=(h,),
        variables=variables,
        axis=0 if v.cat == CAT_J else 1,
        k=None,
    )
    return GradientPlan(gspec, extras, v.cat == CAT_P)


def selection_gradient(spec: ReductionSpec, p: int):
    """``(H, e)``: the formula ``Grad(F, v, e)`` for a selection reduction, ``e`` its cotangent variable."""
    red = spec.red
    if not red.is_selection or not red.differentiable:
        raise NotDifferentiableError(f"reduction {spec.reduction} has no gradient (it returns indices)")
    v = spec.variables[p]
    f = spec.formulas[0]
    e = Var(len(spec.variables), f.dim, CAT_I)
    return grad(f, v, e), e


def lse_spec(spec: ReductionSpec) -> ReductionSpec:
    """The LogSumExp of the first formula of ``spec`` (needed by SumSoftMaxWeight's gradient)."""
    return spec.with_(reduction="LogSumExp", formulas=spec.formulas[:1], k=None)


__all__ = ["GradientPlan", "sum_like_gradient", "selection_gradient", "lse_spec", "CAT_I", "CAT_J", "CAT_P"]


# ---------------------------------------------------------------------------
# forward mode (Jacobian-vector products), for torch.func.jvp / jacfwd
# ---------------------------------------------------------------------------


def _directional(f, spec: ReductionSpec, tangents: dict):
    from .derivative import diff

    total = None
    for p, t in tangents.items():
        term = diff(f, spec.variables[p], t)
        total = term if total is None else A.add(total, term)
    return total


def tangent_variables(spec: ReductionSpec, positions) -> dict:
    """``{position: Var}``: one tangent variable per differentiated argument, after the spec's own."""
    n = len(spec.variables)
    out = {}
    for k, p in enumerate(positions):
        v = spec.variables[p]
        out[p] = Var(n + k, v.dim, v.cat)
    return out


def sum_like_jvp(spec: ReductionSpec, positions) -> GradientPlan:
    """Plan for the tangent of a canonical Sum-like spec's output along the given arguments.

    The plan's spec takes the spec's arguments, then one tangent per position
    (same category and dimension), then the extras.
    """
    red = spec.red
    if not red.is_sum_like or not red.differentiable:
        raise NotDifferentiableError(f"reduction {spec.reduction} has no derivative")
    tangents = tangent_variables(spec, positions)
    m = len(spec.variables) + len(tangents)
    f = spec.formulas[0]
    df = _directional(f, spec, tangents)
    out_dim = spec.outputs()[0].dim
    name = spec.reduction
    extra_vars: tuple = ()
    if name == "Sum":
        h, extras = df, ()
    elif name == "LogSumExp":
        o = Var(m, out_dim, CAT_I)
        h, extras, extra_vars = A.mul(A.node("Exp", A.sub(f, o)), df), ("OUT",), (o,)
    elif name == "LogSumExpWeight":
        g = spec.formulas[1]
        o = Var(m, out_dim, CAT_I)
        dg = _directional(g, spec, tangents)
        h = A.mul(A.node("Exp", A.sub(f, o)), A.add(A.mul(g, df), dg))
        extras, extra_vars = ("OUT",), (o,)
    elif name == "SumSoftMaxWeight":
        g = spec.formulas[1]
        lse = Var(m, 1, CAT_I)
        o = Var(m + 1, out_dim, CAT_I)
        dg = _directional(g, spec, tangents)
        h = A.mul(A.node("Exp", A.sub(f, lse)), A.add(dg, A.mul(A.sub(g, o), df)))
        extras, extra_vars = ("LSE", "OUT"), (lse, o)
    else:  # pragma: no cover
        raise NotDifferentiableError(f"no derivative rule for reduction {name}")
    variables = tuple(spec.variables) + tuple(tangents[p] for p in positions) + extra_vars
    jspec = spec.with_(reduction="Sum", formulas=(h,), variables=variables, axis=1, k=None)
    return GradientPlan(jspec, extras, False)


def selection_jvp(spec: ReductionSpec, positions):
    """``(dF, tangents)``: the directional derivative of F for a selection reduction."""
    red = spec.red
    if not red.is_selection or not red.differentiable:
        raise NotDifferentiableError(f"reduction {spec.reduction} has no derivative (it returns indices)")
    tangents = tangent_variables(spec, positions)
    return _directional(spec.formulas[0], spec, tangents), tangents
