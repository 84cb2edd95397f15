"""The NumPy front end: ``LazyTensor``, ``Vi``, ``Vj``, ``Pm``, ``Genred``.

Imports nothing but NumPy (torch is not needed).
"""

from __future__ import annotations

from ..common.complex_lazy_tensor import ComplexSupportMixin
from ..common.frontend import FRONT_END_NAMES, GENERIC_HELPER_NAMES, front_end, generic_helpers
from ..common.lazy_tensor import GenericLazyTensor
from .tools import NumpyTools


class LazyTensor(ComplexSupportMixin, GenericLazyTensor):
    """Symbolic wrapper for NumPy arrays (see :class:`polykeops.torch.LazyTensor`)."""

    _tools = NumpyTools()


ComplexLazyTensor, Vi, Vj, Pm, from_dense, Genred, KernelSolve = front_end(LazyTensor)
generic_sum, generic_logsumexp, generic_argmin, generic_argkmin = generic_helpers(Genred)

__all__ = ["LazyTensor", *FRONT_END_NAMES, *GENERIC_HELPER_NAMES]
