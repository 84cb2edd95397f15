"""The array namespace (see :mod:`polykeops.formula.arrays`) for torch tensors."""

from __future__ import annotations

import torch

from ..common.adapters import ArrayLibrary, ReferenceNamespace

_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64, "int64": torch.int64}


class TorchLibrary(ArrayLibrary):
    """torch's spelling of the operations shared with NumPy (see :mod:`polykeops.common.adapters`)."""

    lib = torch
    _keep = {"keepdim": True}

    @staticmethod
    def _astype(x, dtype):
        return x.to(dtype)

    @staticmethod
    def _cat(parts, axis):
        return torch.cat(parts, dim=axis)

    @staticmethod
    def _stack(parts, axis):
        return torch.stack(parts, dim=axis)

    @staticmethod
    def _argsort(x, axis):
        return torch.sort(x, dim=axis, stable=True).indices

    @staticmethod
    def _take_j(x, idx):
        shape = torch.broadcast_shapes(x.shape[:-2], idx.shape[:-2])
        x = x.expand(*shape, *x.shape[-2:])
        idx = idx.expand(*shape, *idx.shape[-2:])
        return torch.take_along_dim(x, idx, dim=-2)

    @staticmethod
    def _first_extreme(x, kind):
        """(torch's argmin/argmax do not promise the first index on ties.)"""
        ext = x.amin(-2, keepdim=True) if kind == "min" else x.amax(-2, keepdim=True)
        hit = (x == ext).to(torch.int8)
        return torch.argmax(hit, dim=-2)

    @staticmethod
    def _placed_like(like):
        return {"device": like.device}

    @staticmethod
    def _size(x):
        return x.numel()

    @staticmethod
    def _copy(x):
        return x.clone()

    @staticmethod
    def _contiguous(x):
        return x.contiguous()


class TorchNamespace(TorchLibrary, ReferenceNamespace):
    """Reference-evaluation primitives on torch tensors of one working dtype and device."""

    kind = "torch"

    def __init__(self, dtype, acc_dtype=None, out_dtype=None, k=None, kahan=False, device="cpu"):
        super().__init__(dtype, acc_dtype, out_dtype, k, kahan)
        self.device = torch.device(device)
        self._alloc = {"device": self.device}

    @staticmethod
    def _to_dtype(d):
        if isinstance(d, torch.dtype):
            return d
        return _DTYPES[str(d)]

    def cast(self, mask, like):
        dtype = like.dtype if isinstance(like, torch.Tensor) else self.dtype
        return mask.to(dtype)
