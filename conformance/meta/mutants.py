"""Planted bugs written the way real backends get them wrong: a tiled engine with one mistake each.

:class:`Mutant` is the reference backend's tiled evaluation (tiles of
``TI x TJ = 16 x 32`` pairs, like a real engine, so that tile boundaries are
everywhere in the suite's sizes) with its loops, partial states and reduction
rules spelled out as overridable steps.  Each subclass plants one bug in one
step: an off-by-one in a loop bound, a running state not reset, an index without
its tile offset, a shift taken too early, an option never read...  The
unmodified :class:`Mutant` is correct (``test_meta.py`` requires it to pass).

Load one with ``--backend conformance.meta.mutants:NAME`` (``NAME`` in
:data:`MUTANTS`); ``python -m conformance.meta.killrate`` runs the whole default
suite on every one of them and prints the kill rate (see the suite's README).
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import numpy as np

from polykeops.backends.ranges import to_host
from polykeops.backends.reference import ReferenceBackend, _blocks, _fix_lead, _namespace
from polykeops.formula import algebra as A
from polykeops.formula.evaluate import evaluate
from polykeops.formula.nodes import CAT_I, CAT_J, Node, substitute, walk
from polykeops.formula.reductions import KMin, MaxSumShiftExp, Select, Sum, SumSoftMaxWeight


def _is_torch(a) -> bool:
    return type(a).__module__.startswith("torch")


def _backward_locals():
    """Locals of the innermost ``GenredFunction.backward`` on the stack (None outside one)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "backward" and frame.f_globals.get("__name__", "").endswith(
            "torch.autograd"
        ) and "ctx" in frame.f_locals:
            return frame.f_locals
        frame = frame.f_back
    return None


def _nested_backward() -> int:
    """How many ``GenredFunction.backward`` frames are on the stack (2: a second-order pass)."""
    frame, count = sys._getframe(1), 0
    while frame is not None:
        if frame.f_code.co_name == "backward" and frame.f_globals.get("__name__", "").endswith(
            "torch.autograd"
        ):
            count += 1
        frame = frame.f_back
    return count


