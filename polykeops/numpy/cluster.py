"""Block-sparse helpers for NumPy arrays (pykeops' ``pykeops.numpy.cluster``).

See :mod:`polykeops.common.cluster` for what each function computes.
"""

from __future__ import annotations

import numpy as np

from ..backends.arrays.base import ClusterOps
from ..backends.arrays.numpy import NumpyLibrary
from ..common import cluster as _c


class _Ops(NumpyLibrary, ClusterOps):
    where_zero = staticmethod(lambda w, v: np.where(w == 0, v, w))
    as_bool = staticmethod(lambda k: np.asarray(k).astype(bool))
    nonzero = staticmethod(lambda k: np.nonzero(k))

    @staticmethod
    def unique_rows_inverse(cells):
        _, inverse = np.unique(cells, axis=0, return_inverse=True)
        return inverse.reshape(-1).astype(np.int64)

    @staticmethod
    def index_add_rows(n, lab, values):
        out = np.zeros((n, values.shape[1]), dtype=values.dtype)
        np.add.at(out, lab, values)
        return out


__all__ = _c.ClusterAPI(_Ops()).export(globals())
