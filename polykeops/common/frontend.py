"""Module-level helpers shared by :mod:`polykeops.numpy` and :mod:`polykeops.torch`.

:func:`front_end` builds, around an array library's real ``LazyTensor`` class,
everything else its module exports (the same code serves both libraries).
"""

from __future__ import annotations

from .complex_lazy_tensor import ComplexGenericLazyTensor
from .genred import GenericGenred, GenericKernelSolve, generic
from .lazy_tensor import FROM_DENSE_MAX_ROW, GenericLazyTensor

#: the names :func:`front_end` returns, in order (each front end exports them with ``LazyTensor``)
FRONT_END_NAMES = ("ComplexLazyTensor", "Vi", "Vj", "Pm", "from_dense", "Genred", "KernelSolve")

#: the names :func:`generic_helpers` returns, in order
GENERIC_HELPER_NAMES = ("generic_sum", "generic_logsumexp", "generic_argmin", "generic_argkmin")


def _front_end_class(name: str, bases: tuple, module: str, doc: str, **attrs) -> type:
    return type(name, bases, dict(attrs, __module__=module, __qualname__=name, __doc__=doc))


def front_end(lazy_cls) -> tuple:
    """The objects named by :data:`FRONT_END_NAMES` for the real LazyTensor class ``lazy_cls``.

    ``ComplexLazyTensor``, ``Genred`` and ``KernelSolve`` are subclasses of the
    array-neutral classes bound to ``lazy_cls._tools``, defined in ``lazy_cls``'s
    module; ``lazy_cls._complex_class`` is set to the new ``ComplexLazyTensor``, and
    ``lazy_cls.Genred`` / ``lazy_cls.KernelSolve`` (pykeops' ``get_tools()`` attributes) to
    the new ``Genred`` / ``KernelSolve``.
    """
    module, tools = lazy_cls.__module__, lazy_cls._tools
    array = "tensor" if tools.array_kind == "torch" else "array"
    complex_cls = _front_end_class(
        "ComplexLazyTensor",
        (ComplexGenericLazyTensor, lazy_cls),
        module,
        f"""A complex LazyTensor: ``LazyTensor(z)`` for a complex {array} ``z`` (complex64/complex128).

    Stored as real formulas (real parts, then imaginary parts); see
    :mod:`polykeops.common.complex_lazy_tensor`.
    """,
        _real_class=lazy_cls,
    )
    lazy_cls._complex_class = complex_cls
    genred_cls = _front_end_class(
        "Genred",
        (GenericGenred,),
        module,
        f"pykeops' Genred for {tools.array_kind} {array}s (see :mod:`polykeops.common.genred`).",
        _tools=tools,
    )
    solve_cls = _front_end_class(
        "KernelSolve",
        (GenericKernelSolve,),
        module,
        "pykeops' KernelSolve (conjugate gradient on ``alpha I + K``); see :mod:`polykeops.common.genred`.",
        _tools=tools,
        _genred=genred_cls,
    )
    lazy_cls.Genred, lazy_cls.KernelSolve = genred_cls, solve_cls  # pykeops' get_tools() attributes

    def from_dense(array, max_row_size: int = FROM_DENSE_MAX_ROW):
        return lazy_cls.from_dense(array, max_row_size)

    from_dense.__doc__ = GenericLazyTensor.from_dense.__doc__
    from_dense.__module__ = module
    return (complex_cls, *variable_constructors(lazy_cls), from_dense, genred_cls, solve_cls)


def variable_constructors(lazy_cls):
    """pykeops' ``Vi``, ``Vj``, ``Pm`` for one LazyTensor class."""

    def placeholder(ind, dim, cat, is_complex):
        return lazy_cls((ind, dim, cat), is_complex=True) if is_complex else lazy_cls((ind, dim, cat))

    def Vi(x_or_ind, dim=None, is_complex=False):
        """An i-variable: ``Vi(array)`` with an (M, D) array, or the placeholder ``Vi(index, dim)``
        (``is_complex=True``: a complex placeholder of complex dimension ``dim``)."""
        return lazy_cls(x_or_ind, axis=0) if dim is None else placeholder(x_or_ind, dim, 0, is_complex)

    def Vj(x_or_ind, dim=None, is_complex=False):
        """A j-variable: ``Vj(array)`` with an (N, D) array, or the placeholder ``Vj(index, dim)``
        (``is_complex=True``: a complex placeholder of complex dimension ``dim``)."""
        return lazy_cls(x_or_ind, axis=1) if dim is None else placeholder(x_or_ind, dim, 1, is_complex)

    def Pm(x_or_ind, dim=None, is_complex=False):
        """A parameter: ``Pm(array or number)``, or the placeholder ``Pm(index, dim)``
        (``is_complex=True``: a complex placeholder of complex dimension ``dim``)."""
        if dim is not None:
            return placeholder(x_or_ind, dim, 2, is_complex)
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
