"""Dense NumPy reference helpers under the names of pykeops' ``pykeops.numpy.utils`` (used by its
tutorials and benchmarks to check KeOps results against full matrices).

Each builds the whole ``M x N`` matrix: for small problems and tests only.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "WarmUpGpu", "chain_rules", "differences", "grad_np_kernel", "log_np_kernel", "log_sum_exp",
    "np_kernel", "np_kernel_sphere", "squared_distances",
]


def squared_distances(x, y):
    """``|x_i - y_j|^2`` for x of shape (M, D) and y of shape (N, D): an (M, N) array."""
    xx = np.sum(x * x, axis=1)[:, None]
    yy = np.sum(y * y, axis=1)[None, :]
    return xx + yy - 2.0 * (x @ y.T)


def differences(x, y):
    """``x_i[d] - y_j[d]`` as a (D, M, N) array."""
    return x.T[:, :, None] - y.T[:, None, :]


def _kernel_of(sq, s, kernel):
    s2 = s * s
    if kernel == "gaussian":
        return np.exp(-sq / s2)
    if kernel == "laplacian":
        return np.exp(-np.sqrt(sq) / s)
    if kernel == "cauchy":
        return 1.0 / (1.0 + sq / s2)
    if kernel == "inverse_multiquadric":
        return 1.0 / np.sqrt(1.0 + sq / s2)
    raise ValueError(f"unknown kernel {kernel!r}")


def np_kernel(x, y, s, kernel):
    """The dense (M, N) radial kernel matrix of scale ``s``: "gaussian", "laplacian", "cauchy" or
    "inverse_multiquadric"."""
    return _kernel_of(squared_distances(x, y), s, kernel)


def log_np_kernel(x, y, s, kernel):
    """The logarithm of :func:`np_kernel`, computed directly (no exp then log)."""
    sq = squared_distances(x, y)
    s2 = s * s
    if kernel == "gaussian":
        return -sq / s2
    if kernel == "laplacian":
        return -np.sqrt(sq) / s
    if kernel == "cauchy":
        return -np.log1p(sq / s2)
    if kernel == "inverse_multiquadric":
        return -0.5 * np.log1p(sq / s2)
    raise ValueError(f"unknown kernel {kernel!r}")


def grad_np_kernel(x, y, s, kernel):
    """The derivative of the kernel with respect to the squared distance, as an (M, N) array."""
    sq = squared_distances(x, y)
    s2 = s * s
    if kernel == "gaussian":
        return -np.exp(-sq / s2) / s2
    if kernel == "laplacian":
        r = np.sqrt(sq) / s
        return -np.exp(-r) / (2.0 * s2 * r)
    if kernel == "cauchy":
        return -1.0 / (s2 * (1.0 + sq / s2) ** 2)
    if kernel == "inverse_multiquadric":
        return -0.5 / (s2 * (1.0 + sq / s2) ** 1.5)
    raise ValueError(f"unknown kernel {kernel!r}")


def np_kernel_sphere(nalpha, nbeta, s, kernel):
    """Kernels on unit normals (M, D) and (N, D): "binet", "linear", "gaussian_unoriented",
    "gaussian_oriented"."""
    dots = nalpha @ nbeta.T
    if kernel == "binet":
        return dots**2
    if kernel == "linear":
        return dots
    if kernel == "gaussian_unoriented":
        return np.exp((2.0 * dots * dots - 2.0) / (s * s))
    if kernel == "gaussian_oriented":
        return np.exp((2.0 * dots - 2.0) / (s * s))
    raise ValueError(f"unknown kernel {kernel!r}")


def chain_rules(q, ax, by, Aa, p):
    """``sum_j q_i . (2 (ax_i[d] - by_j[d]) Aa_ij p_j)`` for each coordinate d: the gradient
    with respect to ``ax`` of ``q^T K p`` for a kernel with derivative ``Aa`` (float32, (M, D))."""
    out = np.zeros(ax.shape, dtype=np.float32)
    for d in range(ax.shape[1]):
        diff = ax[:, d][:, None] - by[:, d][None, :]
        out[:, d] = np.sum(q * ((2.0 * diff * Aa) @ p), axis=1)
    return out


def log_sum_exp(mat, axis=0):
    """``log(sum(exp(mat), axis))``, shifted by the maximum along ``axis`` (stable)."""
    m = np.max(mat, axis=axis)
    return m + np.log(np.sum(np.exp(mat - np.expand_dims(m, axis)), axis=axis))


def WarmUpGpu():
    """Nothing to warm up: polykeops compiles on first use and caches on disk (kept for pykeops'
    scripts, which call it before timing)."""
    return None
