"""torch tensors: the library's spelling, its adapter and its reference namespace.

Imported only when a torch tensor is met (or the ``"torch"`` adapter is asked for by name).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Adapter, ArrayLibrary, ReferenceNamespace

_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "bool": torch.bool,
}


class TorchLibrary(ArrayLibrary):
    """torch's spelling of the operations shared with NumPy (see :mod:`polykeops.backends.arrays.base`)."""

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


class TorchAdapter(TorchLibrary, Adapter):
    """torch tensors, on any device."""

    kind = "torch"
    array_type = torch.Tensor

    @staticmethod
    def device(a) -> str:
        return str(a.device)

    @staticmethod
    def dtype_name(a) -> str:
        return str(a.dtype).removeprefix("torch.")

    @staticmethod
    def dtype(dtype_name: str):
        found = _DTYPES.get(dtype_name)
        return found if found is not None else getattr(torch, dtype_name)

    @staticmethod
    def data_ptr(a) -> int:
        return a.data_ptr()

    @staticmethod
    def contiguous(a):
        return a if a.is_contiguous() else a.contiguous()

    def empty(self, shape, dtype_name: str, like=None):
        if like is None:
            return torch.empty(tuple(shape), dtype=self.dtype(dtype_name))
        return torch.empty(tuple(shape), dtype=self.dtype(dtype_name), device=like.device)

    @staticmethod
    def to_host(a):
        try:
            return a.detach().cpu().numpy()
        except RuntimeError:  # under torch.func transforms, tensors cannot be viewed by NumPy
            return np.asarray(a.tolist())

    @staticmethod
    def from_host(host, like=None):
        host = np.asarray(host)
        t = torch.from_numpy(host if host.flags.writeable else host.copy())  # torch wants writeable memory
        return t if like is None or like.device.type == "cpu" else t.to(like.device)

    @staticmethod
    def namespace(dtype, acc_dtype=None, out_dtype=None, k=None, kahan=False, like=None):
        device = like.device if like is not None else "cpu"
        return TorchNamespace(dtype, acc_dtype, out_dtype, k=k, kahan=kahan, device=device)


ADAPTER = TorchAdapter()
