"""The array namespace that reference implementations are written against.

The formula layer imports no array library.  Reference implementations in the
op table and the reductions receive an object ``xp`` with the methods below;
:mod:`polykeops.numpy.xp` and :mod:`polykeops.torch.xp` provide them for NumPy
and torch.  Arrays also support the Python operators (``+ - * / ** -x``,
comparisons, ``[..., a:b]`` slicing and ``[..., None, :]`` insertion) with
broadcasting, and ``.shape``.  Python scalars combine with arrays without
changing their dtype.

Elementwise: ``exp log sin cos asin acos atan sqrt abs sign floor tanh sinh cosh
erf expm1 log1p``,
``atan2(y, x)``, ``where(cond, a, b)``, ``cast(bool_array, like)`` (to the float
dtype of ``like``), ``isnan(x)``, ``maximum(a, b)``, ``minimum(a, b)``.

Last axis, keeping it (size 1): ``sum amax amin``; ``argmax argmin`` (first
index on ties, as a float array of the working dtype).

Shapes: ``sum_axis(x, axis)`` (dropping the axis), ``reshape(x, shape)``,
``concat(list)`` (along the last axis), ``const(value, dim)`` (a float vector
of shape ``(dim,)``), ``arange(n)`` (float ``0..n-1``).

Reductions use a few more (``logsumexp``-style helpers, sorting); see
:mod:`polykeops.formula.reductions`.
"""

from typing import Any, Protocol


class ArrayNamespace(Protocol):
    """Structural type of the ``xp`` objects (documentation only)."""

    dtype: Any

    def const(self, value, dim: int): ...
    def where(self, cond, a, b): ...
    def cast(self, mask, like): ...
