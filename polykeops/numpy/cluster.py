"""Block-sparse helpers for NumPy arrays (pykeops' ``pykeops.numpy.cluster``).

See :mod:`polykeops.common.cluster` for what each function computes.
"""

from __future__ import annotations

import numpy as np

from ..common import cluster as _c


class _Ops:
    shape = staticmethod(lambda a: tuple(a.shape))
    floor_int = staticmethod(lambda a: np.floor(a).astype(np.int64))
    argsort_stable = staticmethod(lambda a: np.argsort(a, kind="stable"))
    take = staticmethod(lambda a, idx: a[idx])
    cumsum = staticmethod(lambda a: np.cumsum(a).astype(np.int64))
    stack_cols = staticmethod(lambda a, b: np.stack([a, b], axis=1).astype(np.int64))
    ones_like_rows = staticmethod(lambda x: np.ones((x.shape[0], 1), dtype=x.dtype))
    as_column = staticmethod(lambda w: np.reshape(w, (-1, 1)))
    max_plus_one = staticmethod(lambda lab: int(lab.max()) + 1 if lab.size else 0)
    where_zero = staticmethod(lambda w, v: np.where(w == 0, v, w))
    flatten = staticmethod(lambda a: np.reshape(a, (-1,)))
    as_bool = staticmethod(lambda k: np.asarray(k).astype(bool))
    nonzero = staticmethod(lambda k: np.nonzero(k))
    row_counts = staticmethod(lambda k: k.sum(1).astype(np.int64))
    transpose = staticmethod(lambda k: np.ascontiguousarray(k.T))
    as_int64 = staticmethod(lambda a: np.ascontiguousarray(a, dtype=np.int64))

    @staticmethod
    def unique_rows_inverse(cells):
        _, inverse = np.unique(cells, axis=0, return_inverse=True)
        return inverse.reshape(-1).astype(np.int64)

    @staticmethod
    def bincount(lab, n):
        return np.bincount(lab, minlength=n or 0).astype(np.int64)

    @staticmethod
    def index_add_rows(n, lab, values):
        out = np.zeros((n, values.shape[1]), dtype=values.dtype)
        np.add.at(out, lab, values)
        return out

    @staticmethod
    def mask_rows(ranges, mask):
        ranges = ranges.copy()
        ranges[mask, 1] = ranges[mask, 0]
        return ranges


__all__ = _c.ClusterAPI(_Ops()).export(globals())
