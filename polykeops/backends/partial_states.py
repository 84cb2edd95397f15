"""Partial states: a reduction over part of j, kept in a form that can be combined later.

A distributed run (Dask chunks, torch.distributed ranks) splits the reduced axis j
into pieces, has a backend reduce each piece to its *partial state*, combines the
states along j with each reduction's own combine rule, and finalizes once.  This
module defines the state that crosses that boundary and the three operations on
it; no reduction is named here: everything follows from
:attr:`~polykeops.formula.reductions.Reduction.family`,
:meth:`~polykeops.formula.reductions.Reduction.state_layout` and the reduction's
``combine`` / ``finalize`` (the very code the reference backend runs per tile).

The state of a call (its **state fields**) is a tuple with one array per field of
``spec.red.state_layout(fdims, k)`` (uncompensated), each shaped
``(*batch_shape, nx, field.size)``, of dtype: the accumulation dtype for
ACCUMULATOR fields, the call's dtype for VALUE fields, int64 for INDEX fields.
Indices are positions in the call's own j range (``0 <= j < ny``), -1 where a row
holds nothing; :func:`offset` moves them to a global numbering.  A K-min field of
size ``K * D`` holds at entry ``q * D + d`` the q-th candidate of component d
(sorted, NaN first, unused slots ``+inf`` with index -1).

The functions:

* :func:`state_spec` -- the reduction whose outputs are the state (every backend
  can compute it: :func:`states_from_outputs` is the contract's default);
* :func:`offset` -- indices of a state over ``j0 <= j < j0 + ny``;
* :func:`combine` -- the state of two adjacent pieces of j (``a`` before ``b``);
* :func:`finalize` -- the outputs the call would have returned.

Reductions are computed in the accumulation dtype when it differs from the data's
(float16 data, ``dtype_acc="float64"``): the state keeps the precision the
single-machine reduction accumulates with.
"""

from __future__ import annotations

import math

from ..formula import algebra as A
from ..formula.nodes import Const
from ..formula.reductions import ACCUMULATOR, INDEX, KMIN, LSE, SELECT, SOFTMAX, SUM
from .arrays import adapter_for

_STATE_REDUCTION = {  # family -> (reduction computing the state, by selection kind where it matters)
    SUM: {"": "Sum"},
    LSE: {"": "Max_SumShiftExp", "weighted": "Max_SumShiftExpWeight"},
    SOFTMAX: {"": "Max_SumShiftExpWeight"},
    SELECT: {"min": "Min_ArgMin", "max": "Max_ArgMax"},
    KMIN: {"": "KMin_ArgKMin"},
}


def layout(spec):
    """The state fields of ``spec`` (a canonical ReductionSpec)."""
    return spec.red.state_layout(tuple(f.dim for f in spec.formulas), spec.k)


def state_dtype(spec) -> str:
    """The dtype the state reduction computes in: the accumulation dtype for reductions that
    accumulate (sums, exponentials), the data's dtype for selections."""
    if spec.red.family in (SELECT, KMIN):
        return spec.dtype
    return spec.accumulation_dtype


def state_spec(spec):
    """The reduction of the same variables whose outputs hold the partial state of ``spec``."""
    red = spec.red
    family = red.family
    table = _STATE_REDUCTION[family]
    formulas = spec.formulas
    if family == SELECT:
        name = table[red.selection_kind]
    elif family == LSE and getattr(red, "weighted", False):
        name = table["weighted"]
    elif family == SOFTMAX:  # (m, sum exp(F - m), sum exp(F - m) G) = Max_SumShiftExpWeight(F, [1, G])
        name = table[""]
        formulas = (formulas[0], A.node("Concat", Const(1.0), formulas[1]))
    else:
        name = table[""]
    dtype = state_dtype(spec)
    return spec.with_(reduction=name, formulas=formulas, dtype=dtype,
                      dtype_acc="auto" if dtype == spec.accumulation_dtype else spec.dtype_acc)


