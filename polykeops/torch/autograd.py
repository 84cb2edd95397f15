"""torch.autograd support: reductions as differentiable functions, to any order.

:class:`GenredFunction` evaluates a canonical spec with a backend.  Its backward
pass builds the symbolic gradient reductions (see
:mod:`polykeops.formula.reduction_grads`) and evaluates them through
:class:`GenredFunction` again, so ``create_graph=True`` and higher-order
derivatives work.  Gradients with respect to parameters and broadcast batch
dimensions are summed back to the shape of each argument.
"""

from __future__ import annotations

import torch

from ..backends import select_backend
from ..formula.nodes import CAT_I, CAT_J, CAT_P, Var, substitute
from ..formula.reduction_grads import lse_spec, selection_gradient, sum_like_gradient

#: value-selection reductions -> the variant that also returns the indices
_WITH_INDICES = {
    "Min": "Min_ArgMin",
    "Max": "Max_ArgMax",
    "KMin": "KMin_ArgKMin",
    "Min_ArgMin": "Min_ArgMin",
    "Max_ArgMax": "Max_ArgMax",
    "KMin_ArgKMin": "KMin_ArgKMin",
}


def _device_kind(args) -> str:
    for a in args:
        return a.device.type
    return "cpu"


def _evaluate(spec, args, nx, ny, batch_shape, backend):
    chosen = select_backend(backend, spec, "torch", _device_kind(args), bool(batch_shape))
    with torch.no_grad():
        return tuple(chosen.evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape))


class GenredFunction(torch.autograd.Function):
    """One reduction; inputs: (config, *args); outputs: the spec's outputs."""

    @staticmethod
    def forward(ctx, config, *args):
        spec, nx, ny, batch_shape, backend = config
        red = spec.red
        want_select = red.is_selection and red.differentiable and any(
            a.requires_grad for a in args
        )
        if want_select:
            full = spec.with_(reduction=_WITH_INDICES[spec.reduction])
            values, indices = _evaluate(full, args, nx, ny, batch_shape, backend)
            outs = (values, indices) if red.want_index else (values,)
        else:
            outs = _evaluate(spec, args, nx, ny, batch_shape, backend)
            indices = None
        ctx.config = config
        ctx.n_args = len(args)
        kinds = [o.kind for o in spec.outputs()]
        ctx.mark_non_differentiable(*[o for o, k in zip(outs, kinds) if k == "index"])
        saved = list(args) + [o for o, k in zip(outs, kinds) if k == "float"]
        if indices is not None:
            saved.append(indices)
        ctx.has_indices = indices is not None
        ctx.save_for_backward(*saved)
        return outs if len(outs) > 1 else outs[0]

    @staticmethod
    def backward(ctx, *gouts):
        spec, nx, ny, batch_shape, backend = ctx.config
        saved = ctx.saved_tensors
        args = list(saved[: ctx.n_args])
        rest = saved[ctx.n_args :]
        indices = rest[-1] if ctx.has_indices else None
        float_outs = rest[:-1] if ctx.has_indices else rest
        g = gouts[0]
        grads = [None]
        for p, a in enumerate(args):
            if not ctx.needs_input_grad[1 + p]:
                grads.append(None)
                continue
            if spec.red.is_selection:
                r = _selection_grad(spec, p, args, g, indices, nx, ny, batch_shape, backend)
            else:
                r = _sum_like_grad(spec, p, args, g, float_outs, nx, ny, batch_shape, backend)
            grads.append(_unbroadcast(r, a.shape))
        return tuple(grads)


def apply(spec, args, nx, ny, batch_shape, backend):
    """Evaluate a canonical spec through :class:`GenredFunction`; always returns a tuple."""
    out = GenredFunction.apply((spec, nx, ny, tuple(batch_shape), backend), *args)
    return out if isinstance(out, tuple) else (out,)


def reduce(spec, args, *, nx, ny, batch_shape, backend=None):
    """Entry point of the torch front end (canonical spec, normalised arguments)."""
    if torch.is_grad_enabled() and any(a.requires_grad for a in args):
        return apply(spec, args, nx, ny, batch_shape, backend)
    return _evaluate(spec, args, nx, ny, batch_shape, backend)


def _sum_like_grad(spec, p, args, g, outs, nx, ny, batch_shape, backend):
    plan = sum_like_gradient(spec, p)
    extras = []
    for name in plan.extras:
        if name == "G":
            extras.append(g.contiguous())
        elif name == "OUT":
            extras.append(outs[0])
        else:  # "LSE"
            extras.append(apply(lse_spec(spec), args, nx, ny, batch_shape, backend)[0])
    gspec = plan.spec
    if gspec.axis == 0:
        res = apply(gspec.canonical(), args + extras, ny, nx, batch_shape, backend)[0]
    else:
        res = apply(gspec, args + extras, nx, ny, batch_shape, backend)[0]
    if plan.sum_rows:
        res = res.sum(-2)
    return res


def _selection_grad(spec, p, args, g, indices, nx, ny, batch_shape, backend):
    """Gradient of Min/Max/KMin values: the symbolic gradient at the selected pairs only."""
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
    new_args.append(e_rows)
    h = substitute(h, mapping)
    variables = tuple(mapping.get(var, var) for var in spec.variables) + (e,)
    gspec = spec.with_(reduction="Sum", formulas=(h,), variables=variables, k=None)
    per_row = apply(gspec, new_args, rows, 1, batch_shape, backend)[0]  # (*b, rows, dv)
    if v.cat == CAT_I:
        return per_row.reshape(*per_row.shape[:-2], nx, q, v.dim).sum(-2)
    if v.cat == CAT_P:
        return per_row.sum(-2)
    out_shape = (*per_row.shape[:-2], ny, v.dim)
    idx = flat_idx.expand(*per_row.shape[:-2], rows).unsqueeze(-1).expand(*per_row.shape[:-1], v.dim)
    return torch.zeros(out_shape, dtype=per_row.dtype, device=per_row.device).scatter_add(
        -2, idx, per_row
    )


def _unbroadcast(r, shape):
    """Sum ``r`` over the dimensions where ``shape`` broadcasts (size 1 or missing)."""
    shape = tuple(shape)
    while r.dim() > len(shape):
        r = r.sum(0)
    dims = tuple(i for i, (s, t) in enumerate(zip(shape, r.shape)) if s == 1 and t != 1)
    if dims:
        r = r.sum(dims, keepdim=True)
    return r.reshape(shape)


__all__ = ["GenredFunction", "reduce", "apply", "CAT_P"]
