"""The NumPy array namespace, kept under its former name (it lives in :mod:`polykeops.arrays.numpy`)."""

from __future__ import annotations

from ..arrays.numpy import NumpyLibrary, NumpyNamespace

__all__ = ["NumpyLibrary", "NumpyNamespace"]