class Mutant(ReferenceBackend):
    """The reference evaluation on ``TI x TJ`` tiles, step by step (no bug: it must pass)."""

    name = "meta-mutant"
    priority = -100
    bug = "none"
    TI, TJ = 16, 32

    def __init__(self):
        super().__init__()
        self.capabilities = replace(ReferenceBackend.capabilities, ranges=True)

    def availability(self):
        return True, f"tiled reference evaluation with a planted bug: {self.bug}"

    # -- steps a real backend has ------------------------------------------------------------
    def prepare(self, spec):
        """The spec as the engine compiles it (options read here)."""
        return spec

    def i_tiles(self, b0, b1):
        return [(i0, min(b1, i0 + self.TI)) for i0 in range(b0, b1, self.TI)]

    def j_tiles(self, start, stop):
        return [(j0, min(stop, j0 + self.TJ)) for j0 in range(start, stop, self.TJ)]

    def tile(self, red, xp, vals, j0, j1):
        if isinstance(red, Sum) and xp.kahan:
            # kahan_scheme: the tile's sum in float64, kept as a (value, compensation) pair
            v = vals[0]
            s64 = v.double().sum(-2) if _is_torch(v) else v.astype(np.float64).sum(-2)
            hi = xp.acc(s64)
            return (hi, xp.acc(s64 - (hi.double() if _is_torch(hi) else hi.astype(np.float64))))
        return red.tile(xp, vals, j0)

    def combine(self, red, xp, state, new):
        if isinstance(red, Sum) and xp.kahan:
            t, comp = red.combine(xp, state, (new[0], None))
            return (t, comp + new[1])
        return red.combine(xp, state, new)

    def finalize(self, red, xp, state, spec):
        return red.finalize(xp, state)

    def fill_empty(self, spec, xp, outputs):
        fdims = tuple(f.dim for f in spec.formulas)
        for out, fill in zip(outputs, spec.red.empty_outputs(fdims, spec.k)):
            out[...] = xp.vector(fill, out)

    def range_blocks(self, host, r_idx):
        return _blocks(*(h[r_idx] for h in host))

    def reset_state(self):
        return True

    # -- the engine --------------------------------------------------------------------------
    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        spec = self.prepare(spec)
        xp = _namespace(spec, args)
        batch_shape = tuple(batch_shape)
        outputs = [
            xp.empty(batch_shape + (nx, o.dim), "int64" if o.kind == "index" else spec.dtype)
            for o in spec.outputs()
        ]
        if nx == 0:
            return tuple(outputs)
        work = [xp.acc(a) if spec.dtype == "float16" else a for a in args]
        if ny == 0 or ranges is not None:
            self.fill_empty(spec, xp, outputs)
        if ny == 0:
            return tuple(outputs)
        if ranges is None:
            self._tiles(spec, xp, work, outputs, batch_shape, [(0, nx, [(0, ny)])])
            return tuple(outputs)
        host = [to_host(r) for r in ranges]
        rb = host[0].ndim - 2
        if rb == 0:
            self._tiles(spec, xp, work, outputs, batch_shape, self.range_blocks(host, ()))
            return tuple(outputs)
        for idx in np.ndindex(*batch_shape):
            sub = tuple(slice(i, i + 1) for i in idx)
            r_idx = tuple(0 if host[0].shape[k] == 1 else i for k, i in enumerate(idx))
            blocks = self.range_blocks(host, r_idx)
            sub_args = [
                a[tuple(slice(0, 1) if a.shape[k] == 1 else s for k, s in enumerate(sub))] for a in work
            ]
            sub_outs = [o[sub] for o in outputs]
            self._tiles(spec, xp, sub_args, sub_outs, (1,) * len(batch_shape), blocks)
            for o, so in zip(outputs, sub_outs):
                o[sub] = so
        return tuple(outputs)

    def _tiles(self, spec, xp, work, outputs, batch_shape, blocks):
        red = spec.red
        nb = len(batch_shape)
        state, rows = None, None
        for b0, b1, intervals in blocks:
            intervals = [(j0, j1) for j0, j1 in intervals if j1 > j0]
            if not intervals or b1 <= b0:
                continue
            for i0, i1 in self.i_tiles(b0, b1):
                if self.reset_state() or rows != i1 - i0:
                    state = None
                rows = i1 - i0
                for start, stop in intervals:
                    for j0, j1 in self.j_tiles(start, stop):
                        values = {}
                        for v, a in zip(spec.variables, work):
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
                        new = self.tile(red, xp, vals, j0, j1)
                        state = new if state is None else self.combine(red, xp, state, new)
                for out, res in zip(outputs, self.finalize(red, xp, state, spec)):
                    out[..., i0:i1, :] = res


# ---------------------------------------------------------------------------
# loop bounds and running states
# ---------------------------------------------------------------------------


class LastITileDropped(Mutant):
    """``for (i0 = b0; i0 + TI <= b1; i0 += TI)``: the last, partial tile of rows is never computed."""

    bug = "the last partial tile of rows (i) is skipped"

    def i_tiles(self, b0, b1):
        full = [(i0, i0 + self.TI) for i0 in range(b0, b1 - self.TI + 1, self.TI)]
        return full or super().i_tiles(b0, b1)


class LastColumnDropped(Mutant):
    """``j1 = min(stop - 1, j0 + TJ)``: the last column of every interval is not reduced."""

    bug = "the last j of each interval is not reduced (off-by-one in the loop bound)"

    def j_tiles(self, start, stop):
        tiles = super().j_tiles(start, stop)
        if stop - start > 1:
            j0, j1 = tiles[-1]
            tiles[-1] = (j0, j1 - 1)
            if j1 - 1 <= j0:
                tiles.pop()
        return tiles


