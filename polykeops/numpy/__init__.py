"""The NumPy front end: ``LazyTensor``, ``Vi``, ``Vj``, ``Pm``, ``Genred``.

Imports nothing but NumPy (torch is not needed).
"""

from __future__ import annotations

from ..common.complex_lazy_tensor import ComplexGenericLazyTensor, ComplexSupportMixin
from ..common.frontend import generic_helpers, variable_constructors
from ..common.lazy_tensor import GenericLazyTensor
from .tools import NumpyTools


class LazyTensor(ComplexSupportMixin, GenericLazyTensor):
    """Symbolic wrapper for NumPy arrays (see :class:`polykeops.torch.LazyTensor`)."""

    _tools = NumpyTools()


class ComplexLazyTensor(ComplexGenericLazyTensor, LazyTensor):
    """A complex LazyTensor: ``LazyTensor(z)`` for a complex array ``z`` (complex64/complex128).

    Stored as real formulas (real parts, then imaginary parts); see
    :mod:`polykeops.common.complex_lazy_tensor`.
    """

    _real_class = LazyTensor


LazyTensor._complex_class = ComplexLazyTensor


Vi, Vj, Pm = variable_constructors(LazyTensor)

__all__ = ["LazyTensor", "ComplexLazyTensor", "Vi", "Vj", "Pm"]


from ..common.genred import GenericGenred, GenericKernelSolve  # noqa: E402


class Genred(GenericGenred):
    """pykeops' Genred for NumPy arrays (see :mod:`polykeops.common.genred`)."""

    _tools = NumpyTools()


generic_sum, generic_logsumexp, generic_argmin, generic_argkmin = generic_helpers(Genred)

__all__ += ["Genred", "generic_sum", "generic_logsumexp", "generic_argmin", "generic_argkmin"]


class KernelSolve(GenericKernelSolve):
    """pykeops' KernelSolve (conjugate gradient on ``alpha I + K``); see :mod:`polykeops.common.genred`."""

    _tools = NumpyTools()
    _genred = Genred


__all__ += ["KernelSolve"]
