"""torch.autograd and torch.func support: reductions as differentiable functions.

:class:`GenredFunction` evaluates a canonical spec with a backend.  Its rules
are built from the formula layer's symbolic derivatives and evaluated through
:class:`GenredFunction` again, so every rule is itself differentiable:

* ``backward`` (reverse mode, any order; ``create_graph=True`` works): the
  gradient reductions of :mod:`polykeops.formula.reduction_grads`;
* ``jvp`` (forward mode: ``torch.func.jvp``, ``jacfwd``, ``hessian``): a Sum
  reduction of the directional derivative ``diff(F, v, t)``;
* ``vmap`` (``torch.vmap``): the vmapped dimension becomes one more leading
  batch dimension of the reduction.

Gradients with respect to parameters and broadcast batch dimensions are summed
back to the shape of each argument.  Min/Max/KMin values are differentiated at
the selected pairs (their indices are computed alongside the values).
"""

from __future__ import annotations

import torch

from ..backends.dispatch import dispatch
from ..formula.nodes import CAT_I, CAT_J, CAT_P, Var, substitute
from ..formula.reduction_grads import (
    lse_spec,
    selection_gradient,
    selection_jvp,
    sum_like_gradient,
    sum_like_jvp,
)
from .custom_op import WITH_INDICES, op_apply, op_call, reduce_op, traced


def _evaluate(call, args):
    with torch.no_grad():
        return dispatch(call, args)


def _tracks_indices(spec) -> bool:
    """Whether the function returns the selected indices as a hidden last output."""
    red = spec.red
    return red.is_selection and red.differentiable and not red.want_index


def _splits_lse(spec) -> bool:
    """Whether the function computes a LogSumExp from its stable state ``(m, s)`` (a
    Max_SumShiftExp reduction), returned as a hidden last output for an accurate backward (as
    pykeops does); only where the state is kept in the output dtype (no wider accumulator)."""
    return (spec.reduction in ("LogSumExp", "LogSumExpWeight")
            and spec.accumulation_dtype == spec.dtype and spec.dtype != "float16")


def _hidden_outputs(spec) -> int:
    return 1 if _tracks_indices(spec) or _splits_lse(spec) else 0


def _lse_from_state(ms):
    """``OUT = m + log s`` from the Max_SumShiftExp output ``(m, s)`` (the shift 0 where m is
    infinite or NaN, as the LogSumExp reduction's finalize)."""
    m, s = ms[..., :1], ms[..., 1:]
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m)) + torch.log(s)