class OverlappingTiles(Mutant):
    """``j1 = j0 + TJ + 1``: consecutive tiles share a column (reduced twice)."""

    bug = "j tiles overlap by one column"

    def j_tiles(self, start, stop):
        return [(j0, min(stop, j1 + 1)) for j0, j1 in super().j_tiles(start, stop)]


class StateNotReset(Mutant):
    """The running state is not reset between tiles of rows (it carries the previous rows' terms)."""

    bug = "the running state is not reset between i tiles"

    def reset_state(self):
        return False


class IndexWithoutTileOffset(Mutant):
    """Indices found in a tile are stored without the tile's offset ``j0``."""

    bug = "argmin/argKmin indices lack the tile offset"

    def tile(self, red, xp, vals, j0, j1):
        if isinstance(red, (Select, KMin)):
            return red.tile(xp, vals, 0)
        return super().tile(red, xp, vals, j0, j1)


class LaterTilePreferred(Mutant):
    """``combine(new, running)``: among equal values, the later tile wins."""

    bug = "combine takes its arguments in the wrong order (ties go to later tiles)"

    def combine(self, red, xp, state, new):
        if isinstance(red, (Select, KMin)):
            return red.combine(xp, new, state)
        return super().combine(red, xp, state, new)


# ---------------------------------------------------------------------------
# selections: ties, NaN, initial values, K
# ---------------------------------------------------------------------------


class MaxTieLast(Mutant):
    """Max / ArgMax scan with ``>=``: the last of equal values wins."""

    bug = "argmax prefers the last of equal values"

    def tile(self, red, xp, vals, j0, j1):
        if isinstance(red, Select) and red.selection_kind == "max":
            f = vals[0]
            flipped = f.flip(-2) if _is_torch(f) else f[..., ::-1, :]
            v, i = red.tile(xp, [flipped], 0)
            return (v, (j1 - j0 - 1) - i + j0)
        return super().tile(red, xp, vals, j0, j1)

    def combine(self, red, xp, state, new):
        if isinstance(red, Select) and red.selection_kind == "max":
            take = xp.lib.isnan(new[0]) | (new[0] >= state[0]) & ~xp.lib.isnan(state[0])
            return (xp.lib.where(take, new[0], state[0]), xp.lib.where(take, new[1], state[1]))
        return super().combine(red, xp, state, new)


class NanIgnored(Mutant):
    """Min / Max / ArgMin... compare with ``fmin``/``fmax``: NaN is skipped instead of winning."""

    bug = "Min/Max ignore NaN (fmin semantics)"

    def tile(self, red, xp, vals, j0, j1):
        if isinstance(red, Select):
            f = vals[0]
            fill = math.inf if red.selection_kind == "min" else -math.inf
            f = xp.lib.where(xp.lib.isnan(f), xp.lib.full_like(f, fill), f)
            return red.tile(xp, [f], j0)
        return super().tile(red, xp, vals, j0, j1)


class KMinNanLast(Mutant):
    """K-min candidates sorted with ``<`` only: NaN goes last (as +inf) instead of first."""

    bug = "KMin puts NaN last"

    def tile(self, red, xp, vals, j0, j1):
        if isinstance(red, KMin):
            f = vals[0]
            f = xp.lib.where(xp.lib.isnan(f), xp.lib.full_like(f, math.inf), f)
            return red.tile(xp, [f], j0)
        return super().tile(red, xp, vals, j0, j1)


