"""``numpy_tiles``: a third-party polykeops backend, written against the backend contract only.

It evaluates a canonical :class:`~polykeops.formula.spec.ReductionSpec` tile by
tile (``TI`` rows x ``TJ`` columns, batch dimensions carried along), with
NumPy.  The *map* (formula values on a tile) uses the op table's definitions
through :func:`polykeops.formula.evaluate.evaluate` -- the op table is what
defines each operation -- while the *reductions* are written here from scratch:
running sums (optionally compensated), an online max-shifted sum of exponentials,
running first-index minima with NaN winning, and a K-smallest merge.

Install it (``pip install examples/plugin_backend``) and polykeops finds it
through the ``polykeops.backends`` entry point: ``backend="numpy_tiles"``.
Certify it with ``pytest conformance --backend numpy_tiles``.
"""

from __future__ import annotations

import numpy as np

from polykeops.backends.arrays.numpy import NumpyNamespace
from polykeops.backends.contract import Backend, Capabilities
from polykeops.formula.evaluate import evaluate
from polykeops.formula.nodes import CAT_I, CAT_J

__all__ = ["NumpyTilesBackend", "make_backend"]
__version__ = "0.1.0"

TI, TJ = 64, 96  # deliberately not powers of two


class NumpyTilesBackend(Backend):
    name = "numpy_tiles"
    priority = -5  # never chosen automatically over the built-in backends
    capabilities = Capabilities(
        dtypes=frozenset({"float32", "float64"}),  # no float16: the suite skips those tests
        array_kinds=frozenset({"numpy", "torch"}),
        devices=frozenset({"cpu"}),
        batch=True,
        sum_schemes=frozenset({"block_sum", "kahan_scheme", "direct_sum"}),
        notes=("example plugin; see examples/plugin_backend/README.md",),
    )

    def availability(self):
        return True, "pure NumPy"

    # ------------------------------------------------------------------
    def evaluate(self, spec, args, *, nx, ny, batch_shape):
        torch_like = next((a for a in args if type(a).__module__.startswith("torch")), None)
        arrays = [_to_numpy(a) for a in args]
        dtype = np.dtype(spec.dtype)
        acc = np.dtype(spec.accumulation_dtype)
        xp = NumpyNamespace(dtype, acc, dtype, k=spec.k)
        batch_shape = tuple(batch_shape)
        nb = len(batch_shape)
        outs = [
            np.empty(batch_shape + (nx, o.dim), dtype=np.int64 if o.kind == "index" else dtype)
            for o in spec.outputs()
        ]
        for i0 in range(0, nx, TI):
            i1 = min(nx, i0 + TI)
            state = _new_state(spec, batch_shape + (i1 - i0,), acc)
            for j0 in range(0, max(ny, 1), TJ):
                j1 = min(ny, j0 + TJ)
                values = {}
                for v, a in zip(spec.variables, arrays):
                    if v.cat == CAT_I:
                        values[v.index] = a[..., i0:i1, None, :]
                    elif v.cat == CAT_J:
                        values[v.index] = a[..., None, j0:j1, :]
                    else:
                        values[v.index] = a[..., None, None, :]
                tile_shape = batch_shape + (i1 - i0, j1 - j0)
                fs = []
                for f in spec.formulas:
                    with np.errstate(all="ignore"):
                        val = np.asarray(evaluate(f, xp, values))
                    while val.ndim < nb + 3:
                        val = val[None]
                    fs.append(np.broadcast_to(val, tile_shape + (f.dim,)))
                _accumulate(spec, state, fs, j0, acc)
            for out, res in zip(outs, _finish(spec, state)):
                out[..., i0:i1, :] = res
        if torch_like is not None:
            import torch

            return tuple(torch.from_numpy(np.ascontiguousarray(o)).to(torch_like.device) for o in outs)
        return tuple(outs)


def make_backend():
    """The entry point: a zero-argument factory."""
    return NumpyTilesBackend()


def _to_numpy(a):
    if isinstance(a, np.ndarray):
        return a
    return a.detach().cpu().numpy()


# ----------------------------------------------------------------------
# reductions, written here (not the formula layer's init/tile/combine rules)
# ----------------------------------------------------------------------

_LSE = ("LogSumExp", "LogSumExpWeight", "Max_SumShiftExp", "Max_SumShiftExpWeight", "SumSoftMaxWeight")


def _new_state(spec, rows_shape, acc):
    name = spec.reduction
    if name == "Sum":
        return {"sum": None, "comp": None}
    if name in _LSE:
        return {"m": None, "s": None, "t": None}
    if spec.red.uses_k:
        return {"vals": None, "idx": None}
    return {"val": None, "idx": None}


