"""Deliberately broken backends: each wraps the reference backend and plants one bug.

They exist to prove that the conformance suite catches real mistakes (see
``test_meta.py``).  Load one with ``pytest conformance --backend
conformance.meta.broken:NAME`` where NAME is one of :data:`FACTORIES`.

Backends never differentiate: a gradient is a reduction of a symbolic gradient
formula that :mod:`polykeops.torch.autograd` hands to the same backend.  The two
gradient bugs are therefore planted in what the backend does with the gradient
reductions it receives during a backward pass (found by looking for
``GenredFunction.backward`` on the call stack -- a test device, not a technique).
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import torch

from polykeops.backends.contract import Backend
from polykeops.backends.reference import ReferenceBackend
from polykeops.formula import algebra as A
from polykeops.formula.nodes import CAT_J, CAT_P, substitute, walk
from polykeops.formula.spec import swap_category


class _Wrapper(Backend):
    """A correct backend: forwards everything to the reference backend.

    Only the wrappers that forward ``ranges`` (``handles_ranges``) claim block-sparse
    reductions; the others do not (the suite skips its ranges tests for them).
    """

    name = "meta-correct"
    priority = -100  # never chosen automatically
    bug = "none"
    handles_ranges = True

    def __init__(self):
        self.inner = ReferenceBackend()
        self.capabilities = replace(self.inner.capabilities, ranges=self.handles_ranges)

    def availability(self):
        return True, f"reference backend with a planted bug: {self.bug}"

    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        extra = {} if ranges is None else {"ranges": ranges}
        return self.inner.evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape, **extra)


class _NoRanges(_Wrapper):
    """A wrapper whose planted bug ignores ``ranges``: it does not claim block-sparse reductions."""

    handles_ranges = False


def _backward_locals():
    """Locals of the innermost ``GenredFunction.backward`` on the stack (None outside a backward pass)."""
    frame = sys._getframe(1)
    while frame is not None:
        if (
            frame.f_code.co_name == "backward"
            and frame.f_globals.get("__name__", "").endswith("torch.autograd")
            and "ctx" in frame.f_locals
        ):
            return frame.f_locals
        frame = frame.f_back
    return None


class WrongSinDerivative(_NoRanges):
    """d/dx sin(x) computed as -cos(x).

    In gradient reductions, Cos(X) is negated where the forward formula had Sin(X).
    """

    name = "meta-sin-derivative"
    bug = "the derivative of Sin has the wrong sign"

    def evaluate(self, spec, args, *, nx, ny, batch_shape):
        ctx = _backward_locals()
        if ctx is not None and "spec" in ctx:
            fwd = ctx["spec"]
            fwd_nodes = {n for f in fwd.formulas for n in walk(f)}
            sin_args = {n.args[0] for n in fwd_nodes if n.op == "Sin"}
            sin_args |= {
                substitute(x, {v: swap_category(v) for v in walk(x) if v.op == "Var"}) for x in sin_args
            }
            mapping = {}
            for f in spec.formulas:
                for n in walk(f):
                    if n.op == "Cos" and n.args[0] in sin_args and n not in fwd_nodes:
                        mapping[n] = A.neg(n)
            if mapping:
                spec = spec.with_(formulas=tuple(substitute(f, mapping) for f in spec.formulas))
        return super().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape)


class DroppedLastTile(_NoRanges):
    """Tiles of 32 j's; a last, partial tile is dropped (the classic ``range(0, ny - TJ + 1, TJ)``)."""

    name = "meta-dropped-tile"
    bug = "the last partial tile of j is dropped"
    TJ = 32

    def evaluate(self, spec, args, *, nx, ny, batch_shape):
        if ny > self.TJ and ny % self.TJ:
            keep = ny - ny % self.TJ
            args = [
                _contiguous(a[..., :keep, :]) if v.cat == CAT_J else a for v, a in zip(spec.variables, args)
            ]
            ny = keep
        return super().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape)


class ArgMinPrefersLast(_NoRanges):
    """Min / ArgMin / Min_ArgMin return the *last* of equal values (j is scanned backwards)."""

    name = "meta-argmin-last"
    bug = "argmin prefers the last of equal values"

    def evaluate(self, spec, args, *, nx, ny, batch_shape):
        red = spec.red
        if not (red.is_selection and not red.uses_k and red.selection_kind == "min"):
            return super().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape)
        flipped = [_flip_j(a) if v.cat == CAT_J else a for v, a in zip(spec.variables, args)]
        outs = super().evaluate(spec, flipped, nx=nx, ny=ny, batch_shape=batch_shape)
        fixed = []
        for o, meta in zip(outs, spec.outputs()):
            fixed.append(ny - 1 - o if meta.kind == "index" else o)
        return tuple(fixed)


def _contiguous(a):
    if isinstance(a, torch.Tensor):
        return a.contiguous()
    import numpy as np

    return np.ascontiguousarray(a)


def _flip_j(a):
    if isinstance(a, torch.Tensor):
        return a.flip(-2).contiguous()
    return a[..., ::-1, :].copy()


class BatchReusesFirst(_NoRanges):
    """With broadcast batch dimensions, every batch gets the result of batch 0."""

    name = "meta-batch0"
    bug = "batch broadcasting reuses batch 0"

    def evaluate(self, spec, args, *, nx, ny, batch_shape):
        nb = len(batch_shape)
        broadcasting = any(any(s == 1 and b > 1 for s, b in zip(a.shape[:nb], batch_shape)) for a in args)
        if nb == 0 or not broadcasting:
            return super().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape)
        first = [a[(slice(0, 1),) * nb] for a in args]
        outs = super().evaluate(spec, first, nx=nx, ny=ny, batch_shape=(1,) * nb)
        return tuple(_expand(o, tuple(batch_shape) + tuple(o.shape[nb:])) for o in outs)