class MinInitFiniteMax(Mutant):
    """Min initialised with the largest finite value (``FLT_MAX``) instead of +inf (and Max with
    ``-FLT_MAX``): rows of infinities, and rows that reduce over nothing, come out finite."""

    bug = "Min/Max start from +-FLT_MAX instead of +-inf"

    def _clip(self, red, xp, v):
        big = float(np.finfo(str(v.dtype).replace("torch.", "")).max)
        return xp.lib.where(v == math.inf, xp.lib.full_like(v, big),
                            xp.lib.where(v == -math.inf, xp.lib.full_like(v, -big), v))

    def finalize(self, red, xp, state, spec):
        if isinstance(red, (Select, KMin)) and red.want_value:
            outs = list(red.finalize(xp, state))
            outs[0] = self._clip(red, xp, outs[0])
            return tuple(outs)
        return super().finalize(red, xp, state, spec)

    def fill_empty(self, spec, xp, outputs):
        super().fill_empty(spec, xp, outputs)
        if isinstance(spec.red, (Select, KMin)) and spec.red.want_value:
            outputs[0][...] = self._clip(spec.red, xp, outputs[0])


class KMinTiesLast(Mutant):
    """K-min candidates of a tile sorted by an unstable sort: equal values in decreasing j."""

    bug = "ArgKMin: among equal values, larger indices first"

    def tile(self, red, xp, vals, j0, j1):
        if isinstance(red, KMin):
            f = vals[0]
            flipped = f.flip(-2) if _is_torch(f) else f[..., ::-1, :]
            v, i = red.tile(xp, [flipped], 0)
            return (v, (j1 - j0 - 1) - i + j0)
        return super().tile(red, xp, vals, j0, j1)


class KCappedAt16(Mutant):
    """At most 16 candidates are kept (a register array): ranks beyond 16 are never filled."""

    bug = "K > 16: ranks beyond 16 are left empty"

    def finalize(self, red, xp, state, spec):
        if isinstance(red, KMin) and spec.k > 16:
            vals, idx = state
            d = vals.shape[-1]
            keep_v, keep_i = vals[..., :16, :], idx[..., :16, :]
            pad = spec.k - 16
            vals = xp.cat_j([keep_v, xp.full_j(keep_v, pad, math.inf)])
            idx = xp.cat_j([keep_i, xp.full_j(keep_i, pad, -1)])
            assert vals.shape[-1] == d
            return red.finalize(xp, (vals, idx))
        return super().finalize(red, xp, state, spec)


class KEqualsNLosesLast(Mutant):
    """``for (r = 0; r < min(K, n - 1); ++r)``: with K = n (every element selected), the last rank
    is left empty."""

    bug = "K = N: the last rank is missing"

    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        self._full = spec.k is not None and spec.k >= ny
        return super().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape, ranges=ranges)

    def finalize(self, red, xp, state, spec):
        if isinstance(red, KMin) and self._full:
            vals, idx = state
            vals = xp.cat_j([vals[..., :-1, :], xp.full_j(vals, 1, math.inf)])
            idx = xp.cat_j([idx[..., :-1, :], xp.full_j(idx, 1, -1)])
            return red.finalize(xp, (vals, idx))
        return super().finalize(red, xp, state, spec)


# ---------------------------------------------------------------------------
# streaming exponentials
# ---------------------------------------------------------------------------


class LseCombineNotRescaled(Mutant):
    """Online LogSumExp: when a later tile raises the max, the running sum is not rescaled."""

    bug = "LogSumExp/Max_SumShiftExp combine forgets to rescale the running sum"

    def combine(self, red, xp, state, new):
        if isinstance(red, MaxSumShiftExp):
            (m1, a1), (m2, a2) = state, new
            m = xp.lib.maximum(m1, m2)
            ms = xp.lib.where(xp.lib.isfinite(m), m, xp.lib.zeros_like(m))
            m2s = xp.lib.where(xp.lib.isfinite(m2), m2, xp.lib.zeros_like(m2))
            return (m, a1 + a2 * xp.lib.exp(m2s - ms))
        return super().combine(red, xp, state, new)


