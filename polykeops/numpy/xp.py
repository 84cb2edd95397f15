"""The array namespace (see :mod:`polykeops.formula.arrays`) for NumPy arrays."""

from __future__ import annotations

import numpy as np


class NumpyNamespace:
    """Reference-evaluation primitives on NumPy arrays of one working dtype."""

    kind = "numpy"

    def __init__(self, dtype, acc_dtype=None, out_dtype=None, k=None, kahan=False):
        self.dtype = np.dtype(dtype)
        self.acc_dtype = np.dtype(acc_dtype or dtype)
        self.out_dtype = np.dtype(out_dtype or dtype)
        self.k = k
        self.kahan = kahan

    # elementwise
    exp = staticmethod(np.exp)
    log = staticmethod(np.log)
    sin = staticmethod(np.sin)
    cos = staticmethod(np.cos)
    asin = staticmethod(np.arcsin)
    acos = staticmethod(np.arccos)
    atan = staticmethod(np.arctan)
    atan2 = staticmethod(np.arctan2)
    sqrt = staticmethod(np.sqrt)
    abs = staticmethod(np.abs)
    sign = staticmethod(np.sign)
    floor = staticmethod(np.floor)
    isnan = staticmethod(np.isnan)
    isfinite = staticmethod(np.isfinite)
    maximum = staticmethod(np.maximum)
    minimum = staticmethod(np.minimum)

    @staticmethod
    def where(cond, a, b):
        return np.where(cond, a, b)

    def cast(self, mask, like):
        return np.asarray(mask).astype(np.result_type(like) if not np.isscalar(like) else self.dtype)

    # last axis
    @staticmethod
    def sum(x):
        return x.sum(-1, keepdims=True)

    @staticmethod
    def sum_axis(x, axis):
        return x.sum(axis)

    @staticmethod
    def amax(x):
        return x.max(-1, keepdims=True)

    @staticmethod
    def amin(x):
        return x.min(-1, keepdims=True)

    def argmax(self, x):
        return _first_arg(x[..., None], "max").astype(x.dtype)

    def argmin(self, x):
        return _first_arg(x[..., None], "min").astype(x.dtype)

    @staticmethod
    def concat(parts):
        lead = np.broadcast_shapes(*[p.shape[:-1] for p in parts])
        return np.concatenate([np.broadcast_to(p, lead + p.shape[-1:]) for p in parts], axis=-1)

    def const(self, value, dim):
        return np.full((dim,), float(value), dtype=self.dtype)

    def arange(self, n):
        return np.arange(n, dtype=self.dtype)

    @staticmethod
    def reshape(x, shape):
        return np.reshape(x, shape)

    @staticmethod
    def broadcast_to(x, shape):
        return np.broadcast_to(x, shape)

    # reductions over axis -2
    def acc(self, x):
        return x.astype(self.acc_dtype, copy=False)

    def out(self, x):
        return x.astype(self.out_dtype, copy=False)

    @staticmethod
    def rsum(x):
        return x.sum(-2)

    @staticmethod
    def rmax(x):
        return x.max(-2)

    @staticmethod
    def rargmin(x):
        return _first_arg(x, "min")

    @staticmethod
    def rargmax(x):
        return _first_arg(x, "max")

    @staticmethod
    def take(x, idx):
        return np.take_along_axis(x, idx, axis=-2)

    @staticmethod
    def index_offset(idx, j0):
        return idx.astype(np.int64) + j0

    @staticmethod
    def jrange(f):
        n = f.shape[-2]
        return np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], f.shape)

    @staticmethod
    def rargsort_nanfirst(x):
        nan = np.isnan(x)
        key = np.where(nan, -np.inf, x)
        o1 = np.argsort(key, axis=-2, kind="stable")
        o2 = np.argsort(~np.take_along_axis(nan, o1, axis=-2), axis=-2, kind="stable")
        return np.take_along_axis(o1, o2, axis=-2)

    @staticmethod
    def cat_j(parts):
        return np.concatenate(parts, axis=-2)

    @staticmethod
    def empty(shape, dtype):
        return np.empty(shape, dtype=dtype)

    @staticmethod
    def vector(values, like):
        """The list ``values`` as a vector of ``like``'s dtype."""
        return np.asarray(values, dtype=like.dtype)

    @staticmethod
    def full_j(like, n, value):
        """An array shaped like ``like`` but with ``n`` entries along axis -2, filled with ``value``."""
        return np.full(like.shape[:-2] + (n, like.shape[-1]), value, dtype=like.dtype)


def _first_arg(x, kind: str):
    """Index along axis -2 of the first NaN if any, else of the first min/max."""
    nan = np.isnan(x)
    fill = np.inf if kind == "min" else -np.inf
    clean = np.where(nan, fill, x)
    best = clean.argmin(-2) if kind == "min" else clean.argmax(-2)
    return np.where(nan.any(-2), nan.argmax(-2), best).astype(np.int64)
