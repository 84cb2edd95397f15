"""Block-sparse reduction helpers (pykeops' ``cluster`` module), array-library neutral.

Typical use: cluster both point clouds on a grid, sort the points by cluster,
compute cluster ranges and centroids, keep the pairs of clusters that are close
enough, and pass ``ranges=from_matrix(ranges_x, ranges_y, keep)`` to a reduction:
only the kept blocks of the M x N matrix are computed.

Each function takes an ``ops`` object (see :class:`polykeops.numpy.cluster` and
:class:`polykeops.torch.cluster`) with a handful of array primitives.
"""

from __future__ import annotations

from ..errors import ShapeError


def grid_cluster(ops, x, size):
    """Labels (int64, shape (N,)) of the points ``x`` (N, D) on a grid of voxel ``size``."""
    shape = ops.shape(x)
    if len(shape) != 2:
        raise ShapeError(f"grid_cluster: x must have shape (N, D), got {shape}")
    if getattr(ops, "grid_from_minimum", False) and shape[0] > 0:
        # pykeops 2.3's torch grid_cluster counts the voxels from the data's minimum (its NumPy
        # one from 0): the same choice per library gives the same voxels
        x = x - ops.lib.amin(x, 0, keepdim=True)
    cells = ops.floor_int(x / size)
    keys = _row_keys(ops, cells)
    return ops.unique_rows_inverse(cells) if keys is None else ops.unique_inverse(keys)


def _row_keys(ops, cells):
    """One int64 key per row of the integer matrix ``cells``, ordered as the rows are
    (lexicographically), so that the labels of a 1-D ``unique`` on the keys are those of a
    row-wise ``unique``, which is much slower; None when the keys would not fit in int64."""
    n, d = ops.shape(cells)
    if not n or not d:
        return None
    mins = ops.lib.amin(cells, 0).tolist()
    mult = row_key_multipliers(mins, ops.lib.amax(cells, 0).tolist())
    if mult is None:
        return None
    keys = (cells[:, 0] - mins[0]) * mult[0]
    for k in range(1, d):
        keys = keys + (cells[:, k] - mins[k]) * mult[k]
    return keys


def row_key_multipliers(mins, maxs):
    """Multipliers (Python ints) that pack integer rows into one int64 key each.

    ``sum_d (cell_d - mins[d]) * m[d]`` orders rows as lexicographic order does, so the
    labels of ``unique`` on the keys are those of a row-wise ``unique``, which is much
    slower. ``None`` when the keys would not fit in int64 (the caller falls back).
    """
    mult, total = [], 1
    for lo, hi in zip(reversed(mins), reversed(maxs)):
        mult.append(total)
        total *= int(hi) - int(lo) + 1
    return mult[::-1] if total < 2**62 else None


def sort_clusters(ops, x, lab):
    """``(x sorted by label, sorted labels)``; ``x`` may be a tuple/list of arrays sorted alike."""
    order = ops.argsort_stable(lab)
    lab_sorted = ops.take(lab, order)
    if isinstance(x, (tuple, list)):
        return type(x)(ops.take(a, order) for a in x), lab_sorted
    return ops.take(x, order), lab_sorted


def cluster_ranges(ops, lab, nlab=None):
    """``(C, 2)`` int64 ranges ``[start, end)`` of each label in the sorted label array ``lab``."""
    counts = ops.bincount(lab, nlab)
    ends = ops.cumsum(counts)
    return ops.stack_cols(ends - counts, ends)


def cluster_centroids(ops, x, lab, nlab=None, weights=None, weights_c=None):
    """Weighted centroid of each cluster, shape ``(C, D)``."""
    n = ops.shape(x)[0]
    w = ops.ones_like_rows(x) if weights is None else ops.as_column(weights)
    if nlab is None:
        nlab = ops.max_plus_one(lab)
    wc = ops.index_add_rows(nlab, lab, w) if weights_c is None else ops.as_column(weights_c)
    sums = ops.index_add_rows(nlab, lab, x * w)
    if n == 0:
        return sums
    return sums / ops.where_zero(wc, 1.0)


