"""What every array kind shares, written once against the array library (no library imported here).

* :class:`ArrayLibrary`: one array library, its module (``lib``) and the few operations
  that NumPy and torch spell differently (the ``_`` hooks it lists);
* :class:`Adapter`: what the backends need of an array kind (device, data pointer,
  allocation, dtype conversion, host copies), one instance per kind;
* :class:`ReferenceNamespace`: the array namespace of the formula layer
  (:mod:`polykeops.formula.arrays`), used by the reference evaluation;
* :class:`ClusterOps`: the primitives of the block-sparse helpers
  (:mod:`polykeops.common.cluster`) that read alike in every library.

Each kind's module (:mod:`.numpy`, :mod:`.torch`) subclasses these with its library.
"""

from __future__ import annotations

import math
from typing import Any

# Elementwise functions of the array namespace, taken from the library under the same name
# unless ``ArrayLibrary.renamed`` says otherwise.
ELEMENTWISE = tuple(
    "exp log sin cos asin acos atan atan2 sqrt abs sign floor isnan isfinite maximum minimum where".split()
)


class ArrayLibrary:
    """One array library: its module and its spelling of what NumPy and torch name differently.

    Subclasses set ``lib``, ``renamed`` and ``_keep`` and define these static hooks:

    * ``_astype(x, dtype)``: ``x`` converted to ``dtype`` (``x`` itself if it already has it);
    * ``_cat(parts, axis)``, ``_stack(parts, axis)``;
    * ``_argsort(x, axis)``: stable argsort along ``axis``;
    * ``_take_j(x, idx)``: entries of ``x`` at the indices ``idx`` along axis -2, the leading
      axes broadcast;
    * ``_first_extreme(x, kind)``: first index of the min (``kind == "min"``) / max along axis -2
      of a NaN-free ``x``;
    * ``_placed_like(like)``: keyword arguments that create an array where ``like`` lives;
    * ``_size(x)`` (number of entries), ``_copy(x)``, ``_contiguous(x)``.
    """

    lib: Any = None  # the array module
    renamed: dict = {}  # namespace name -> library name, for the ELEMENTWISE functions
    _keep: dict = {}  # keyword argument keeping the reduced axis (keepdims / keepdim)


