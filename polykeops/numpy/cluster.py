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


_OPS = _Ops()


def grid_cluster(x, size):
    """Labels of the points ``x`` (N, D) on a grid of voxel ``size`` (float or (D,) array)."""
    return _c.grid_cluster(_OPS, x, size)


def sort_clusters(x, lab):
    """``(x sorted by label, sorted labels)``."""
    return _c.sort_clusters(_OPS, x, lab)


def cluster_ranges(lab, Nlab=None):
    """``(C, 2)`` ranges of each label in sorted labels."""
    return _c.cluster_ranges(_OPS, lab, Nlab)


def cluster_centroids(x, lab, Nlab=None, weights=None, weights_c=None):
    """Weighted centroids of the clusters."""
    return _c.cluster_centroids(_OPS, x, lab, Nlab, weights, weights_c)


def cluster_ranges_centroids(x, lab, weights=None, min_weight=1e-9):
    """``(ranges, centroids, cluster weights)``."""
    return _c.cluster_ranges_centroids(_OPS, x, lab, weights, min_weight)


def from_matrix(ranges_i, ranges_j, keep):
    """Block-sparse 6-tuple from a boolean cluster-interaction matrix."""
    return _c.from_matrix(_OPS, ranges_i, ranges_j, keep)


swap_axes = _c.swap_axes

__all__ = ["grid_cluster", "sort_clusters", "cluster_ranges", "cluster_centroids",
           "cluster_ranges_centroids", "from_matrix", "swap_axes"]
