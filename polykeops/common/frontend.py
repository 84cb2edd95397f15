"""Module-level helpers shared by :mod:`polykeops.numpy` and :mod:`polykeops.torch`."""

from __future__ import annotations

from .genred import generic


def variable_constructors(lazy_cls):
    """pykeops' ``Vi``, ``Vj``, ``Pm`` for one LazyTensor class."""

    def Vi(x_or_ind, dim=None):
        """An i-variable: ``Vi(array)`` with an (M, D) array, or the placeholder ``Vi(index, dim)``."""
        return lazy_cls(x_or_ind, axis=0) if dim is None else lazy_cls((x_or_ind, dim, 0))

    def Vj(x_or_ind, dim=None):
        """A j-variable: ``Vj(array)`` with an (N, D) array, or the placeholder ``Vj(index, dim)``."""
        return lazy_cls(x_or_ind, axis=1) if dim is None else lazy_cls((x_or_ind, dim, 1))

    def Pm(x_or_ind, dim=None):
        """A parameter: ``Pm(array or float)``, or the placeholder ``Pm(index, dim)``."""
        if dim is not None:
            return lazy_cls((x_or_ind, dim, 2))
        if isinstance(x_or_ind, (int, float)) and not isinstance(x_or_ind, bool):
            return lazy_cls(float(x_or_ind))
        return lazy_cls(x_or_ind, axis=2)

    for f in (Vi, Vj, Pm):
        f.__module__ = lazy_cls.__module__
    return Vi, Vj, Pm


def generic_helpers(genred_cls):
    """pykeops' ``generic_sum``, ``generic_logsumexp``, ``generic_argmin``, ``generic_argkmin``."""

    def generic_sum(formula, output, *aliases, **kwargs):
        """Genred with a Sum reduction; ``output`` (``"a = Vi(D)"``) sets the axis."""
        return generic(genred_cls, "Sum", formula, output, *aliases, **kwargs)

    def generic_logsumexp(formula, output, *aliases, **kwargs):
        """Genred with a LogSumExp reduction; ``output`` sets the axis."""
        return generic(genred_cls, "LogSumExp", formula, output, *aliases, **kwargs)

    def generic_argmin(formula, output, *aliases, **kwargs):
        """Genred with an ArgMin reduction; ``output`` sets the axis."""
        return generic(genred_cls, "ArgMin", formula, output, *aliases, **kwargs)

    def generic_argkmin(formula, output, *aliases, **kwargs):
        """Genred with an ArgKMin reduction; ``output`` (``"a = Vi(K)"``) sets the axis and K."""
        return generic(genred_cls, "ArgKMin", formula, output, *aliases, **kwargs)

    helpers = (generic_sum, generic_logsumexp, generic_argmin, generic_argkmin)
    for f in helpers:
        f.__module__ = genred_cls.__module__
    return helpers
