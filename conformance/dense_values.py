"""Dense values: a drawn case's formulas evaluated on the whole ``M x N`` grid with torch, and reduced.

The formulas are evaluated with the independent definitions of
:mod:`.dense_ops` (one per op, named like the op; never the op table's own
``OpDef.ref``, so that a wrong ``ref`` cannot certify itself), in float64 unless
asked otherwise, then reduced with torch operations written here: ``sum``,
``logsumexp``, ``softmax``, first-index ``min``/``argmin`` with NaN winning, a
stable NaN-first ``sort`` for the K-reductions.  No backend is involved.

:func:`dense` also gives the perturbed values and first-order rounding bounds
from which :mod:`.tolerances` estimates the noise a correct backend may make.
Block-sparse ranges are applied through the masks of :mod:`.ranges_mask`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from polykeops.backends.arrays.torch import TorchNamespace
from polykeops.formula.nodes import CAT_I, CAT_J, walk
from polykeops.formula.ops import OPS

from .dense_ops import definition
from .ranges_mask import apply_mask, masked_value, oriented_mask, ranges_mask

F64 = torch.float64
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}


@contextmanager
def single_threaded():
    """torch on one thread while the oracle computes: many small dense ops, and on a busy
    machine torch's thread pool waits for descheduled threads (10x slower); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)



def batch_ndim(spec, arrays) -> int:
    nb = 0
    for v, a in zip(spec.variables, arrays):
        nb = max(nb, a.dim() - (1 if v.cat not in (CAT_I, CAT_J) else 2))
    return nb


def full_shape(spec, arrays, M: int, N: int) -> tuple:
    nb = batch_ndim(spec, arrays)
    shapes = []
    for v, a in zip(spec.variables, arrays):
        lead = 1 if v.cat not in (CAT_I, CAT_J) else 2
        b = tuple(a.shape[: a.dim() - lead])
        shapes.append((1,) * (nb - len(b)) + b)
    batch = tuple(torch.broadcast_shapes(*shapes)) if shapes else ()
    return batch + (M, N)


def grid_view(v, a, nb: int):
    """``a`` (Genred layout) viewed on the (batch, M, N, dim) grid."""
    lead = 1 if v.cat not in (CAT_I, CAT_J) else 2
    b = tuple(a.shape[: a.dim() - lead])
    pad = (1,) * (nb - len(b)) + b
    if v.cat == CAT_I:
        return a.reshape(pad + (a.shape[-2], 1, a.shape[-1]))
    if v.cat == CAT_J:
        return a.reshape(pad + (1, a.shape[-2], a.shape[-1]))
    return a.reshape(pad + (1, 1, a.shape[-1]))


def sum_back(t, v, a_shape, nb: int):
    """A grid-shaped tensor summed back to the shape of the variable's array (the adjoint of grid_view)."""
    lead = 1 if v.cat not in (CAT_I, CAT_J) else 2
    b = tuple(a_shape[: len(a_shape) - lead])
    pad = (1,) * (nb - len(b)) + b
    if v.cat == CAT_I:
        t = t.sum(-2)
        target = pad + tuple(a_shape[-2:])
    elif v.cat == CAT_J:
        t = t.sum(-3)
        target = pad + tuple(a_shape[-2:])
    else:
        t = t.sum((-3, -2))
        target = pad + (a_shape[-1],)
    dims = tuple(k for k in range(nb) if target[k] == 1 and t.shape[k] != 1)
    if dims:
        t = t.sum(dims, keepdim=True)
    return t.reshape(a_shape)




def op_function(name: str):
    """``f(*args, *params)`` computing the op ``name`` on torch tensors: its independent definition
    (:mod:`.dense_ops`), or for an op that has none (a third party's), its ``OpDef.ref``."""
    fn = definition(name)
    if fn is not None:
        return fn
    ref = OPS[name].ref

    def through_ref(*args):
        dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor))
        return ref(TorchNamespace(dtype), *args)

    return through_ref


def constant(value, dim: int, dtype) -> torch.Tensor:
    return torch.full((dim,), float(value), dtype=dtype)


def evaluate(formula, values: dict, dtype=F64):
    """``formula`` on torch tensors that broadcast together; ``values`` maps each ``Var`` index to one."""
    memo = {}
    for n in walk(formula):
        if n.op == "Var":
            memo[n] = values[n.index]
        elif n.op in ("Const", "Zero"):
            memo[n] = constant(n.params[0] if n.op == "Const" else 0, n.dim, dtype)
        else:
            memo[n] = op_function(n.op)(*[memo[a] for a in n.args], *n.params)
    return memo[formula]


