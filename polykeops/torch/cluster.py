"""Block-sparse helpers for torch tensors (pykeops' ``pykeops.torch.cluster``).

See :mod:`polykeops.common.cluster` for what each function computes.
"""

from __future__ import annotations

import torch

from ..common import cluster as _c


class _Ops:
    shape = staticmethod(lambda a: tuple(a.shape))
    floor_int = staticmethod(lambda a: torch.floor(a).to(torch.int64))
    argsort_stable = staticmethod(lambda a: torch.sort(a, stable=True).indices)
    take = staticmethod(lambda a, idx: a[idx])
    cumsum = staticmethod(lambda a: torch.cumsum(a, 0).to(torch.int64))
    stack_cols = staticmethod(lambda a, b: torch.stack([a, b], dim=1).to(torch.int64))
    ones_like_rows = staticmethod(lambda x: torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device))
    as_column = staticmethod(lambda w: w.reshape(-1, 1))
    max_plus_one = staticmethod(lambda lab: int(lab.max()) + 1 if lab.numel() else 0)
    where_zero = staticmethod(lambda w, v: torch.where(w == 0, torch.full_like(w, v), w))
    flatten = staticmethod(lambda a: a.reshape(-1))
    as_bool = staticmethod(lambda k: torch.as_tensor(k).to(torch.bool))
    nonzero = staticmethod(lambda k: torch.nonzero(k, as_tuple=True))
    row_counts = staticmethod(lambda k: k.sum(1).to(torch.int64))
    transpose = staticmethod(lambda k: k.t().contiguous())
    as_int64 = staticmethod(lambda a: a.to(torch.int64).contiguous())

    @staticmethod
    def unique_rows_inverse(cells):
        _, inverse = torch.unique(cells, dim=0, return_inverse=True)
        return inverse.reshape(-1).to(torch.int64)

    @staticmethod
    def bincount(lab, n):
        return torch.bincount(lab, minlength=n or 0).to(torch.int64)

    @staticmethod
    def index_add_rows(n, lab, values):
        out = torch.zeros(n, values.shape[1], dtype=values.dtype, device=values.device)
        return out.index_add(0, lab, values)

    @staticmethod
    def mask_rows(ranges, mask):
        ranges = ranges.clone()
        ranges[mask, 1] = ranges[mask, 0]
        return ranges


__all__ = _c.ClusterAPI(_Ops()).export(globals())