class SoftmaxDenominatorNotRescaled(Mutant):
    """SumSoftMaxWeight: the numerator is rescaled to the new max, the denominator is not."""

    bug = "SumSoftMaxWeight rescales the weighted sum but not the normaliser"

    def combine(self, red, xp, state, new):
        if isinstance(red, SumSoftMaxWeight):
            m, _, t = red.combine(xp, state, new)
            return (m, state[1] + new[1], t)
        return super().combine(red, xp, state, new)


class LseInfiniteMaxNotGuarded(Mutant):
    """LogSumExp shifted by a max that may be infinite: ``-inf - (-inf)`` = NaN for rows of -inf
    (and +inf rows)."""

    bug = "LogSumExp of a row of -inf (or with +inf) is NaN"

    def finalize(self, red, xp, state, spec):
        if isinstance(red, MaxSumShiftExp) and red.log:
            m, s = state
            return (xp.out(m + xp.lib.log(s * xp.lib.exp(m - m))),)
        return super().finalize(red, xp, state, spec)


class SoftmaxShiftPerTile(Mutant):
    """SumSoftMaxWeight shifted by each tile's max but combined without rescaling the weighted sums
    (only the normaliser): a shift taken too early."""

    bug = "SumSoftMaxWeight: per-tile shift not undone for the weighted sum"

    def combine(self, red, xp, state, new):
        if isinstance(red, SumSoftMaxWeight):
            m, z, _ = red.combine(xp, state, new)
            return (m, z, state[2] + new[2])
        return super().combine(red, xp, state, new)


# ---------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------


class DtypeAccIgnored(Mutant):
    """``dtype_acc`` is never read: sums accumulate in the data's dtype."""

    bug = "dtype_acc ignored"

    def prepare(self, spec):
        return spec.with_(dtype_acc="auto")


class KahanIgnored(Mutant):
    """``sum_scheme="kahan_scheme"`` is accepted and ignored."""

    bug = "kahan_scheme ignored"

    def prepare(self, spec):
        return spec.with_(sum_scheme="block_sum")


class Float16PartialStates(Mutant):
    """float16 data: the partial sums of tiles are stored in float16 between tiles."""

    bug = "float16 partial sums rounded to float16 between tiles"

    def combine(self, red, xp, state, new):
        out = super().combine(red, xp, state, new)
        if isinstance(red, Sum) and getattr(self, "_f16", False):
            s = out[0]
            s16 = s.half().float() if _is_torch(s) else s.astype(np.float16).astype(s.dtype)
            return (s16,) + tuple(out[1:])
        return out

    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        self._f16 = spec.dtype == "float16"
        return super().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape, ranges=ranges)


class Float64AsFloat32(Mutant):
    """float64 data evaluated in float32 (a kernel compiled for float only)."""

    bug = "float64 computed in float32"

    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        if spec.dtype != "float64":
            return super().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape, ranges=ranges)
        low = [a.float() if _is_torch(a) else a.astype(np.float32) for a in args]
        outs = super().evaluate(spec.with_(dtype="float32", dtype_acc="float32"), low, nx=nx, ny=ny,
                                batch_shape=batch_shape, ranges=ranges)
        return tuple(o if "int" in str(o.dtype) else (o.double() if _is_torch(o) else o.astype(np.float64))
                     for o in outs)


class LargeDimensionLastChunk(Mutant):
    """Formulas of more than 64 components computed in chunks of 32; the last, partial chunk of
    the output is left at zero (``for (c = 0; c + 32 <= D; c += 32)``)."""

    bug = "outputs of dimension > 64: the last partial chunk of 32 components is dropped"

    def finalize(self, red, xp, state, spec):
        outs = list(super().finalize(red, xp, state, spec))
        for k, o in enumerate(outs):
            d = o.shape[-1]
            if d > 64 and d % 32 and "int" not in str(o.dtype):
                o = o * 1
                o[..., d - d % 32:] = 0
                outs[k] = o
        return tuple(outs)


# ---------------------------------------------------------------------------
# batches and ranges
# ---------------------------------------------------------------------------


