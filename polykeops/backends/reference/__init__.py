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
from ...formula.spec import LOW_PRECISION
from ..arrays import adapter, adapter_for
from ..contract import Backend, Capabilities
from ..ranges import to_host

#: elements (batch x i x j x dim) of one intermediate array of a tile
TILE_ELEMENTS = 1 << 20


class ReferenceBackend(Backend):
    name = "reference"
    priority = 0
    capabilities = Capabilities(
        dtypes=frozenset({"float16", "bfloat16", "float32", "float64"}),
        array_kinds=frozenset({"numpy", "torch"}),
        devices=frozenset({"cpu", "cuda"}),
        ranges=True,
        partial_states=True,
    )

    def __init__(self, tile_elements: int = TILE_ELEMENTS):
        self.tile_elements = tile_elements

    def availability(self):
        return True, "pure NumPy/torch; always available"

    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        xp = _namespace(spec, args)
        batch_shape = tuple(batch_shape)
        outs_meta = spec.outputs()
        outputs = [
            xp.empty(batch_shape + (nx, o.dim), "int64" if o.kind == "index" else spec.dtype)
            for o in outs_meta
        ]
        if nx == 0:
            return tuple(outputs)
        work = [xp.acc(a) if spec.dtype in LOW_PRECISION else a for a in args]
        if ny == 0:  # nothing to reduce: every row holds the reduction of nothing
            fdims = tuple(f.dim for f in spec.formulas)
            for out, fill in zip(outputs, spec.red.empty_outputs(fdims, spec.k)):
                out[...] = xp.vector(fill, out)
            return tuple(outputs)
        if ranges is None:
            self._run_blocks(spec, xp, work, outputs, batch_shape, [(0, nx, [(0, ny)])], ny)
            return tuple(outputs)
        fdims = tuple(f.dim for f in spec.formulas)
        for out, fill in zip(outputs, spec.red.empty_outputs(fdims, spec.k)):
            out[...] = xp.vector(fill, out)
        host = [to_host(r) for r in ranges]
        rb = host[0].ndim - 2  # batch dimensions of the ranges
        if rb == 0:
            self._run_blocks(spec, xp, work, outputs, batch_shape, _blocks(*host), ny)
            return tuple(outputs)
        if rb != len(batch_shape):
            raise ValueError(f"ranges have {rb} batch dimension(s), the reduction {len(batch_shape)}")
        import numpy as np

        for idx in np.ndindex(*batch_shape):
            sub = tuple(slice(i, i + 1) for i in idx)
            r_idx = tuple(0 if host[0].shape[k] == 1 else i for k, i in enumerate(idx))
            blocks = _blocks(*(h[r_idx] for h in host))
            sub_args = [
                a[tuple(slice(0, 1) if a.shape[k] == 1 else s for k, s in enumerate(sub))]
                for a in work
            ]
            sub_outs = [o[sub] for o in outputs]
            self._run_blocks(spec, xp, sub_args, sub_outs, (1,) * len(batch_shape), blocks, ny)
            for o, so in zip(outputs, sub_outs):
                o[sub] = so
        return tuple(outputs)

    def _run_blocks(self, spec, xp, work, outputs, batch_shape, blocks, ny):
        """Reduce rows [i0, i1) of each block over its j intervals, tile by tile."""
        if not blocks:  # no i-range at all: every row keeps the empty value
            return
        red = spec.red
        nb = len(batch_shape)
        width = max([n.dim for f in spec.formulas for n in walk(f)] + [1])
        batch_elems = math.prod(batch_shape) if batch_shape else 1
        ti, tj = _tile_sizes(max(b[1] - b[0] for b in blocks), ny, batch_elems * width,
                             self.tile_elements)
        variables = spec.variables
        for b0, b1, intervals in blocks:
            intervals = [(j0, j1) for j0, j1 in intervals if j1 > j0]
            if not intervals or b1 <= b0:
                continue
            for i0 in range(b0, b1, ti):
                i1 = min(b1, i0 + ti)
                state = None
                for start, stop in intervals:
                    for j0 in range(start, stop, tj):
                        j1 = min(stop, j0 + tj)
                        values = {}
                        for v, a in zip(variables, work):
                            if v.cat == CAT_I:
                                values[v.index] = a[..., i0:i1, None, :]
                            elif v.cat == CAT_J:
                                values[v.index] = a[..., None, j0:j1, :]
                            else:
                                values[v.index] = a[..., None, None, :]
                        shape = tuple(batch_shape) + (i1 - i0, j1 - j0)
                        vals = [
                            xp.broadcast_to(_fix_lead(evaluate(f, xp, values), nb), shape + (f.dim,))
                            for f in spec.formulas
                        ]
                        tile_state = red.tile(xp, vals, j0)
                        state = tile_state if state is None else red.combine(xp, state, tile_state)
                for out, res in zip(outputs, red.finalize(xp, state)):
                    out[..., i0:i1, :] = res


def _blocks(ranges_x, slices_x, redranges_y):
    """``[(i0, i1, [(j0, j1), ...])]`` from the three block-sparse arrays of one orientation."""
    blocks = []
    prev = 0
    for k in range(ranges_x.shape[0]):
        end = int(slices_x[k])
        intervals = [(int(redranges_y[s, 0]), int(redranges_y[s, 1])) for s in range(prev, end)]
        blocks.append((int(ranges_x[k, 0]), int(ranges_x[k, 1]), intervals))
        prev = end
    return blocks


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
    """The reference namespace of the inputs' array kind (NumPy without inputs)."""
    work_dtype = "float32" if spec.dtype in LOW_PRECISION else spec.dtype
    kahan = spec.sum_scheme == "kahan_scheme"
    like = args[0] if args else None
    ad = adapter_for(like) if args else adapter("numpy")
    return ad.namespace(work_dtype, spec.accumulation_dtype, spec.dtype, k=spec.k, kahan=kahan, like=like)