def dense(spec, arrays, M: int, N: int, dtype=F64, grid_leaves=None, perturb=None, bounds=None):
    """The formulas on the grid, oriented ``(*batch, R, C, dim)``: R indexes the output, C is reduced.

    ``perturb=(eps, seed)``: every intermediate value v is moved by ``+- 16 eps S_v``
    (random signs per element; ``S_v`` the largest magnitude in v's sub-formula),
    as the rounding of a backend that computes in another order may move it --
    which flips discontinuous ops (``Round``, ``IfElse``, comparisons...) whose
    argument is within rounding distance of a jump.  With a list ``bounds``, it
    receives per formula ``sum over nodes v of |dF/dv| S_v`` (oriented like the
    values): the first-order bound of the rounding error, in units of eps.
    """
    nb = batch_ndim(spec, arrays)
    shape = full_shape(spec, arrays, M, N)
    values = {}
    for pos, (v, a) in enumerate(zip(spec.variables, arrays)):
        if grid_leaves is not None:
            values[v.index] = grid_leaves[pos]
        else:
            values[v.index] = grid_view(v, a.to(dtype), nb)
    outs = []
    for f in spec.formulas:
        if perturb is None:
            val = evaluate(f, values, dtype)
        else:
            val, bound = _evaluate_perturbed(f, dtype, values, shape, *perturb, bound=bounds is not None)
            if bounds is not None:
                bound = bound.expand(shape + (f.dim,))
                bounds.append((bound.transpose(-3, -2) if spec.axis == 0 else bound).contiguous())
        if not isinstance(val, torch.Tensor):  # pragma: no cover - evaluate returns tensors
            val = torch.as_tensor(val, dtype=dtype)
        val = val.to(dtype)
        while val.dim() < len(shape) + 1:
            val = val.unsqueeze(0)
        val = val.expand(shape + (f.dim,))
        if spec.axis == 0:
            val = val.transpose(-3, -2)
        outs.append(val if grid_leaves is not None else val.contiguous())
    return outs


def _evaluate_perturbed(formula, dtype, values, shape, eps: float, seed: int, bound: bool = False):
    nodes = list(walk(formula))
    width = max(n.dim for n in nodes)
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, shape + (2 * width,), generator=gen).to(dtype) * 2 - 1
    memo, scale, deltas = {}, {}, []
    for k, n in enumerate(nodes):
        if n.op == "Var":
            memo[n] = values[n.index]
            scale[n] = memo[n].detach().abs()
            continue
        if n.op in ("Const", "Zero"):
            memo[n] = constant(n.params[0] if n.op == "Const" else 0, n.dim, dtype)
            scale[n] = memo[n].abs()
            continue
        val = op_function(n.op)(*[memo[a] for a in n.args], *n.params)
        s_n = val.detach().abs()
        for a in n.args:
            s_a = scale[a] if scale[a].shape[-1] in (1, s_n.shape[-1]) else scale[a].amax(-1, keepdim=True)
            s_n = torch.maximum(s_n, s_a)
        d = val.shape[-1]
        off = k % (2 * width - d + 1)
        val = val + (16 * eps) * s_n * signs[..., off : off + d]
        if bound and val.is_floating_point():
            delta = torch.zeros(val.shape, dtype=val.dtype, requires_grad=True)
            deltas.append((delta, s_n))
            val = val + delta
        memo[n] = val
        scale[n] = s_n
    out = memo[formula]
    if not bound:
        return out, None
    total = torch.zeros(shape + (1,), dtype=dtype)
    if deltas and isinstance(out, torch.Tensor) and out.requires_grad:
        with torch.enable_grad():
            grads = torch.autograd.grad(out.sum(), [d for d, _ in deltas], allow_unused=True)
        for g, (_, s_n) in zip(grads, deltas):
            if g is not None:
                total = total + (g.abs() * s_n).sum(-1, keepdim=True)
    return out.detach(), torch.nan_to_num(total, nan=0.0, posinf=0.0)


# ---------------------------------------------------------------------------
# reductions written with torch operations (over axis -2)
# ---------------------------------------------------------------------------


def first_index(F, kind: str):
    """Index of the first min (or max) along -2; the first NaN wins."""
    nan = torch.isnan(F)
    fill = math.inf if kind == "min" else -math.inf
    clean = torch.where(nan, torch.full_like(F, fill), F)
    ext = clean.amin(-2, keepdim=True) if kind == "min" else clean.amax(-2, keepdim=True)
    hit = (clean == ext).to(torch.int8)
    idx = torch.argmax(hit, dim=-2)  # torch returns the first maximal index
    first_nan = torch.argmax(nan.to(torch.int8), dim=-2)
    return torch.where(nan.any(-2), first_nan, idx)


