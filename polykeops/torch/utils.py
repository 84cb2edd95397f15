"""Dense torch reference helpers under the names of pykeops' ``pykeops.torch.utils``.

Each builds the whole ``M x N`` matrix: for small problems and tests only.
"""

from __future__ import annotations

import torch

__all__ = ["WarmUpGpu", "is_on_device", "squared_distances", "torch_kernel"]


def is_on_device(x) -> bool:
    """Whether the tensor ``x`` lives on a GPU."""
    return x.is_cuda


def squared_distances(x, y):
    """``|x_i - y_j|^2`` for x of shape (M, D) and y of shape (N, D): an (M, N) tensor."""
    xx = (x * x).sum(1)[:, None]
    yy = (y * y).sum(1)[None, :]
    return xx + yy - 2.0 * (x @ y.transpose(0, 1))


def torch_kernel(x, y, s, kernel):
    """The dense (M, N) radial kernel of scale ``s``: "gaussian", "laplacian", "cauchy" or
    "inverse_multiquadric"."""
    sq = squared_distances(x, y)
    s2 = s * s
    if kernel == "gaussian":
        return torch.exp(-sq / s2)
    if kernel == "laplacian":
        return torch.exp(-torch.sqrt(sq) / s)
    if kernel == "cauchy":
        return 1.0 / (1.0 + sq / s2)
    if kernel == "inverse_multiquadric":
        return torch.rsqrt(1.0 + sq / s2)
    raise ValueError(f"unknown kernel {kernel!r}")


def WarmUpGpu():
    """Nothing to warm up (kept for pykeops' scripts)."""
    return None
