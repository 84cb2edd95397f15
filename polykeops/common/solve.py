"""Linear solves with symbolic kernel matrices: conjugate gradient on ``alpha I + K``.

``K.solve(b, alpha=...)`` returns ``a`` such that ``alpha * a_i + sum_j K_ij a_j = b_i``
for a symmetric positive (semi-)definite LazyTensor ``K`` (M = N, the same points
on both sides).  Each column of ``b`` (and each batch) is solved independently.
With torch tensors the result is differentiable: the backward pass solves a
second system with the same operator (see :mod:`polykeops.torch.solve`).
"""

from __future__ import annotations

from ..backends.arrays import adapter_for
from ..errors import FormulaError, ShapeError


def default_tolerance(dtype_name: str) -> float:
    return 1e-6 if dtype_name in ("float32", "float16") else 1e-10


def conjugate_gradient(apply_a, b, *, tol: float, max_iter: int, sqrt):
    """Solve ``apply_a(x) = b`` column by column (axis -2 is the system's axis)."""

    def dot(u, v):
        w = u * v
        return adapter_for(w).sum(w, -2, keepdims=True)

    x = b * 0
    r = b + 0
    p = r + 0
    rs = dot(r, r)
    bnorm = sqrt(rs)
    limit = tol * (bnorm + (bnorm == 0))
    for _ in range(max_iter):
        if bool((sqrt(rs) <= limit).all()):
            break
        ap = apply_a(p)
        pap = dot(p, ap)
        step = rs / (pap + (pap == 0))
        x = x + step * p
        r = r - step * ap
        rs_new = dot(r, r)
        p = r + (rs_new / (rs + (rs == 0))) * p
        rs = rs_new
    return x


def kernel_operator(lazy, alpha, backend=None, **options):
    """``v -> alpha * v + sum_j K_ij v_j`` for the LazyTensor ``K`` (v of shape (*b, N, E))."""
    tools = lazy._tools
    cls = type(lazy)
    axis_j = lazy.nbatchdims + 1

    def apply_a(v):
        kv = (lazy * cls(tools.insert_j_axis(v))).sum(dim=axis_j, backend=backend, **options)
        return kv + alpha * v if alpha else kv

    return apply_a


def check_system(lazy, b_shape) -> None:
    if lazy.formula.dim != 1:
        raise FormulaError(f"solve needs a scalar kernel (vector dimension 1), got {lazy.formula.dim}")
    if lazy.ni is not None and lazy.nj is not None and lazy.ni != lazy.nj:
        raise ShapeError(f"solve needs a square kernel matrix, got M = {lazy.ni}, N = {lazy.nj}")
    n = lazy.nj if lazy.nj is not None else lazy.ni
    if len(b_shape) < 2 or (n is not None and b_shape[-2] != n):
        raise ShapeError(f"solve: the right-hand side must have shape (..., {n}, E), got {tuple(b_shape)}")


def solve(lazy, other, *, alpha=0, eps=None, max_iter=None, backend=None, **options):
    """Shared implementation of ``LazyTensor.solve`` (``other``: an array); returns an array of
    the shape of ``other``."""
    tools = lazy._tools
    if tools.is_array(other):
        b = other
    else:
        raise FormulaError(f"solve: the right-hand side must be an array, got {type(other).__name__}")
    shape = tools.shape(b)
    squeeze = len(shape) == 1
    if squeeze:
        b = tools.reshape(b, (shape[0], 1))
    check_system(lazy, tools.shape(b))
    tools.dtype_name(b, "solve right-hand side")
    tol = eps if eps is not None else default_tolerance(lazy.dtype_name or "float32")
    n = tools.shape(b)[-2]
    iters = max_iter if max_iter is not None else max(10, 2 * n)
    x = tools.solve(lazy, b, alpha=alpha, tol=tol, max_iter=iters, backend=backend, options=options)
    return tools.reshape(x, (shape[0],)) if squeeze else x