class GenredFunction(torch.autograd.Function):
    """One reduction: ``apply(call, *args)`` for a
    :class:`~polykeops.backends.reduction_call.ReductionCall` ``call``.

    Outputs: the spec's outputs, plus the selected indices for Min/Max/KMin
    (use :func:`apply`, which hides them).
    """

    @staticmethod
    def forward(call, *args):
        red = call.spec.red
        if red.is_selection and red.differentiable:
            return _evaluate(call.with_spec(call.spec.with_(reduction=WITH_INDICES[call.spec.reduction])),
                             args)
        if _splits_lse(call.spec):
            raw = "Max_SumShiftExpWeight" if call.spec.reduction == "LogSumExpWeight" else "Max_SumShiftExp"
            (ms,) = _evaluate(call.with_spec(call.spec.with_(reduction=raw)), args)
            with torch.no_grad():
                return _lse_from_state(ms), ms
        return _evaluate(call, args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        call, *args = inputs
        spec = call.spec
        ctx.call = call
        ctx.n_args = len(args)
        ctx.has_indices = spec.red.is_selection and spec.red.differentiable
        if _splits_lse(spec):  # (OUT, hidden stable state (m, s))
            ctx.mark_non_differentiable(output[1])
            indices, values = [output[1]], [output[0]]
            ctx.has_indices = True
        else:
            indices = [o for o in output if not o.is_floating_point()]
            values = [o for o in output if o.is_floating_point()]
            ctx.mark_non_differentiable(*indices)
        saved = list(args) + values + (indices[-1:] if ctx.has_indices else [])
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, *gouts):
        call = ctx.call
        spec = call.spec
        args, float_outs, indices = _unpack(ctx)
        g = gouts[0]
        grads = [None]
        for p, a in enumerate(args):
            if not ctx.needs_input_grad[1 + p]:
                grads.append(None)
                continue
            if spec.red.is_selection:
                r = _selection_grad(call, p, args, g, indices)
            else:
                r = _sum_like_grad(call, p, args, g, float_outs, indices)
            grads.append(_unbroadcast(r, a.shape))
        return tuple(grads)

    @staticmethod
    def jvp(ctx, *tangents):
        call = ctx.call
        spec = call.spec
        args, float_outs, indices = _unpack(ctx)
        tangents = tangents[1:]
        positions = [p for p, t in enumerate(tangents) if t is not None]
        outs_meta = spec.outputs()
        if not positions:
            res = [_zeros_out(o, args, call.nx, call.batch_shape) for o in outs_meta]
        elif spec.red.is_selection:
            res = [_selection_jvp(call, positions, args, tangents, indices)]
            if spec.red.want_index:
                res.append(None)
        else:
            res = [_sum_like_jvp(call, positions, args, tangents, float_outs)]
        if _hidden_outputs(spec):
            res.append(None)
        return tuple(res) if len(res) > 1 else res[0]

    @staticmethod
    def vmap(info, in_dims, call, *args):
        size = info.batch_size
        ranges = call.ranges
        moved = []
        for a, d in zip(args, in_dims[1:]):
            moved.append(a.unsqueeze(0) if d is None else a.movedim(d, 0))
        if ranges is not None:  # batched ranges get a broadcast dimension for the new batch axis
            ranges = tuple(r.unsqueeze(0) if r.dim() > (1 if k in (1, 4) else 2) else r
                           for k, r in enumerate(ranges))
        new_call = call.with_batch((size,) + call.batch_shape, ranges)
        outs = GenredFunction.apply(new_call, *[m.contiguous() for m in moved])
        outs = outs if isinstance(outs, tuple) else (outs,)
        dims = tuple(0 for _ in outs)
        return (outs, dims) if len(outs) > 1 else (outs[0], 0)


def _unpack(ctx):
    saved = ctx.saved_tensors
    args = list(saved[: ctx.n_args])
    rest = saved[ctx.n_args :]
    indices = rest[-1] if ctx.has_indices else None
    float_outs = rest[:-1] if ctx.has_indices else rest
    return args, float_outs, indices


def _zeros_out(meta, args, nx, batch_shape):
    if meta.kind == "index":
        return None
    ref = args[0]
    return torch.zeros((*batch_shape, nx, meta.dim), dtype=ref.dtype, device=ref.device)


def apply(call, args):
    """Evaluate ``call`` through :class:`GenredFunction` (through the custom operator
    ``polykeops::reduce`` while traced); returns the spec's outputs as a tuple."""
    if args and traced(args):
        return op_apply(call, args)
    out = GenredFunction.apply(call, *args)
    out = out if isinstance(out, tuple) else (out,)
    return out[:-1] if _hidden_outputs(call.spec) else out


def reduce(call, args):
    """Entry point of the torch front end (a canonical call, normalised arguments)."""
    if args and traced(args):  # torch.compile / torch.export: one opaque operator per reduction
        return op_apply(call, args)
    if torch.is_grad_enabled() and any(a.requires_grad for a in args) or _is_functorch(args):
        return apply(call, args)
    return _evaluate(call, args)


def _is_functorch(args) -> bool:
    """True for tensors wrapped by torch.func transforms (vmap, grad, jvp)."""
    try:
        from torch._C._functorch import is_functorch_wrapped_tensor
    except ImportError:  # pragma: no cover - older torch
        return False
    return any(is_functorch_wrapped_tensor(a) for a in args)


