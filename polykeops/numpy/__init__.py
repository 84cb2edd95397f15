"""The NumPy front end: ``LazyTensor``, ``Vi``, ``Vj``, ``Pm``, ``Genred``.

Imports nothing but NumPy (torch is not needed).
"""

from __future__ import annotations

from ..common.complex_lazy_tensor import ComplexGenericLazyTensor, ComplexSupportMixin
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


def Vi(x_or_ind, dim=None):
    """An i-variable: ``Vi(array)`` with an (M, D) array, or the placeholder ``Vi(index, dim)``."""
    return LazyTensor(x_or_ind, axis=0) if dim is None else LazyTensor((x_or_ind, dim, 0))


def Vj(x_or_ind, dim=None):
    """A j-variable: ``Vj(array)`` with an (N, D) array, or the placeholder ``Vj(index, dim)``."""
    return LazyTensor(x_or_ind, axis=1) if dim is None else LazyTensor((x_or_ind, dim, 1))


def Pm(x_or_ind, dim=None):
    """A parameter: ``Pm(array or float)``, or the placeholder ``Pm(index, dim)``."""
    if dim is not None:
        return LazyTensor((x_or_ind, dim, 2))
    if isinstance(x_or_ind, (int, float)) and not isinstance(x_or_ind, bool):
        return LazyTensor(float(x_or_ind))
    return LazyTensor(x_or_ind, axis=2)


__all__ = ["LazyTensor", "ComplexLazyTensor", "Vi", "Vj", "Pm"]


from ..common.genred import GenericGenred, GenericKernelSolve, generic  # noqa: E402


class Genred(GenericGenred):
    """pykeops' Genred for NumPy arrays (see :mod:`polykeops.common.genred`)."""

    _tools = NumpyTools()


def generic_sum(formula, output, *aliases, **kwargs):
    """Genred with a Sum reduction; ``output`` ("a = Vi(D)") sets the axis."""
    return generic(Genred, "Sum", formula, output, *aliases, **kwargs)


def generic_logsumexp(formula, output, *aliases, **kwargs):
    return generic(Genred, "LogSumExp", formula, output, *aliases, **kwargs)


def generic_argmin(formula, output, *aliases, **kwargs):
    return generic(Genred, "ArgMin", formula, output, *aliases, **kwargs)


def generic_argkmin(formula, output, *aliases, **kwargs):
    return generic(Genred, "ArgKMin", formula, output, *aliases, **kwargs)


__all__ += ["Genred", "generic_sum", "generic_logsumexp", "generic_argmin", "generic_argkmin"]


class KernelSolve(GenericKernelSolve):
    """pykeops' KernelSolve (conjugate gradient on ``alpha I + K``); see :mod:`polykeops.common.genred`."""

    _tools = NumpyTools()
    _genred = Genred


__all__ += ["KernelSolve"]
