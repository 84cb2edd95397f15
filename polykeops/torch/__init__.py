"""The torch front end: ``LazyTensor``, ``Vi``, ``Vj``, ``Pm``, ``Genred``.

Works with CPU and CUDA tensors; every reduction is differentiable with
``torch.autograd`` to any order (see :mod:`polykeops.torch.autograd`).
"""

from __future__ import annotations

from ..common.complex_lazy_tensor import ComplexGenericLazyTensor, ComplexSupportMixin
from ..common.lazy_tensor import GenericLazyTensor
from .tools import TorchTools


class LazyTensor(ComplexSupportMixin, GenericLazyTensor):
    """Symbolic wrapper for torch tensors.

    ``LazyTensor(x[:, None, :])`` is indexed by i, ``LazyTensor(y[None, :, :])``
    by j, a 1-D tensor or a float is a parameter, an int an exact constant, and
    ``LazyTensor((index, dim, category))`` a placeholder.  Combine them with
    arithmetic and the methods below, then reduce with ``sum``, ``logsumexp``,
    ``min``, ``argKmin``... along ``dim`` (the i axis or the j axis).
    """

    _tools = TorchTools()


class ComplexLazyTensor(ComplexGenericLazyTensor, LazyTensor):
    """A complex LazyTensor: ``LazyTensor(z)`` for a complex tensor ``z`` (complex64/complex128).

    Stored as real formulas (real parts, then imaginary parts); see
    :mod:`polykeops.common.complex_lazy_tensor`.
    """

    _real_class = LazyTensor


LazyTensor._complex_class = ComplexLazyTensor


def Vi(x_or_ind, dim=None):
    """An i-variable: ``Vi(tensor)`` with an (M, D) tensor, or the placeholder ``Vi(index, dim)``."""
    return LazyTensor(x_or_ind, axis=0) if dim is None else LazyTensor((x_or_ind, dim, 0))


def Vj(x_or_ind, dim=None):
    """A j-variable: ``Vj(tensor)`` with an (N, D) tensor, or the placeholder ``Vj(index, dim)``."""
    return LazyTensor(x_or_ind, axis=1) if dim is None else LazyTensor((x_or_ind, dim, 1))


def Pm(x_or_ind, dim=None):
    """A parameter: ``Pm(tensor or float)``, or the placeholder ``Pm(index, dim)``."""
    if dim is not None:
        return LazyTensor((x_or_ind, dim, 2))
    if isinstance(x_or_ind, (int, float)) and not isinstance(x_or_ind, bool):
        return LazyTensor(float(x_or_ind))
    return LazyTensor(x_or_ind, axis=2)


__all__ = ["LazyTensor", "ComplexLazyTensor", "Vi", "Vj", "Pm"]


from ..common.genred import GenericGenred, GenericKernelSolve, generic  # noqa: E402


class Genred(GenericGenred):
    """pykeops' Genred for torch tensors (see :mod:`polykeops.common.genred`)."""

    _tools = TorchTools()


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

    _tools = TorchTools()
    _genred = Genred


__all__ += ["KernelSolve"]
