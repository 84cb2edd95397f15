"""NumPy arrays: the library's spelling, its adapter and its reference namespace."""

from __future__ import annotations

import numpy as np

from .base import Adapter, ArrayLibrary, ReferenceNamespace


class NumpyLibrary(ArrayLibrary):
    """NumPy's spelling of the operations shared with torch (see :mod:`polykeops.backends.arrays.base`)."""

    lib = np
    renamed = {"asin": "arcsin", "acos": "arccos", "atan": "arctan", "atan2": "arctan2"}
    _keep = {"keepdims": True}

    @staticmethod
    def _astype(x, dtype):
        return x.astype(dtype, copy=False)

    @staticmethod
    def _cat(parts, axis):
        return np.concatenate(parts, axis=axis)

    @staticmethod
    def _stack(parts, axis):
        return np.stack(parts, axis=axis)

    @staticmethod
    def _argsort(x, axis):
        return np.argsort(x, axis=axis, kind="stable")

    @staticmethod
    def _take_j(x, idx):
        return np.take_along_axis(x, idx, axis=-2)

    @staticmethod
    def _first_extreme(x, kind):
        return x.argmin(-2) if kind == "min" else x.argmax(-2)

    @staticmethod
    def _placed_like(like):
        return {}

    @staticmethod
    def _size(x):
        return x.size

    @staticmethod
    def _copy(x):
        return x.copy()

    @staticmethod
    def _contiguous(x):
        return np.ascontiguousarray(x)


class NumpyNamespace(NumpyLibrary, ReferenceNamespace):
    """Reference-evaluation primitives on NumPy arrays of one working dtype."""

    kind = "numpy"
    _to_dtype = staticmethod(np.dtype)

    def cast(self, mask, like):
        return np.asarray(mask).astype(np.result_type(like) if not np.isscalar(like) else self.dtype)


class NumpyAdapter(NumpyLibrary, Adapter):
    """NumPy arrays (always on the host)."""

    kind = "numpy"
    array_type = np.ndarray

    @staticmethod
    def device(a) -> str:
        return "cpu"

    @staticmethod
    def dtype_name(a) -> str:
        return str(a.dtype)

    @staticmethod
    def dtype(dtype_name: str):
        return np.dtype(dtype_name)

    @staticmethod
    def data_ptr(a) -> int:
        return a.ctypes.data

    @staticmethod
    def contiguous(a):
        return a if a.flags.c_contiguous else np.ascontiguousarray(a)

    @staticmethod
    def empty(shape, dtype_name: str, like=None):
        return np.empty(tuple(shape), dtype=dtype_name)

    @staticmethod
    def to_host(a):
        return np.asarray(a)

    @staticmethod
    def from_host(host, like=None):
        return np.asarray(host)

    @staticmethod
    def namespace(dtype, acc_dtype=None, out_dtype=None, k=None, kahan=False, like=None):
        return NumpyNamespace(dtype, acc_dtype, out_dtype, k=k, kahan=kahan)


ADAPTER = NumpyAdapter()
