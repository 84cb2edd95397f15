"""The torch array namespace, kept under its former name (it lives in :mod:`polykeops.arrays.torch`)."""

from __future__ import annotations

from ..arrays.torch import TorchLibrary, TorchNamespace

__all__ = ["TorchLibrary", "TorchNamespace"]
