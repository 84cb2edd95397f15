"""The torch front end: ``LazyTensor``, ``Vi``, ``Vj``, ``Pm``, ``Genred``.

Works with CPU and CUDA tensors; every reduction is differentiable with
``torch.autograd`` to any order (see :mod:`polykeops.torch.autograd`).
"""

from __future__ import annotations

import torch

from ..common.complex_lazy_tensor import ComplexSupportMixin
from ..common.frontend import FRONT_END_NAMES, GENERIC_HELPER_NAMES, front_end, generic_helpers
from ..common.lazy_tensor import GenericLazyTensor
from . import autograd  # noqa: F401  (registers the autograd of the custom operator polykeops::reduce)
from .tools import TorchTools
from .tracing import make_genred_traceable, make_traceable


class LazyTensor(ComplexSupportMixin, GenericLazyTensor):
    """Symbolic wrapper for torch tensors.

    ``LazyTensor(x[:, None, :])`` is indexed by i, ``LazyTensor(y[None, :, :])``
    by j, a 1-D tensor or a float is a parameter, an int an exact constant, and
    ``LazyTensor((index, dim, category))`` a placeholder.  Combine them with
    arithmetic and the methods below, then reduce with ``sum``, ``logsumexp``,
    ``min``, ``argKmin``... along ``dim`` (the i axis or the j axis).
    """

    _tools = TorchTools()

    def __init__(self, x=None, axis=None, is_complex=False):
        if isinstance(x, torch.Tensor) and torch.compiler.is_dynamo_compiling():
            self._pending = (x, axis)  # built outside the graph: see polykeops.torch.tracing
            return
        super().__init__(x, axis, is_complex)


ComplexLazyTensor, Vi, Vj, Pm, from_dense, Genred, KernelSolve = front_end(LazyTensor)
make_traceable(LazyTensor)
make_genred_traceable(Genred)
generic_sum, generic_logsumexp, generic_argmin, generic_argkmin = generic_helpers(Genred)

__all__ = ["LazyTensor", *FRONT_END_NAMES, *GENERIC_HELPER_NAMES]