def _expand(o, shape):
    if isinstance(o, torch.Tensor):
        return o.expand(shape).contiguous()
    import numpy as np

    return np.ascontiguousarray(np.broadcast_to(o, shape))


class LogSumExpWithoutShift(_NoRanges):
    """LogSumExp computed as log(sum(exp(F))): overflows (and underflows) for large |F|."""

    name = "meta-lse-no-shift"
    bug = "logsumexp without the max shift"

    def evaluate(self, spec, args, *, nx, ny, batch_shape):
        if spec.reduction not in ("LogSumExp", "LogSumExpWeight"):
            return super().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape)
        f = A.node("Exp", spec.formulas[0])
        if spec.reduction == "LogSumExpWeight":
            f = A.mul(f, spec.formulas[1])
        naive = spec.with_(reduction="Sum", formulas=(f,))
        (s,) = super().evaluate(naive, args, nx=nx, ny=ny, batch_shape=batch_shape)
        return (s.log() if isinstance(s, torch.Tensor) else __import__("numpy").log(s),)


class ParameterGradientNotSummed(_NoRanges):
    """The gradient w.r.t. a parameter keeps the contribution of the first row (i) only."""

    name = "meta-param-grad"
    bug = "parameter gradients are not summed over i"

    def evaluate(self, spec, args, *, nx, ny, batch_shape):
        outs = super().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape)
        ctx = _backward_locals()
        if ctx is None or spec.reduction != "Sum" or "p" not in ctx or "spec" not in ctx:
            return outs
        if ctx["spec"].variables[ctx["p"]].cat != CAT_P:
            return outs
        res = outs[0].clone() if isinstance(outs[0], torch.Tensor) else outs[0].copy()
        res[..., 1:, :] = 0
        return (res,) + tuple(outs[1:])


class RangesDropLastInterval(_Wrapper):
    """Block-sparse ranges: an i-range with several j intervals skips the last one (the classic
    ``range(start, end - 1)`` when walking ``redranges_y[slices_x[k - 1]:slices_x[k]]``)."""

    name = "meta-ranges-drop-last"
    bug = "the last j interval of an i-range with several intervals is skipped"

    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        if ranges is not None:
            ranges = _drop_last_intervals(ranges)
        return super().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape, ranges=ranges)


def _drop_last_intervals(ranges):
    """``(ranges_x, slices_x, redranges_y)`` with the last interval of multi-interval ranges emptied."""
    ranges_x, slices_x, redranges_y = ranges
    is_torch = isinstance(redranges_y, torch.Tensor)
    slices = slices_x.detach().cpu().numpy() if is_torch else np.asarray(slices_x)
    red = (redranges_y.detach().cpu().numpy() if is_torch else np.asarray(redranges_y)).copy()
    for b in np.ndindex(*slices.shape[:-1]):
        start = 0
        for end in slices[b]:
            if end - start >= 2:
                red[b + (int(end) - 1,)] = 0  # an empty interval [0, 0)
            start = int(end)
    if is_torch:
        red = torch.from_numpy(red).to(redranges_y.device)
    return (ranges_x, slices_x, red)


class WrongOpReference(_NoRanges):
    """A faithful backend built on an op table whose reference implementation of Sin is wrong.

    Its factory, :func:`wrong_sin_ref`, plants the bug in ``OPS["Sin"].ref`` itself, for
    the whole process: the reference backend this wraps, ``polykeops.formula.evaluate``
    and the suite's formula probes all compute ``sin(x) (1 + 1/1000)``.  Only an oracle
    that does not evaluate with ``OpDef.ref`` sees it (run it alone: it changes the op
    table under every other backend of the process).
    """

    name = "meta-wrong-ref"
    bug = "the op table's reference implementation of Sin is off by 0.1%"


def _plant_wrong_sin_ref():
    from polykeops.formula.ops import OPS

    sin = OPS["Sin"]
    if not getattr(sin.ref, "planted", False):
        def wrong(xp, a):
            return xp.sin(a) * 1.001

        wrong.planted = True
        OPS["Sin"] = replace(sin, ref=wrong)


#: name -> zero-argument factory (each wraps the reference backend and changes nothing else)
FACTORIES = {
    "correct": _Wrapper,
    "sin_derivative": WrongSinDerivative,
    "dropped_tile": DroppedLastTile,
    "argmin_last": ArgMinPrefersLast,
    "batch0": BatchReusesFirst,
    "lse_no_shift": LogSumExpWithoutShift,
    "param_grad_not_summed": ParameterGradientNotSummed,
    "ranges_drop_last": RangesDropLastInterval,
}


def correct():
    return _Wrapper()


def sin_derivative():
    return WrongSinDerivative()


def dropped_tile():
    return DroppedLastTile()


def argmin_last():
    return ArgMinPrefersLast()


def batch0():
    return BatchReusesFirst()


def lse_no_shift():
    return LogSumExpWithoutShift()


def param_grad_not_summed():
    return ParameterGradientNotSummed()


def ranges_drop_last():
    return RangesDropLastInterval()


def wrong_sin_ref():
    """:class:`WrongOpReference`, after planting its bug in the op table (see there)."""
    _plant_wrong_sin_ref()
    return WrongOpReference()


__all__ = ["FACTORIES", "wrong_sin_ref"] + list(FACTORIES)