# ---------------------------------------------------------------------------
# reverse mode
# ---------------------------------------------------------------------------


def _extras(names, call, args, g, outs, state=None):
    extras = []
    for name in names:
        if name == "G":
            extras.append(g.contiguous())
        elif name == "OUT":
            extras.append(outs[0])
        elif name == "M":  # the max of the stable state: a constant shift
            extras.append(state[..., :1].contiguous())
        elif name == "LOGS":
            # log s, carrying the dependence of OUT (= m + log s) for higher orders: its value is
            # log s exactly (OUT - OUT.detach() is 0), its derivative that of OUT
            out = outs[0]
            extras.append(((out - out.detach()) + torch.log(state[..., 1:])).contiguous())
        else:  # "LSE"
            extras.append(apply(call.with_spec(lse_spec(call.spec)), args)[0])
    return extras


def _sum_like_grad(call, p, args, g, outs, state=None):
    plan = sum_like_gradient(call.spec, p, split_lse=state is not None)
    extras = _extras(plan.extras, call, args, g, outs, state)
    res = apply(call.gradient(plan.spec), args + extras)[0]
    if plan.sum_rows:
        res = res.sum(-2)
    return res


def _gather_rows(spec, args, flat_idx, q):
    """Arguments evaluated at the selected pairs: one row per (i, q); j-variables become i-variables."""
    rows = flat_idx.shape[-1]
    new_args, mapping = [], {}
    for var, a in zip(spec.variables, args):
        if var.cat == CAT_I:
            new_args.append(a.repeat_interleave(q, dim=-2))
        elif var.cat == CAT_J:
            shape = torch.broadcast_shapes(a.shape[:-2], flat_idx.shape[:-1])
            src = a.expand(*shape, *a.shape[-2:])
            idx = flat_idx.expand(*shape, rows).unsqueeze(-1).expand(*shape, rows, a.shape[-1])
            new_args.append(torch.gather(src, -2, idx))
            mapping[var] = Var(var.index, var.dim, CAT_I)
        else:
            new_args.append(a)
    return new_args, mapping


def _selection_grad(call, p, args, g, indices):
    """Gradient of Min/Max/KMin values: the symbolic gradient at the selected pairs only."""
    spec, nx, ny = call.spec, call.nx, call.ny
    h, e = selection_gradient(spec, p)
    v = spec.variables[p]
    d = spec.formulas[0].dim
    q = indices.shape[-1]  # D for Min/Max, K*D for KMin
    rows = nx * q
    # cotangent per selected pair: component q % D of e gets g[..., q]
    comp = torch.arange(q, device=g.device) % d
    onehot = torch.nn.functional.one_hot(comp, d).to(g.dtype)  # (q, d)
    e_rows = (g.unsqueeze(-1) * onehot).reshape(*g.shape[:-2], rows, d)
    flat_idx = indices.reshape(*indices.shape[:-2], rows)
    # index -1: a row that selected nothing (block-sparse ranges, or fewer than K pairs):
    # evaluated at pair 0, then dropped, so that no gradient comes from it
    missing = flat_idx < 0
    flat_idx = flat_idx.clamp_min(0)
    new_args, mapping = _gather_rows(spec, args, flat_idx, q)
    new_args.append(e_rows)
    h = substitute(h, mapping)
    variables = tuple(mapping.get(var, var) for var in spec.variables) + (e,)
    gspec = spec.with_(reduction="Sum", formulas=(h,), variables=variables, k=None)
    per_row = apply(call.gradient(gspec, nx=rows, ny=1, ranges=None), new_args)[0]  # (*b, rows, dv)
    per_row = torch.where(missing.unsqueeze(-1), per_row.new_zeros(()), per_row)
    if v.cat == CAT_I:
        return per_row.reshape(*per_row.shape[:-2], nx, q, v.dim).sum(-2)
    if v.cat == CAT_P:
        return per_row.sum(-2)
    out_shape = (*per_row.shape[:-2], ny, v.dim)
    idx = flat_idx.expand(*per_row.shape[:-2], rows).unsqueeze(-1).expand(*per_row.shape[:-1], v.dim)
    return torch.zeros(out_shape, dtype=per_row.dtype, device=per_row.device).scatter_add(
        -2, idx, per_row
    )


