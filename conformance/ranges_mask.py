"""Block-sparse ranges as a mask of the dense grid, and what the pairs left out contribute.

The pairs a case's ``ranges`` keep form a mask (:func:`ranges_mask`, read from
the first half of pykeops' 6-tuple); elsewhere the formula's value F is
replaced by the reduction's neutral value (0, -inf or +inf, :func:`masked_value`),
with no noise, so that the reductions, tolerances and gradients of the oracle
only see the kept pairs.  A row (or a K-rank) with no kept pair holds the
reduction of nothing: index -1 and the empty value, which must be exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def ranges_mask(ranges, M: int, N: int) -> torch.Tensor:
    """The ``(*batch, M, N)`` boolean mask of the pairs that pykeops' 6-tuple ``ranges`` keeps.

    Read from its first half, as documented: the rows ``ranges_i[k, 0] <= i < ranges_i[k, 1]``
    are reduced over the j intervals ``redranges_j[s]``, ``slices_i[k - 1] <= s < slices_i[k]``
    (``slices_i[-1]`` read as 0).  ``ranges``: NumPy arrays or torch tensors (any device).
    """
    rx, sx, ry = (
        np.asarray(r.detach().cpu() if isinstance(r, torch.Tensor) else r, dtype=np.int64) for r in ranges[:3]
    )
    rb = rx.shape[:-2]
    mask = np.zeros(rb + (M, N), dtype=bool)
    for b in np.ndindex(*rb):
        prev = 0
        for k in range(rx.shape[-2]):
            end = int(sx[b][k])
            i0, i1 = (int(x) for x in rx[b][k])
            for s in range(prev, end):
                j0, j1 = (int(x) for x in ry[b][s])
                mask[b][i0:i1, j0:j1] = True
            prev = end
    return torch.from_numpy(mask)


def oriented_mask(mask: torch.Tensor, axis: int) -> torch.Tensor:
    """A ``(*batch, M, N)`` mask oriented like :func:`dense`'s grids: ``(*batch, R, C, 1)``."""
    return (mask.transpose(-1, -2) if axis == 0 else mask)[..., None]


def case_mask(case):
    """The oriented mask of a drawn case's ranges (None without ranges)."""
    if getattr(case, "ranges", None) is None:
        return None
    return oriented_mask(ranges_mask(case.ranges.arrays(), case.M, case.N), case.spec.axis)


def masked_value(spec) -> float:
    """What a pair left out by the ranges contributes to F: nothing (0 in a Sum, -inf in an
    exponential sum, +-inf in a selection)."""
    red = spec.red
    if red.is_selection:
        return math.inf if red.selection_kind == "min" else -math.inf
    return 0.0 if spec.reduction == "Sum" else -math.inf


def apply_mask(spec, Fs, mask, weights: bool = False):
    """``Fs`` with the pairs outside ``mask`` replaced by :func:`masked_value` (and, with ``weights``,
    the weights of those pairs by 0: torch.autograd then gives them no gradient)."""
    F = torch.where(mask, Fs[0], torch.full_like(Fs[0][..., :1, :1, :1], masked_value(spec)))
    rest = [torch.where(mask, G, torch.zeros_like(G[..., :1, :1, :1])) if weights else G for G in Fs[1:]]
    return [F] + rest
