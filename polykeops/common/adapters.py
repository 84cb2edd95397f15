"""The library-neutral part of the front end's array glue (``NumpyTools`` / ``TorchTools``).

The array libraries themselves (their spelling of each operation, the adapters the
backends use, the reference namespaces) live in :mod:`polykeops.backends.arrays`.  This module
imports no array library.
"""

from __future__ import annotations

from typing import Any

from ..backends.arrays.base import ArrayLibrary
from ..errors import DTypeError


class ArrayTools(ArrayLibrary):
    """The part of the front end's array glue (``NumpyTools`` / ``TorchTools``) that reads alike
    in NumPy and torch."""

    array_kind = ""
    array_type: Any = None  # the library's array class

    @staticmethod
    def autocast_dtype(device) -> str | None:
        """The dtype that operands of different dtypes are computed in on ``device`` (a
        mixed-precision context such as ``torch.autocast``), or None: mixing them is an error."""
        return None

    def is_array(self, x) -> bool:
        return isinstance(x, self.array_type)

    @staticmethod
    def shape(x):
        return tuple(x.shape)

    @staticmethod
    def ndim(x) -> int:
        return x.ndim

    def reshape(self, x, shape):
        return self.lib.reshape(x, shape)

    def swap_ij(self, x):
        return self.lib.swapaxes(x, -3, -2)

    def to_real_blocks(self, x):
        """The real blocks ``(..., 2D)`` = [real parts, imaginary parts] of a complex array ``(..., D)``
        (with torch, differentiable: gradients reach ``x``)."""
        if x.dtype not in (self.lib.complex64, self.lib.complex128):
            raise DTypeError(
                f"complex LazyTensor input of shape {tuple(x.shape)} has dtype {x.dtype}; "
                "use complex64 or complex128"
            )
        x = self.lib.reshape(x, (1,)) if x.ndim == 0 else x
        return self._cat([x.real, x.imag], -1)