def kmin_order(F, k: int):
    """Indices (along -2) of the K smallest values, NaN first, ties in increasing j."""
    nan = torch.isnan(F)
    key = torch.where(nan, torch.full_like(F, -math.inf), F)
    o1 = torch.sort(key, dim=-2, stable=True).indices
    flag = (~torch.take_along_dim(nan, o1, dim=-2)).to(torch.int8)
    o2 = torch.sort(flag, dim=-2, stable=True).indices
    return torch.take_along_dim(o1, o2, dim=-2)[..., :k, :]



def _safe(m):
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def reduce_dense(spec, Fs, indices=None, mask=None):
    """The spec's outputs from dense values ``Fs`` (R x C grids), in run_spec's layout.

    ``indices`` (for the selection reductions) overrides the selected indices
    (gradients are then taken at the backend's choice among tied values).
    ``mask`` (block-sparse ranges, see :func:`oriented_mask`): only the kept pairs
    are reduced; a selected rank with no kept pair left has index -1 and the
    reduction's empty value.
    """
    name = spec.reduction
    if mask is not None:
        Fs = apply_mask(spec, Fs, mask)
    F = Fs[0]
    if name == "Sum":
        return [F.sum(-2)]
    if name in ("LogSumExp", "LogSumExpWeight", "Max_SumShiftExp", "Max_SumShiftExpWeight"):
        m = F.amax(-2, keepdim=True)
        e = torch.exp(F - _safe(m).detach())
        if name.endswith("Weight"):
            e = e * Fs[1]
        s = e.sum(-2)
        if name == "LogSumExp":
            return [torch.logsumexp(F, dim=-2)]
        if name == "LogSumExpWeight":
            return [_safe(m[..., 0, :]).detach() + torch.log(s)]
        return [torch.cat([m[..., 0, :], s], dim=-1)]
    if name == "SumSoftMaxWeight":
        p = torch.softmax(F, dim=-2)
        return [(p * Fs[1]).sum(-2)]
    red = spec.red
    if red.uses_k:
        k = spec.k
        idx = indices if indices is not None else kmin_order(F, k)
        idx, vals = _select(spec, F, idx, mask)
        outs = []
        d = F.shape[-1]
        if red.want_value:
            outs.append(vals if d > 1 else vals[..., 0])
        if red.want_index:
            outs.append(idx if d > 1 else idx[..., 0])
        return outs
    kind = red.selection_kind
    idx = indices if indices is not None else first_index(F, kind)
    idx, vals = _select(spec, F, idx[..., None, :], mask)
    outs = []
    if red.want_value:
        outs.append(vals[..., 0, :])
    if red.want_index:
        outs.append(idx[..., 0, :])
    return outs


def _select(spec, F, idx, mask):
    """``(indices, values)`` of the selected ranks ``idx`` (along -2); with a ``mask``, ranks that
    select no kept pair (or index -1) get index -1 and the reduction's empty value."""
    if mask is None:
        return idx, torch.take_along_dim(F, idx, dim=-2)
    safe = idx.clamp(min=0)
    kept = torch.take_along_dim(mask.expand(F.shape[:-1] + (1,)), safe, dim=-2)
    void = (idx < 0) | ~kept
    vals = torch.where(
        void, torch.full_like(F[..., :1, :], masked_value(spec)), torch.take_along_dim(F, safe, dim=-2)
    )
    return torch.where(void, torch.full_like(idx, -1), idx), vals



def expected_outputs(spec, arrays, ranges=None):
    """The oracle's outputs for ``spec`` on ``arrays`` (Genred layout; torch or NumPy), with
    pykeops' block-sparse 6-tuple ``ranges`` if given.

    This is what the reproduction snippets of failures call.
    """
    arrays = [
        torch.as_tensor(np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a)).to(F64)
        for a in arrays
    ]
    M, N = sizes_of(spec, arrays)
    mask = None if ranges is None else oriented_mask(ranges_mask(ranges, M, N), spec.axis)
    return reduce_dense(spec, dense(spec, arrays, M, N), mask=mask)


def sizes_of(spec, arrays) -> tuple[int, int]:
    M = N = 1
    for v, a in zip(spec.variables, arrays):
        if v.cat == CAT_I:
            M = a.shape[-2]
        elif v.cat == CAT_J:
            N = a.shape[-2]
    return M, N



def perturbed_arrays(arrays, eps: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for a in arrays:
        u = torch.randint(0, 2, a.shape, generator=g).to(F64) * 2 - 1
        out.append(a * (1 + eps * u))
    return out