class BatchModuloBroadcast(Mutant):
    """Broadcast batch dimensions by a modulo on the flattened batch index: right only when the
    size-1 dimensions lead."""

    bug = "broadcast batch dimensions read with a modulo on the flat batch index"

    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        nb = len(batch_shape)
        if nb < 2 or ranges is not None:
            return super().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape, ranges=ranges)
        total = int(np.prod(batch_shape))
        flat = []
        for a in args:
            lead = tuple(a.shape[:nb])
            n = int(np.prod(lead))
            a2 = a.reshape((n,) + tuple(a.shape[nb:]))
            idx = [b % n for b in range(total)]
            flat.append(a2[idx] if not _is_torch(a2) else a2[__import__("torch").tensor(idx)])
        outs = super().evaluate(spec, flat, nx=nx, ny=ny, batch_shape=(total,))
        return tuple(o.reshape(tuple(batch_shape) + tuple(o.shape[1:])) for o in outs)


class RangesIgnored(Mutant):
    """``ranges`` accepted (capabilities.ranges) and ignored: a dense reduction."""

    bug = "block-sparse ranges ignored"

    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        return super().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape)


class RangesEmptyRowsZero(Mutant):
    """Rows that reduce over nothing keep the zero-initialised output (not the empty value)."""

    bug = "rows with no block hold 0 (not the reduction of nothing)"

    def fill_empty(self, spec, xp, outputs):
        for o in outputs:
            o[...] = 0


class RangesFirstBatchOnly(Mutant):
    """Per-batch ranges: every batch reads the structure of batch 0."""

    bug = "per-batch ranges: batch 0's structure everywhere"

    def range_blocks(self, host, r_idx):
        return super().range_blocks(host, tuple(0 for _ in r_idx))


# ---------------------------------------------------------------------------
# gradients (the backend evaluates the gradient reductions it is handed)
# ---------------------------------------------------------------------------


class BackwardLastITileDropped(Mutant):
    """The gradient reductions (a separate, transposed code path) skip their last partial tile."""

    bug = "gradient reductions skip the last partial i tile"

    def i_tiles(self, b0, b1):
        tiles = super().i_tiles(b0, b1)
        if _nested_backward() and len(tiles) > 1 and tiles[-1][1] - tiles[-1][0] < self.TI:
            tiles.pop()
        return tiles


class SecondOrderDropsLastTile(Mutant):
    """Second-order passes (the gradient of a gradient reduction) drop the last partial j tile."""

    bug = "second-order gradient reductions drop the last partial j tile"

    def __init__(self):
        super().__init__()
        self._gradient_specs = set()
        self._second = False

    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        loc = _backward_locals()
        self._second = False
        if loc is not None:
            fwd = loc.get("spec")
            self._second = fwd is not None and fwd.canonical() in self._gradient_specs
            self._gradient_specs.add(spec.canonical())
        return super().evaluate(spec, args, nx=nx, ny=ny, batch_shape=batch_shape, ranges=ranges)

    def j_tiles(self, start, stop):
        tiles = super().j_tiles(start, stop)
        if self._second and len(tiles) > 1 and tiles[-1][1] - tiles[-1][0] < self.TJ:
            tiles.pop()
        return tiles


class ExpDerivativeScaled(Mutant):
    """In gradient reductions, ``Exp(u)`` written twice shares the wrong cached value: every
    ``Exp`` of the gradient formula is evaluated at twice its argument (a common-subexpression
    cache keyed on the op alone)."""

    bug = "gradient formulas: Exp evaluated at 2u"

    def prepare(self, spec):
        if not _nested_backward():
            return spec
        mapping = {n: Node("Exp", (A.mul(A.const(2), n.args[0]),)) for f in spec.formulas
                   for n in walk(f) if n.op == "Exp"}
        if not mapping:
            return spec
        return spec.with_(formulas=tuple(substitute(f, mapping) for f in spec.formulas))


