"""The array namespace (see :mod:`polykeops.formula.arrays`) for torch tensors."""

from __future__ import annotations

import torch


class TorchNamespace:
    """Reference-evaluation primitives on torch tensors of one working dtype and device."""

    kind = "torch"

    def __init__(self, dtype, acc_dtype=None, out_dtype=None, k=None, kahan=False, device="cpu"):
        self.dtype = _dtype(dtype)
        self.acc_dtype = _dtype(acc_dtype or dtype)
        self.out_dtype = _dtype(out_dtype or dtype)
        self.k = k
        self.kahan = kahan
        self.device = torch.device(device)

    exp = staticmethod(torch.exp)
    log = staticmethod(torch.log)
    sin = staticmethod(torch.sin)
    cos = staticmethod(torch.cos)
    asin = staticmethod(torch.asin)
    acos = staticmethod(torch.acos)
    atan = staticmethod(torch.atan)
    atan2 = staticmethod(torch.atan2)
    sqrt = staticmethod(torch.sqrt)
    abs = staticmethod(torch.abs)
    sign = staticmethod(torch.sign)
    floor = staticmethod(torch.floor)
    isnan = staticmethod(torch.isnan)
    isfinite = staticmethod(torch.isfinite)
    maximum = staticmethod(torch.maximum)
    minimum = staticmethod(torch.minimum)

    @staticmethod
    def where(cond, a, b):
        return torch.where(cond, a, b)

    def cast(self, mask, like):
        dtype = like.dtype if isinstance(like, torch.Tensor) else self.dtype
        return mask.to(dtype)

    @staticmethod
    def sum(x):
        return x.sum(-1, keepdim=True)

    @staticmethod
    def sum_axis(x, axis):
        return x.sum(axis)

    @staticmethod
    def amax(x):
        return x.amax(-1, keepdim=True)

    @staticmethod
    def amin(x):
        return x.amin(-1, keepdim=True)

    def argmax(self, x):
        return _first_arg(x[..., None], "max").to(x.dtype)

    def argmin(self, x):
        return _first_arg(x[..., None], "min").to(x.dtype)

    @staticmethod
    def concat(parts):
        lead = torch.broadcast_shapes(*[p.shape[:-1] for p in parts])
        return torch.cat([p.expand(*lead, p.shape[-1]) for p in parts], dim=-1)

    def const(self, value, dim):
        return torch.full((dim,), float(value), dtype=self.dtype, device=self.device)

    def arange(self, n):
        return torch.arange(n, dtype=self.dtype, device=self.device)

    @staticmethod
    def reshape(x, shape):
        return x.reshape(shape)

    @staticmethod
    def broadcast_to(x, shape):
        return x.expand(shape)

    def acc(self, x):
        return x.to(self.acc_dtype)

    def out(self, x):
        return x.to(self.out_dtype)

    @staticmethod
    def rsum(x):
        return x.sum(-2)

    @staticmethod
    def rmax(x):
        return x.amax(-2)

    @staticmethod
    def rargmin(x):
        return _first_arg(x, "min")

    @staticmethod
    def rargmax(x):
        return _first_arg(x, "max")

    @staticmethod
    def take(x, idx):
        shape = torch.broadcast_shapes(x.shape[:-2], idx.shape[:-2])
        x = x.expand(*shape, *x.shape[-2:])
        idx = idx.expand(*shape, *idx.shape[-2:])
        return torch.take_along_dim(x, idx, dim=-2)

    @staticmethod
    def index_offset(idx, j0):
        return idx.to(torch.int64) + j0

    @staticmethod
    def jrange(f):
        n = f.shape[-2]
        return torch.arange(n, dtype=torch.int64, device=f.device)[:, None].expand(f.shape)

    @staticmethod
    def rargsort_nanfirst(x):
        nan = torch.isnan(x)
        key = torch.where(nan, torch.full_like(x, -float("inf")), x)
        o1 = torch.sort(key, dim=-2, stable=True).indices
        flag = (~torch.take_along_dim(nan, o1, dim=-2)).to(torch.int8)
        o2 = torch.sort(flag, dim=-2, stable=True).indices
        return torch.take_along_dim(o1, o2, dim=-2)

    @staticmethod
    def cat_j(parts):
        return torch.cat(parts, dim=-2)

    def empty(self, shape, dtype):
        return torch.empty(shape, dtype=_dtype(dtype), device=self.device)

    @staticmethod
    def vector(values, like):
        """The list ``values`` as a vector of ``like``'s dtype and device."""
        return torch.tensor(values, dtype=like.dtype, device=like.device)

    @staticmethod
    def full_j(like, n, value):
        """A tensor shaped like ``like`` but with ``n`` entries along axis -2, filled with ``value``."""
        return torch.full((*like.shape[:-2], n, like.shape[-1]), value, dtype=like.dtype,
                          device=like.device)


def _dtype(d):
    if isinstance(d, torch.dtype):
        return d
    return {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64,
            "int64": torch.int64}[str(d)]


def _first_arg(x, kind: str):
    nan = torch.isnan(x)
    fill = float("inf") if kind == "min" else -float("inf")
    clean = torch.where(nan, torch.full_like(x, fill), x)
    best = _first_extreme(clean, kind)
    first_nan = torch.argmax(nan.to(torch.int8), dim=-2)
    return torch.where(nan.any(-2), first_nan, best)


def _first_extreme(x, kind):
    """First index of the min/max along axis -2 (torch's argmin does not promise the first)."""
    ext = x.amin(-2, keepdim=True) if kind == "min" else x.amax(-2, keepdim=True)
    hit = (x == ext).to(torch.int8)
    return torch.argmax(hit, dim=-2)
