"""Block-sparse helpers for torch tensors (pykeops' ``pykeops.torch.cluster``).

See :mod:`polykeops.common.cluster` for what each function computes.
"""

from __future__ import annotations

import torch

from ..backends.arrays.base import ClusterOps
from ..backends.arrays.torch import TorchLibrary
from ..common import cluster as _c


class _Ops(TorchLibrary, ClusterOps):
    grid_from_minimum = True  # as pykeops 2.3's torch grid_cluster
    where_zero = staticmethod(lambda w, v: torch.where(w == 0, torch.full_like(w, v), w))
    as_bool = staticmethod(lambda k: torch.as_tensor(k).to(torch.bool))
    nonzero = staticmethod(lambda k: torch.nonzero(k, as_tuple=True))

    @staticmethod
    def unique_rows_inverse(cells):
        _, inverse = torch.unique(cells, dim=0, return_inverse=True)
        return inverse.reshape(-1).to(torch.int64)

    @staticmethod
    def index_add_rows(n, lab, values):
        out = torch.zeros(n, values.shape[1], dtype=values.dtype, device=values.device)
        return out.index_add(0, lab, values)


__all__ = _c.ClusterAPI(_Ops()).export(globals())