def _accumulate(spec, st, fs, j0, acc):
    name = spec.reduction
    f = fs[0]
    if name == "Sum":
        part = f.astype(acc).sum(axis=-2)
        if st["sum"] is None:
            st["sum"], st["comp"] = part, np.zeros_like(part)
        elif spec.sum_scheme == "kahan_scheme":  # Neumaier's compensated addition of the tile sums
            t = st["sum"] + part
            big = np.abs(st["sum"]) >= np.abs(part)
            st["comp"] += np.where(big, (st["sum"] - t) + part, (part - t) + st["sum"])
            st["sum"] = t
        else:
            st["sum"] = st["sum"] + part
        return
    if name in _LSE:
        f = f.astype(acc)
        with np.errstate(all="ignore"):
            m_tile = f.max(axis=-2)  # NaN propagates
            m_new = m_tile if st["m"] is None else np.maximum(st["m"], m_tile)
            shift = np.where(np.isfinite(m_new), m_new, 0.0)
            e = np.exp(f - shift[..., None, :])
            w = fs[1].astype(acc) if len(fs) > 1 else None
            s_tile = (e * w).sum(-2) if (w is not None and name != "SumSoftMaxWeight") else e.sum(-2)
            t_tile = (e * w).sum(-2) if name == "SumSoftMaxWeight" else None
            if st["m"] is None:
                st["s"], st["t"] = s_tile, t_tile
            else:
                old = np.where(np.isfinite(st["m"]), st["m"], 0.0)
                scale = np.exp(old - shift)
                st["s"] = st["s"] * scale + s_tile
                if t_tile is not None:
                    st["t"] = st["t"] * scale + t_tile
            st["m"] = m_new
        return
    if spec.red.uses_k:
        _kmin_merge(spec, st, f, j0)
        return
    _select(spec, st, f, j0)


def _select(spec, st, f, j0):
    """Running first-index min (or max); a NaN wins and the first NaN is kept."""
    want_min = spec.red.selection_kind == "min"
    nan = np.isnan(f)
    clean = np.where(nan, np.inf if want_min else -np.inf, f)
    idx = clean.argmin(axis=-2) if want_min else clean.argmax(axis=-2)  # first occurrence
    has_nan = nan.any(axis=-2)
    idx = np.where(has_nan, nan.argmax(axis=-2), idx)
    val = np.take_along_axis(f, idx[..., None, :], axis=-2)[..., 0, :]
    idx = idx.astype(np.int64) + j0
    if st["val"] is None:
        st["val"], st["idx"] = val, idx
        return
    old_nan = np.isnan(st["val"])
    better = (val < st["val"]) if want_min else (val > st["val"])
    take = (np.isnan(val) & ~old_nan) | (better & ~old_nan)
    st["val"] = np.where(take, val, st["val"])
    st["idx"] = np.where(take, idx, st["idx"])


def _kmin_merge(spec, st, f, j0):
    """Keep the K smallest (NaN first; equal values in increasing j) of the candidates and this tile."""
    k = spec.k
    n = f.shape[-2]
    idx = np.broadcast_to(np.arange(j0, j0 + n, dtype=np.int64)[:, None], f.shape)
    if st["vals"] is not None:
        f = np.concatenate([st["vals"], f], axis=-2)
        idx = np.concatenate([st["idx"], idx], axis=-2)
    # sort keys along j (moved last): (not NaN, value, index)
    fv = np.moveaxis(f, -2, -1)
    iv = np.moveaxis(idx, -2, -1)
    nan = np.isnan(fv)
    key = np.where(nan, 0.0, fv)
    order = np.lexsort((iv, key, ~nan), axis=-1)[..., :k]
    st["vals"] = np.moveaxis(np.take_along_axis(fv, order, axis=-1), -1, -2)
    st["idx"] = np.moveaxis(np.take_along_axis(iv, order, axis=-1), -1, -2)


def _finish(spec, st):
    name = spec.reduction
    red = spec.red
    if name == "Sum":
        return [st["sum"] + st["comp"] if spec.sum_scheme == "kahan_scheme" else st["sum"]]
    if name in _LSE:
        m, s = st["m"], st["s"]
        shift = np.where(np.isfinite(m), m, 0.0)
        with np.errstate(all="ignore"):
            if name in ("LogSumExp", "LogSumExpWeight"):
                return [shift + np.log(s)]
            if name == "SumSoftMaxWeight":
                return [st["t"] / s]
            return [np.concatenate([m, s], axis=-1)]
    if red.uses_k:
        vals, idx = st["vals"], st["idx"]
        flat = vals.shape[:-2] + (vals.shape[-2] * vals.shape[-1],)
        outs = []
        if red.want_value:
            outs.append(vals.reshape(flat))
        if red.want_index:
            outs.append(idx.reshape(flat))
        return outs
    outs = []
    if red.want_value:
        outs.append(st["val"])
    if red.want_index:
        outs.append(st["idx"])
    return outs
