"""The reference backend: tiled dense evaluation with NumPy or torch operations.

Runs on any machine, for every op, reduction, dtype and batch shape.  The
reduction is computed on tiles of i x j whose size is bounded (never the whole
M x N matrix at once), each tile reduced to a partial state and the states
merged with the reduction's ``combine`` rule, exactly as a parallel backend
does.  It is the fallback backend and the oracle-independent baseline the
others are compared with.
"""

from __future__ import annotations

import math

from ...formula.evaluate import evaluate
from ...formula.nodes import CAT_I, CAT_J, walk
from ..contract import Backend, Capabilities

#: elements (batch x i x j x dim) of one intermediate array of a tile
TILE_ELEMENTS = 1 << 20


class ReferenceBackend(Backend):
    name = "reference"
    priority = 0
    capabilities = Capabilities(
        dtypes=frozenset({"float16", "float32", "float64"}),
        array_kinds=frozenset({"numpy", "torch"}),
        devices=frozenset({"cpu", "cuda"}),
    )

    def __init__(self, tile_elements: int = TILE_ELEMENTS):
        self.tile_elements = tile_elements

    def availability(self):
        return True, "pure NumPy/torch; always available"

    def evaluate(self, spec, args, *, nx, ny, batch_shape):
        xp = _namespace(spec, args)
        red = spec.red
        outs_meta = spec.outputs()
        batch_shape = tuple(batch_shape)
        nb = len(batch_shape)
        outputs = [
            xp.empty(batch_shape + (nx, o.dim), "int64" if o.kind == "index" else spec.dtype)
            for o in outs_meta
        ]
        if nx == 0:
            return tuple(outputs)
        work = [xp.acc(a) if spec.dtype == "float16" else a for a in args]
        width = max(
            [n.dim for f in spec.formulas for n in walk(f)] + [1]
        )
        batch_elems = math.prod(batch_shape) if batch_shape else 1
        ti, tj = _tile_sizes(nx, ny, batch_elems * width, self.tile_elements)
        variables = spec.variables
        for i0 in range(0, nx, ti):
            i1 = min(nx, i0 + ti)
            state = None
            for j0 in range(0, max(ny, 1), tj):
                j1 = min(ny, j0 + tj)
                values = {}
                for v, a in zip(variables, work):
                    if v.cat == CAT_I:
                        values[v.index] = a[..., i0:i1, None, :]
                    elif v.cat == CAT_J:
                        values[v.index] = a[..., None, j0:j1, :]
                    else:
                        values[v.index] = a[..., None, None, :]
                shape = batch_shape + (i1 - i0, j1 - j0)
                vals = [
                    xp.broadcast_to(_fix_lead(evaluate(f, xp, values), nb), shape + (f.dim,))
                    for f in spec.formulas
                ]
                tile_state = red.tile(xp, vals, j0)
                state = tile_state if state is None else red.combine(xp, state, tile_state)
            results = red.finalize(xp, state)
            for out, res in zip(outputs, results):
                out[..., i0:i1, :] = res
        return tuple(outputs)


def _fix_lead(value, nb: int):
    """A formula value with all its leading axes (constants evaluate to 1-D arrays)."""
    want = nb + 3
    while value.ndim < want:
        value = value[None]
    return value


def _tile_sizes(nx: int, ny: int, per_pair: int, budget: int) -> tuple[int, int]:
    tj = max(1, min(max(ny, 1), budget // max(per_pair, 1) // 64 or 1))
    ti = max(1, min(nx, budget // max(per_pair * tj, 1)))
    return ti, tj


def _namespace(spec, args):
    acc = spec.accumulation_dtype
    if spec.dtype == "float16":
        work_dtype = "float32"
    else:
        work_dtype = spec.dtype
    kahan = spec.sum_scheme == "kahan_scheme"
    is_torch = any(type(a).__module__.startswith("torch") for a in args)
    if is_torch:
        from ...torch.xp import TorchNamespace

        device = args[0].device if args else "cpu"
        return TorchNamespace(work_dtype, acc, spec.dtype, k=spec.k, kahan=kahan, device=device)
    from ...numpy.xp import NumpyNamespace

    return NumpyNamespace(work_dtype, acc, spec.dtype, k=spec.k, kahan=kahan)