def states_from_outputs(evaluate, spec, args, *, nx, ny, batch_shape, ranges=None) -> tuple:
    """The state fields of ``spec`` computed by ``evaluate`` (a backend's ``evaluate``) through
    :func:`state_spec`: the contract's default ``evaluate_states``."""
    sspec = state_spec(spec)
    if sspec.dtype != spec.dtype and args:
        ad = adapter_for(args[0])
        args = [ad.astype(a, sspec.dtype) for a in args]
    extra = {} if ranges is None else {"ranges": ranges}
    outs = tuple(evaluate(sspec, args, nx=nx, ny=ny, batch_shape=tuple(batch_shape), **extra))
    return _split(spec, outs)


def _split(spec, outs) -> tuple:
    """State fields from the outputs of :func:`state_spec`."""
    family = spec.red.family
    if family in (LSE, SOFTMAX):  # one output [m, s...] or [m, z, t...]
        out = outs[0]
        fields, start = [], 0
        for f in layout(spec):
            fields.append(out[..., start:start + f.size])
            start += f.size
        return tuple(fields)
    return tuple(outs)


def offset(spec, state: tuple, j0: int) -> tuple:
    """``state`` with its indices shifted by ``j0`` (-1, "nothing", stays -1)."""
    if not j0:
        return state
    fields = layout(spec)
    if not any(f.kind == INDEX for f in fields):
        return state
    xp = _namespace(spec, state)
    return tuple(
        xp.where(s >= 0, s + j0, s) if f.kind == INDEX else s for f, s in zip(fields, state)
    )


def combine(spec, a: tuple, b: tuple) -> tuple:
    """The state of j-pieces ``a`` then ``b`` (``a``'s indices before ``b``'s: ties keep ``a``)."""
    xp = _namespace(spec, a)
    red = spec.red
    merged = red.combine(xp, _internal(spec, xp, a), _internal(spec, xp, b))
    return _external(spec, xp, merged)


def finalize(spec, state: tuple) -> tuple:
    """The outputs of the call whose partial state is ``state``, shaped and typed as a
    backend's outputs (``(*batch_shape, nx, dim)``, the call's dtype, int64 indices)."""
    xp = _namespace(spec, state)
    return tuple(spec.red.finalize(xp, _internal(spec, xp, state)))


def _internal(spec, xp, state: tuple) -> tuple:
    """The state in the form the reduction's own ``tile``/``combine``/``finalize`` use."""
    family = spec.red.family
    if family == SUM:
        return (state[0], None)
    if family == KMIN:
        k = spec.k
        vals, idx = (s.reshape(*s.shape[:-1], k, s.shape[-1] // k) for s in state)
        # slots no row uses (a piece of j shorter than K) are dropped: the merge then never
        # ranks an unused +inf slot before a real +inf value of a later piece
        present = (idx >= 0).reshape(-1, k, idx.shape[-1])
        used = max(1, int(present.any(-1).any(0).sum())) if present.shape[0] else 1
        return (vals[..., :used, :], idx[..., :used, :])
    return tuple(state)


def _external(spec, xp, state: tuple) -> tuple:
    """State fields from the reduction's own form (see :func:`_internal`)."""
    family = spec.red.family
    if family == SUM:
        total = state[0] if state[1] is None else state[0] + state[1]
        return (total,)
    if family == KMIN:
        vals, idx = state
        missing = spec.k - vals.shape[-2]
        if missing > 0:
            vals = xp.cat_j([vals, xp.full_j(vals, missing, math.inf)])
            idx = xp.cat_j([idx, xp.full_j(idx, missing, -1)])
        return tuple(s.reshape(*s.shape[:-2], s.shape[-2] * s.shape[-1]) for s in (vals, idx))
    return tuple(state)


def _namespace(spec, state):
    """The reference namespace for the arrays of ``state`` (the reduction's ``xp``)."""
    like = next(s for s, f in zip(state, layout(spec)) if f.kind != INDEX)
    work = state_dtype(spec)
    acc = next((f for f in layout(spec) if f.kind == ACCUMULATOR), None)
    return adapter_for(like).namespace(work, spec.accumulation_dtype if acc else work, spec.dtype,
                                       k=spec.k, kahan=False, like=like)