# ---------------------------------------------------------------------------
# ops at special points
# ---------------------------------------------------------------------------


class SignOfZeroIsOne(Mutant):
    """``Sign(x)`` computed as ``x >= 0 ? 1 : -1``: Sign(0) = 1."""

    bug = "Sign(0) = 1"

    def prepare(self, spec):
        mapping = {n: A.sub(A.mul(A.const(2), A.node("Step", n.args[0])), A.const(1))
                   for f in spec.formulas for n in walk(f) if n.op == "Sign"}
        if not mapping:
            return spec
        return spec.with_(formulas=tuple(substitute(f, mapping) for f in spec.formulas))


class SubnormalsFlushed(Mutant):
    """Subnormal inputs flushed to zero (a kernel compiled with -ffast-math / DAZ)."""

    bug = "subnormal inputs flushed to zero"

    def evaluate(self, spec, args, *, nx, ny, batch_shape, ranges=None):
        tiny = {"float16": 2.0**-14, "float32": 2.0**-126, "float64": 2.0**-1022}[spec.dtype]
        flushed = []
        for a in args:
            small = abs(a) < tiny
            if _is_torch(a):
                flushed.append(a.masked_fill(small, 0.0))
            else:
                flushed.append(np.where(small, 0.0, a).astype(a.dtype))
        return super().evaluate(spec, flushed, nx=nx, ny=ny, batch_shape=batch_shape, ranges=ranges)


#: name -> class: one planted bug each (``correct`` has none)
MUTANTS = {
    "correct": Mutant,
    "last_i_tile_dropped": LastITileDropped,
    "last_column_dropped": LastColumnDropped,
    "overlapping_tiles": OverlappingTiles,
    "state_not_reset": StateNotReset,
    "index_without_tile_offset": IndexWithoutTileOffset,
    "later_tile_preferred": LaterTilePreferred,
    "max_tie_last": MaxTieLast,
    "nan_ignored": NanIgnored,
    "kmin_nan_last": KMinNanLast,
    "min_init_finite_max": MinInitFiniteMax,
    "kmin_ties_last": KMinTiesLast,
    "k_capped_at_16": KCappedAt16,
    "k_equals_n_loses_last": KEqualsNLosesLast,
    "lse_combine_not_rescaled": LseCombineNotRescaled,
    "softmax_denominator_not_rescaled": SoftmaxDenominatorNotRescaled,
    "lse_infinite_max_not_guarded": LseInfiniteMaxNotGuarded,
    "softmax_shift_per_tile": SoftmaxShiftPerTile,
    "dtype_acc_ignored": DtypeAccIgnored,
    "kahan_ignored": KahanIgnored,
    "float16_partial_states": Float16PartialStates,
    "float64_as_float32": Float64AsFloat32,
    "large_dimension_last_chunk": LargeDimensionLastChunk,
    "batch_modulo_broadcast": BatchModuloBroadcast,
    "ranges_ignored": RangesIgnored,
    "ranges_empty_rows_zero": RangesEmptyRowsZero,
    "ranges_first_batch_only": RangesFirstBatchOnly,
    "backward_last_i_tile_dropped": BackwardLastITileDropped,
    "second_order_drops_last_tile": SecondOrderDropsLastTile,
    "exp_derivative_scaled": ExpDerivativeScaled,
    "sign_of_zero_is_one": SignOfZeroIsOne,
    "subnormals_flushed": SubnormalsFlushed,
}


def _factory(name, cls):
    def make():
        obj = cls()
        obj.name = f"meta-mutant-{name.replace('_', '-')}" if name != "correct" else "meta-mutant"
        return obj

    make.__name__ = name
    make.__doc__ = cls.__doc__
    return make


for _name, _cls in MUTANTS.items():
    globals()[_name] = _factory(_name, _cls)

__all__ = ["MUTANTS", "Mutant", *MUTANTS]