class Adapter(ArrayLibrary):
    """What polykeops' backends need to know about one kind of array.

    Dtypes are named by strings (``"float32"``, ``"int64"``...), devices by strings
    (``"cpu"``, ``"cuda:0"``).  Subclasses set ``kind`` and ``array_type`` and implement
    the methods below; :func:`polykeops.backends.arrays.adapter_for` finds the adapter of an array.
    """

    kind = ""
    array_type: Any = None  # the library's array class

    def owns(self, a) -> bool:
        """Whether ``a`` is an array of this kind."""
        return isinstance(a, self.array_type)

    def device(self, a) -> str:
        """Where ``a`` lives: ``"cpu"``, ``"cuda:0"``..."""
        raise NotImplementedError

    def dtype_name(self, a) -> str:
        """The name of ``a``'s dtype (``"float32"``...)."""
        raise NotImplementedError

    def data_ptr(self, a) -> int:
        """The address of ``a``'s first element."""
        raise NotImplementedError

    def contiguous(self, a):
        """``a`` itself if it is C-contiguous, else a C-contiguous copy."""
        raise NotImplementedError

    def empty(self, shape, dtype_name: str, like=None):
        """An uninitialised array of this kind, on ``like``'s device (default: the host)."""
        raise NotImplementedError

    def astype(self, a, dtype_name: str):
        """``a`` converted to ``dtype_name`` (``a`` itself if it already has it)."""
        return self._astype(a, self.dtype(dtype_name))

    def dtype(self, dtype_name: str):
        """The library's dtype object called ``dtype_name``."""
        raise NotImplementedError

    def to_host(self, a):
        """``a`` as a NumPy array: a view sharing ``a``'s memory where it is on the host, else a copy."""
        raise NotImplementedError

    def from_host(self, host, like=None):
        """The NumPy array ``host`` as an array of this kind, on ``like``'s device (default: the host)."""
        raise NotImplementedError

    def sum(self, a, axis: int, keepdims: bool = False):
        """The sum of ``a`` along ``axis``."""
        return a.sum(axis, **self._keep) if keepdims else a.sum(axis)

    def namespace(self, dtype, acc_dtype=None, out_dtype=None, k=None, kahan=False, like=None):
        """The reference-evaluation namespace (:class:`ReferenceNamespace`) for arrays of this kind
        computed in ``dtype``, on ``like``'s device."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<polykeops array adapter {self.kind!r}>"


class ReferenceNamespace(ArrayLibrary):
    """Reference-evaluation primitives (the ``xp`` of :mod:`polykeops.formula.arrays`) on arrays
    of one working dtype; the elementwise functions are bound from ``lib`` for each subclass."""

    kind = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.lib is not None:
            for name in ELEMENTWISE:
                if getattr(cls, name, None) is None:
                    setattr(cls, name, staticmethod(getattr(cls.lib, cls.renamed.get(name, name))))

    def __init__(self, dtype, acc_dtype=None, out_dtype=None, k=None, kahan=False):
        self.dtype = self._to_dtype(dtype)
        self.acc_dtype = self._to_dtype(acc_dtype or dtype)
        self.out_dtype = self._to_dtype(out_dtype or dtype)
        self.k = k
        self.kahan = kahan
        self._alloc = {}  # keyword arguments placing the arrays this namespace creates

    @staticmethod
    def _to_dtype(d):
        """The library's dtype object for ``d`` (a name or a dtype)."""
        raise NotImplementedError

    def cast(self, mask, like):
        raise NotImplementedError

    # last axis
    def sum(self, x):
        return x.sum(-1, **self._keep)

    @staticmethod
    def sum_axis(x, axis):
        return x.sum(axis)

    def amax(self, x):
        return self.lib.amax(x, -1, **self._keep)

    def amin(self, x):
        return self.lib.amin(x, -1, **self._keep)

    def argmax(self, x):
        return self._astype(self._first_arg(x[..., None], "max"), x.dtype)

    def argmin(self, x):
        return self._astype(self._first_arg(x[..., None], "min"), x.dtype)

    def concat(self, parts):
        lead = self.lib.broadcast_shapes(*[p.shape[:-1] for p in parts])
        return self._cat([self.lib.broadcast_to(p, (*lead, p.shape[-1])) for p in parts], -1)

    def const(self, value, dim):
        return self.lib.full((dim,), float(value), dtype=self.dtype, **self._alloc)

    def arange(self, n):
        return self.lib.arange(n, dtype=self.dtype, **self._alloc)

    def reshape(self, x, shape):
        return self.lib.reshape(x, shape)

    def broadcast_to(self, x, shape):
        return self.lib.broadcast_to(x, shape)

    # reductions over axis -2
    def acc(self, x):
        return self._astype(x, self.acc_dtype)

    def out(self, x):
        return self._astype(x, self.out_dtype)

    @staticmethod
    def rsum(x):
        return x.sum(-2)

    def rmax(self, x):
        return self.lib.amax(x, -2)

    def rargmin(self, x):
        return self._first_arg(x, "min")

    def rargmax(self, x):
        return self._first_arg(x, "max")

    def take(self, x, idx):
        return self._take_j(x, idx)

    def index_offset(self, idx, j0):
        return self._astype(idx, self.lib.int64) + j0

    def jrange(self, f):
        n = f.shape[-2]
        j = self.lib.arange(n, dtype=self.lib.int64, **self._placed_like(f))
        return self.lib.broadcast_to(j[:, None], f.shape)

    def rargsort_nanfirst(self, x):
        nan = self.lib.isnan(x)
        key = self.lib.where(nan, self.lib.full_like(x, -math.inf), x)
        o1 = self._argsort(key, -2)
        o2 = self._argsort(self._astype(~self._take_j(nan, o1), self.lib.int8), -2)
        return self._take_j(o1, o2)

    def cat_j(self, parts):
        return self._cat(parts, -2)

    def empty(self, shape, dtype):
        return self.lib.empty(shape, dtype=self._to_dtype(dtype), **self._alloc)

    def vector(self, values, like):
        """The list ``values`` as a vector of ``like``'s dtype (and device)."""
        return self.lib.asarray(values, dtype=like.dtype, **self._placed_like(like))

    def full_j(self, like, n, value):
        """An array shaped like ``like`` but with ``n`` entries along axis -2, filled with ``value``."""
        return self.lib.full(
            (*like.shape[:-2], n, like.shape[-1]), value, dtype=like.dtype, **self._placed_like(like)
        )

    def _first_arg(self, x, kind: str):
        """Index (int64) along axis -2 of the first NaN if any, else of the first min/max."""
        nan = self.lib.isnan(x)
        fill = math.inf if kind == "min" else -math.inf
        best = self._first_extreme(self.lib.where(nan, self.lib.full_like(x, fill), x), kind)
        first_nan = self.lib.argmax(self._astype(nan, self.lib.int8), -2)
        return self._astype(self.lib.where(nan.any(-2), first_nan, best), self.lib.int64)


class ClusterOps(ArrayLibrary):
    """The array primitives of :mod:`polykeops.common.cluster` that read alike in NumPy and torch;
    subclasses add ``unique_rows_inverse``, ``index_add_rows``, ``where_zero``, ``as_bool`` and
    ``nonzero``."""

    @staticmethod
    def shape(a):
        return tuple(a.shape)

    @staticmethod
    def take(a, idx):
        return a[idx]

    def floor_int(self, a):
        return self._astype(self.lib.floor(a), self.lib.int64)

    def unique_inverse(self, keys):
        """For each entry of the 1-D ``keys``, the rank of its value among the distinct values."""
        _, inverse = self.lib.unique(keys, return_inverse=True)
        return self._astype(self.lib.reshape(inverse, (-1,)), self.lib.int64)

    def argsort_stable(self, a):
        return self._argsort(a, -1)

    def cumsum(self, a):
        return self._astype(self.lib.cumsum(a, 0), self.lib.int64)

    def stack_cols(self, a, b):
        return self._astype(self._stack([a, b], 1), self.lib.int64)

    def ones_like_rows(self, x):
        return self.lib.ones((x.shape[0], 1), dtype=x.dtype, **self._placed_like(x))

    def as_column(self, w):
        return self.lib.reshape(w, (-1, 1))

    def max_plus_one(self, lab):
        return int(lab.max()) + 1 if self._size(lab) else 0

    def flatten(self, a):
        return self.lib.reshape(a, (-1,))

    def row_counts(self, k):
        return self._astype(k.sum(1), self.lib.int64)

    def transpose(self, k):
        return self._contiguous(k.T)

    def as_int64(self, a):
        return self._contiguous(self._astype(a, self.lib.int64))

    def bincount(self, lab, n):
        return self._astype(self.lib.bincount(lab, minlength=n or 0), self.lib.int64)

    def mask_rows(self, ranges, mask):
        ranges = self._copy(ranges)
        ranges[mask, 1] = ranges[mask, 0]
        return ranges
