"""The torch front end: ``LazyTensor``, ``Vi``, ``Vj``, ``Pm``, ``Genred``.

Works with CPU and CUDA tensors; every reduction is differentiable with
``torch.autograd`` to any order (see :mod:`polykeops.torch.autograd`).
"""

from __future__ import annotations

from ..common.complex_lazy_tensor import ComplexGenericLazyTensor, ComplexSupportMixin
from ..common.frontend import generic_helpers, variable_constructors
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


Vi, Vj, Pm = variable_constructors(LazyTensor)

__all__ = ["LazyTensor", "ComplexLazyTensor", "Vi", "Vj", "Pm"]


from ..common.genred import GenericGenred, GenericKernelSolve  # noqa: E402


class Genred(GenericGenred):
    """pykeops' Genred for torch tensors (see :mod:`polykeops.common.genred`)."""

    _tools = TorchTools()


generic_sum, generic_logsumexp, generic_argmin, generic_argkmin = generic_helpers(Genred)

__all__ += ["Genred", "generic_sum", "generic_logsumexp", "generic_argmin", "generic_argkmin"]


class KernelSolve(GenericKernelSolve):
    """pykeops' KernelSolve (conjugate gradient on ``alpha I + K``); see :mod:`polykeops.common.genred`."""

    _tools = TorchTools()
    _genred = Genred


__all__ += ["KernelSolve"]