def cluster_ranges_centroids(ops, x, lab, weights=None, min_weight=1e-9):
    """``(ranges, centroids, cluster weights)`` for sorted labels; clusters lighter than
    ``min_weight`` get an empty range."""
    nlab = ops.max_plus_one(lab)
    w = ops.ones_like_rows(x) if weights is None else ops.as_column(weights)
    weights_c = ops.index_add_rows(nlab, lab, w)
    centroids = cluster_centroids(ops, x, lab, nlab, weights=w, weights_c=weights_c)
    ranges = cluster_ranges(ops, lab, nlab)
    light = ops.flatten(weights_c) < min_weight
    ranges = ops.mask_rows(ranges, light)
    return ranges, centroids, ops.flatten(weights_c)


def from_matrix(ops, ranges_i, ranges_j, keep):
    """pykeops' 6-tuple of block-sparse ranges from a boolean (or 0/1) cluster matrix ``keep``.

    ``keep[k, l]`` says whether the block ``ranges_i[k] x ranges_j[l]`` is computed.
    """
    kshape = ops.shape(keep)
    if len(kshape) != 2 or kshape[0] != ops.shape(ranges_i)[0] or kshape[1] != ops.shape(ranges_j)[0]:
        raise ShapeError(
            f"from_matrix: keep has shape {kshape}, expected ({ops.shape(ranges_i)[0]}, "
            f"{ops.shape(ranges_j)[0]})"
        )
    keep = ops.as_bool(keep)
    rows, cols = ops.nonzero(keep)  # row-major order
    slices_i = ops.cumsum(ops.row_counts(keep))
    redranges_j = ops.take(ranges_j, cols)
    rows_t, cols_t = ops.nonzero(ops.transpose(keep))
    slices_j = ops.cumsum(ops.row_counts(ops.transpose(keep)))
    redranges_i = ops.take(ranges_i, cols_t)
    del rows, rows_t
    return (ops.as_int64(ranges_i), slices_i, redranges_j, ops.as_int64(ranges_j), slices_j, redranges_i)


def swap_axes(ranges):
    """The 6-tuple for the transposed problem (i and j exchanged)."""
    return tuple(ranges[3:]) + tuple(ranges[:3])


class ClusterAPI:
    """The public cluster functions bound to one array library's ``ops``."""

    def __init__(self, ops):
        self.ops = ops

    def grid_cluster(self, x, size):
        """Labels (int64) of the points ``x`` (N, D) on a grid of voxel ``size`` (float or (D,))."""
        return grid_cluster(self.ops, x, size)

    def sort_clusters(self, x, lab):
        """``(x sorted by label, sorted labels)``; ``x`` may be a tuple of arrays."""
        return sort_clusters(self.ops, x, lab)

    def cluster_ranges(self, lab, Nlab=None):
        """``(C, 2)`` ranges of each label in sorted labels."""
        return cluster_ranges(self.ops, lab, Nlab)

    def cluster_centroids(self, x, lab, Nlab=None, weights=None, weights_c=None):
        """Weighted centroids of the clusters, ``(C, D)``."""
        return cluster_centroids(self.ops, x, lab, Nlab, weights, weights_c)

    def cluster_ranges_centroids(self, x, lab, weights=None, min_weight=1e-9):
        """``(ranges, centroids, cluster weights)`` for sorted labels."""
        return cluster_ranges_centroids(self.ops, x, lab, weights, min_weight)

    def from_matrix(self, ranges_i, ranges_j, keep):
        """Block-sparse 6-tuple from a boolean cluster-interaction matrix ``keep``."""
        return from_matrix(self.ops, ranges_i, ranges_j, keep)

    @staticmethod
    def swap_axes(ranges):
        """The 6-tuple for the transposed problem."""
        return swap_axes(ranges)

    def export(self, namespace: dict) -> list[str]:
        """Put the functions in a module's namespace; returns their names (for ``__all__``)."""
        names = ["grid_cluster", "sort_clusters", "cluster_ranges", "cluster_centroids",
                 "cluster_ranges_centroids", "from_matrix", "swap_axes"]
        for name in names:
            namespace[name] = getattr(self, name)
        return names
