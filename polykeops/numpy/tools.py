"""NumPy glue: how the shared front end handles NumPy arrays."""

from __future__ import annotations

import numpy as np

from ..backends.arrays.numpy import NumpyLibrary
from ..backends.dispatch import dispatch
from ..common.adapters import ArrayTools
from ..common.tools import check_float_dtype
from ..errors import DTypeError


class NumpyTools(NumpyLibrary, ArrayTools):
    array_type = np.ndarray
    array_kind = "numpy"

    @staticmethod
    def dtype_name(x, what: str) -> str:
        return check_float_dtype(str(x.dtype), what, x.shape)

    @staticmethod
    def dtype_object(name):
        return np.dtype(name) if name else None

    @staticmethod
    def device_name(x) -> str:
        return "cpu"

    @staticmethod
    def insert_j_axis(v):
        return v[..., None, :, :]

    @staticmethod
    def scalar_array(value, dtype, like=None, shape=(1,)):
        if isinstance(value, tuple):
            return np.asarray(value, dtype=dtype).reshape(shape)
        return np.full(shape, value, dtype=dtype)

    @staticmethod
    def as_arg(a, shape, dtype):
        if str(a.dtype) != dtype:
            raise DTypeError(f"argument of shape {a.shape} has dtype {a.dtype}, expected {dtype}")
        return np.ascontiguousarray(np.reshape(a, shape))

    @staticmethod
    def copy_into(out, res):
        out[...] = res

    evaluate = staticmethod(dispatch)  # NumPy arrays: no autograd, the call goes straight to the backend

    @staticmethod
    def to_numpy(a):
        return a

    @staticmethod
    def from_numpy(a):
        return a

    @staticmethod
    def as_int64(r, name):
        if r.dtype.kind not in "iu":
            raise DTypeError(f"ranges: {name} must be an integer array, got dtype {r.dtype}")
        return np.ascontiguousarray(r, dtype=np.int64)

    @staticmethod
    def solve(lazy, b, *, alpha, tol, max_iter, backend, options):
        from ..common.solve import conjugate_gradient, kernel_operator

        apply_a = kernel_operator(lazy, alpha, backend, **options)
        return conjugate_gradient(apply_a, b, tol=tol, max_iter=max_iter, sqrt=np.sqrt)

    @staticmethod
    def namespace(dtype, like=None):
        from ..backends.arrays.numpy import NumpyNamespace

        return NumpyNamespace(dtype)

    @staticmethod
    def solve_operator(apply_k, tensors, b, alpha, tol, max_iter):
        from ..common.solve import conjugate_gradient

        return conjugate_gradient(
            lambda v: apply_k(v) + alpha * v, b, tol=tol, max_iter=max_iter, sqrt=np.sqrt
        )

    # -- complex LazyTensors: complex (..., D) <-> real blocks (..., 2D) = [real parts, imaginary parts]
    @staticmethod
    def is_complex(x) -> bool:
        return isinstance(x, np.ndarray) and np.iscomplexobj(x)

    @staticmethod
    def from_real_blocks(x):
        d = x.shape[-1] // 2
        res = np.empty(x.shape[:-1] + (d,), dtype=np.result_type(x.dtype, np.complex64))
        res.real = x[..., :d]
        res.imag = x[..., d:]
        return res

    @staticmethod
    def complex_dtype_object(name):
        return np.dtype(name) if name else None
