"""Dask glue: how the shared front end handles Dask arrays.

A reduction never computes anything here: :meth:`DaskTools.evaluate` hands the call to
:func:`polykeops.dask.plan.reduce_chunks`, which returns lazy Dask arrays.  NumPy arrays are
accepted wherever a Dask array is (parameters, ``K @ v`` with a small ``v``...): they become
one-chunk Dask arrays, one graph key each, sent once to each worker.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from ..backends.arrays.base import ArrayLibrary
from ..common.adapters import ArrayTools
from ..common.tools import check_float_dtype
from ..errors import DTypeError, ShapeError
from .plan import as_dask, reduce_chunks


class DaskLibrary(ArrayLibrary):
    """Dask's spelling of the operations the front end uses (dask.array mirrors NumPy)."""

    lib = da
    renamed = {"asin": "arcsin", "acos": "arccos", "atan": "arctan", "atan2": "arctan2"}
    _keep = {"keepdims": True}

    @staticmethod
    def _astype(x, dtype):
        return x.astype(dtype)

    @staticmethod
    def _cat(parts, axis):
        return da.concatenate(parts, axis=axis)

    @staticmethod
    def _stack(parts, axis):
        return da.stack(parts, axis=axis)

    @staticmethod
    def _size(x):
        return x.size

    @staticmethod
    def _copy(x):
        return x.copy()

    @staticmethod
    def _contiguous(x):
        return x


class DaskTools(DaskLibrary, ArrayTools):
    array_type = da.Array
    array_kind = "dask"

    def is_array(self, x) -> bool:
        return isinstance(x, (da.Array, np.ndarray))

    @staticmethod
    def dtype_name(x, what: str) -> str:
        return check_float_dtype(str(x.dtype), what, x.shape)

    @staticmethod
    def dtype_object(name):
        return np.dtype(name) if name else None

    @staticmethod
    def device_name(x) -> str:
        return "cpu"  # where the chunks live is the workers' business: each task dispatches its own

    @staticmethod
    def insert_j_axis(v):
        return as_dask(v)[..., None, :, :]

    @staticmethod
    def scalar_array(value, dtype, like=None, shape=(1,)):
        return np.full(shape, value, dtype=dtype)

    @staticmethod
    def as_arg(a, shape, dtype):
        if str(a.dtype) != dtype:
            raise DTypeError(f"argument of shape {a.shape} has dtype {a.dtype}, expected {dtype}")
        if any(isinstance(s, float) and s != s for s in a.shape):
            raise ShapeError(
                "a Dask array of unknown chunk sizes cannot be reduced: call compute_chunk_sizes() first"
            )
        return as_dask(a).reshape(shape) if tuple(a.shape) != tuple(shape) else as_dask(a)

    @staticmethod
    def copy_into(out, res):
        raise ShapeError("out= is not supported for Dask arrays (they are immutable): use the result")

    evaluate = staticmethod(reduce_chunks)  # a lazy Dask graph, nothing computed

    @staticmethod
    def to_numpy(a):
        return np.asarray(a.compute() if isinstance(a, da.Array) else a)

    @staticmethod
    def from_numpy(a):
        return as_dask(a)

    @staticmethod
    def as_int64(r, name):
        r = np.asarray(r.compute() if isinstance(r, da.Array) else r)  # ranges are small: read on the host
        if r.dtype.kind not in "iu":
            raise DTypeError(f"ranges: {name} must be an integer array, got dtype {r.dtype}")
        return np.ascontiguousarray(r, dtype=np.int64)

    @staticmethod
    def solve(lazy, b, *, alpha, tol, max_iter, backend, options):
        from ..common.solve import kernel_operator

        apply_a = kernel_operator(lazy, alpha, backend, **options)
        return conjugate_gradient(apply_a, as_dask(b), tol=tol, max_iter=max_iter)

    @staticmethod
    def solve_operator(apply_k, tensors, b, alpha, tol, max_iter):
        return conjugate_gradient(lambda v: apply_k(v) + alpha * v, as_dask(b), tol=tol, max_iter=max_iter)

    # -- complex LazyTensors: complex (..., D) <-> real blocks (..., 2D)
    @staticmethod
    def is_complex(x) -> bool:
        return isinstance(x, (da.Array, np.ndarray)) and np.issubdtype(x.dtype, np.complexfloating)

    @staticmethod
    def from_real_blocks(x):
        d = x.shape[-1] // 2
        return x[..., :d] + 1j * x[..., d:]

    @staticmethod
    def complex_dtype_object(name):
        return np.dtype(name) if name else None


def conjugate_gradient(apply_a, b, *, tol: float, max_iter: int):
    """:func:`polykeops.common.solve.conjugate_gradient` on Dask arrays: the same iteration, with
    the iterates persisted at each step (the graph stays one iteration deep; with a distributed
    client they stay on the workers) and only the residual norms brought back."""
    import dask

    def dot(u, v):
        return (u * v).sum(axis=-2, keepdims=True)

    x = b * 0
    r = b + 0
    p = r
    rs = dot(r, r)
    x, r, p, rs = dask.persist(x, r, p, rs)
    rs_host = np.asarray(rs.compute())
    limit = tol * (np.sqrt(rs_host) + (rs_host == 0))
    for _ in range(max_iter):
        if bool((np.sqrt(rs_host) <= limit).all()):
            break
        ap = apply_a(p)
        pap = dot(p, ap)
        step = rs / (pap + (pap == 0))
        x = x + step * p
        r = r - step * ap
        rs_new = dot(r, r)
        p = r + (rs_new / (rs + (rs == 0))) * p
        x, r, p, rs = dask.persist(x, r, p, rs_new)
        rs_host = np.asarray(rs.compute())
    return x