# ---------------------------------------------------------------------------
# forward mode
# ---------------------------------------------------------------------------


def _sum_like_jvp(call, positions, args, tangents, outs):
    plan = sum_like_jvp(call.spec, positions)
    extras = _extras(plan.extras, call, args, None, outs)
    targs = [tangents[p].contiguous() for p in positions]
    return apply(call.gradient(plan.spec), args + targs + extras)[0]


def _selection_jvp(call, positions, args, tangents, indices):
    spec, nx = call.spec, call.nx
    df, tvars = selection_jvp(spec, positions)
    d = spec.formulas[0].dim
    q = indices.shape[-1]
    rows = nx * q
    flat_idx = indices.reshape(*indices.shape[:-2], rows)
    ext = spec.with_(variables=tuple(spec.variables) + tuple(tvars[p] for p in positions))
    all_args = args + [tangents[p] for p in positions]
    new_args, mapping = _gather_rows(ext, all_args, flat_idx, q)
    h = substitute(df, mapping)
    variables = tuple(mapping.get(var, var) for var in ext.variables)
    jspec = spec.with_(reduction="Sum", formulas=(h,), variables=variables, k=None)
    per_row = apply(call.gradient(jspec, nx=rows, ny=1, ranges=None), new_args)[0]  # (*b, rows, d)
    comp = torch.arange(q, device=per_row.device) % d
    onehot = torch.nn.functional.one_hot(comp, d).to(per_row.dtype)
    return (per_row.reshape(*per_row.shape[:-2], nx, q, d) * onehot).sum(-1)


def _unbroadcast(r, shape):
    """Sum ``r`` over the dimensions where ``shape`` broadcasts (size 1 or missing)."""
    shape = tuple(shape)
    while r.dim() > len(shape):
        r = r.sum(0)
    dims = tuple(i for i, (s, t) in enumerate(zip(shape, r.shape)) if s == 1 and t != 1)
    if dims:
        r = r.sum(dims, keepdim=True)
    return r.reshape(shape)


# ---------------------------------------------------------------------------
# the custom operator polykeops::reduce (torch.compile, torch.export): its autograd
# ---------------------------------------------------------------------------


def _op_setup_context(ctx, inputs, output):
    spec, nx, ny, batch, backend, device_id, args = inputs
    ctx.call = op_call(spec, nx, ny, batch, backend, device_id, args)
    ctx.n_args, ctx.n_batch = len(args), len(batch)
    ctx.save_for_backward(*args, *output)


def _op_backward(ctx, grads):
    saved = ctx.saved_tensors
    args, outs = list(saved[: ctx.n_args]), list(saved[ctx.n_args :])
    call = ctx.call
    spec = call.spec
    g = grads[0]
    result = []
    for p, a in enumerate(args):
        if g is None or not a.is_floating_point():
            result.append(None)
            continue
        if spec.red.is_selection:
            if not spec.red.differentiable:
                result.append(None)
                continue
            r = _selection_grad(call, p, args, g, outs[-1])
        else:
            r = _sum_like_grad(call, p, args, g, [o for o in outs if o.is_floating_point()])
        result.append(_unbroadcast(r, a.shape))
    return None, None, None, [None] * ctx.n_batch, None, None, result


reduce_op.register_autograd(_op_backward, setup_context=_op_setup_context)


__all__ = ["GenredFunction", "apply", "reduce"]
