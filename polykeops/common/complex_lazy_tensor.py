"""Complex LazyTensors, built from real formulas.

A complex vector of dimension ``D`` is stored as a *real* formula of dimension
``2D`` in block layout: the ``D`` real parts, then the ``D`` imaginary parts.
Complex arithmetic is written with the real primitive ops (``Extract``,
``Concat``, ``Mult``, ``Cos``...), so the formula layer, every backend, the
symbolic derivatives and torch autograd work unchanged.  Complex arrays enter
as real arrays ``(..., 2D)`` (``tools.to_real_blocks``; with torch the
conversion is differentiable, so gradients reach the complex leaf with torch's
conventions) and reductions leave through ``tools.from_real_blocks``.

:class:`ComplexGenericLazyTensor` is the complex LazyTensor; each array library
subclasses it together with its real ``LazyTensor`` (``ComplexLazyTensor`` in
:mod:`polykeops.torch` and :mod:`polykeops.numpy`).  :class:`ComplexSupportMixin`
gives the real ``LazyTensor`` classes the dispatch to complex (``__new__``),
``real2complex``, ``imag2complex``, ``exp1j`` and arithmetic with complex
operands.  Methods of :class:`GenericLazyTensor` that have no complex meaning
here raise a :class:`~polykeops.errors.FormulaError` naming the method (see
:func:`_install_unsupported`; new real methods are refused until listed).
"""

from __future__ import annotations

import math
import numbers

from ..errors import DTypeError, FormulaError, ShapeError
from ..formula import algebra as A
from ..formula.nodes import Const, Node, Zero, is_zero
from . import leaves as L
from .lazy_tensor import FROM_DENSE_MAX_ROW, GenericLazyTensor

_COMPLEX_DTYPES = {"float32": "complex64", "float64": "complex128"}


# ---------------------------------------------------------------------------
# formulas: complex values as (real parts, imaginary parts) blocks
# ---------------------------------------------------------------------------
def _half(f: Node) -> int:
    if f.dim % 2:
        raise FormulaError(f"a complex formula has an even dimension, got {f.dim} for {f!r}")
    return f.dim // 2


def _re(f: Node) -> Node:
    """The real parts (dimension D) of the complex formula ``f`` (dimension 2D)."""
    d = _half(f)
    if f.op == "Concat" and f.args[0].dim == d:
        return f.args[0]
    if f.op in ("Zero", "Const"):
        return Const(f.value, d)
    return A.node("Extract", f, params=(0, d))


def _im(f: Node) -> Node:
    """The imaginary parts (dimension D) of the complex formula ``f``."""
    d = _half(f)
    if f.op == "Concat" and f.args[1].dim == d:
        return f.args[1]
    if f.op in ("Zero", "Const"):
        return Const(f.value, d)
    return A.node("Extract", f, params=(d, d))


def _pack(re: Node, im: Node) -> Node:
    """The complex formula with real parts ``re`` and imaginary parts ``im`` (broadcast)."""
    if re.dim != im.dim and 1 not in (re.dim, im.dim):
        raise FormulaError(
            f"incompatible complex dimensions {re.dim} and {im.dim}; they must be equal or one of them 1"
        )
    d = max(re.dim, im.dim)
    re, im = A.broadcast_to(re, d), A.broadcast_to(im, d)
    if (
        re.op == im.op == "Extract"
        and re.args[0] == im.args[0]
        and re.args[0].dim == 2 * d
        and re.params == (0, d)
        and im.params == (d, d)
    ):
        return re.args[0]
    if is_zero(re) and is_zero(im):
        return Zero(2 * d)
    return A.node("Concat", re, im)


def _parts(lt) -> tuple[Node, Node]:
    """(real parts, imaginary parts) of a real or complex LazyTensor."""
    f = lt.formula
    if isinstance(lt, ComplexGenericLazyTensor):
        return _re(f), _im(f)
    return f, Zero(f.dim)


def _c_add(ar, ai, br, bi):
    return _pack(A.add(ar, br), A.add(ai, bi))


def _c_sub(ar, ai, br, bi):
    return _pack(A.sub(ar, br), A.sub(ai, bi))


def _c_mul(ar, ai, br, bi):
    return _pack(A.sub(A.mul(ar, br), A.mul(ai, bi)), A.add(A.mul(ar, bi), A.mul(ai, br)))


def _c_div(ar, ai, br, bi):
    if is_zero(bi):  # division by a real number
        return _pack(A.div(ar, br), A.div(ai, br))
    den = A.add(A.square(br), A.square(bi))
    re = A.div(A.add(A.mul(ar, br), A.mul(ai, bi)), den)
    im = A.div(A.sub(A.mul(ai, br), A.mul(ar, bi)), den)
    return _pack(re, im)


def _is_complex_number(x) -> bool:
    return isinstance(x, numbers.Complex) and not isinstance(x, numbers.Real)


def wants_complex(tools, x) -> bool:
    """Whether ``LazyTensor(x)`` is complex: a complex array or a complex Python number."""
    return _is_complex_number(x) or (tools is not None and tools.is_complex(x))


def _is_complex_operand(x) -> bool:
    return isinstance(x, ComplexGenericLazyTensor) or _is_complex_number(x)


def _rewrap(cls, src, formula: Node, *others):
    """A LazyTensor of class ``cls`` with the data of ``src`` (and ``others``) and ``formula``."""
    res = cls()
    res._merge(src)
    for o in others:
        res._merge(o)
    res.formula = formula
    return res


def _check_complex_dtype(lt) -> None:
    if lt.dtype_name is not None and lt.dtype_name not in _COMPLEX_DTYPES:
        raise DTypeError(
            f"complex LazyTensors need float32 or float64 data (complex64 or complex128), got {lt.dtype_name}"
        )


# ---------------------------------------------------------------------------
# the real LazyTensor side
# ---------------------------------------------------------------------------
class ComplexSupportMixin:
    """What a real ``LazyTensor`` class needs for complex support.

    ``LazyTensor(x)`` returns the library's ``ComplexLazyTensor`` (the class
    attribute ``_complex_class``) for a complex array or number, or with
    ``is_complex=True``; arithmetic with complex operands promotes the real one.
    """

    _complex_class = None  # set by each array library
    is_complex = False

    def __new__(cls, x=None, axis=None, is_complex=False):
        if not issubclass(cls, ComplexGenericLazyTensor) and cls._complex_class is not None:
            if is_complex or wants_complex(cls._tools, x):
                return object.__new__(cls._complex_class)  # __init__ runs next (a subclass of cls)
        return object.__new__(cls)

    def __init__(self, x=None, axis=None, is_complex=False):
        super().__init__(x, axis)

    @classmethod
    def from_dense(cls, array, max_row_size: int = FROM_DENSE_MAX_ROW):
        """A dense matrix as a LazyTensor indexed by (i, j) (see :meth:`GenericLazyTensor.from_dense`).

        A complex ``array`` (complex64 or complex128) gives a ``ComplexLazyTensor`` whose
        entries are read from its real and imaginary parts (with torch, reductions are
        differentiable with respect to the complex ``array``).
        """
        real_cls = cls._real_class if issubclass(cls, ComplexGenericLazyTensor) else cls
        tools = cls._tools
        if not tools.is_complex(array):
            res = GenericLazyTensor.from_dense.__func__(real_cls, array, max_row_size)
            return res.real2complex() if real_cls is not cls else res
        shape = tuple(tools.shape(array))
        if len(shape) == 2:
            array = tools.reshape(array, shape + (1,))
        elif len(shape) < 2:
            raise ShapeError(
                f"from_dense needs a matrix of shape (M, N), (M, N, D) or (*batch, M, N, D); "
                f"got a complex array of shape {shape}"
            )
        n, d = tools.shape(array)[-2:]
        if n * d > max_row_size:
            raise ShapeError(
                f"from_dense: the complex matrix of shape {shape} has rows of N * D = {n * d} "
                f"values, more than max_row_size={max_row_size:,}: each row is one variable of "
                "that size and the gradient costs O(N * D) per pair; use dense array arithmetic, "
                "or pass a larger max_row_size"
            )
        blocks = tools.to_real_blocks(array)  # (..., M, N, 2D): the complex block layout
        res = GenericLazyTensor.from_dense.__func__(real_cls, blocks, 2 * max_row_size)
        return res._to_complex(res.formula)

    def _to_complex(self, formula: Node):
        if self._complex_class is None:
            raise FormulaError(f"{type(self).__name__} has no complex counterpart")
        res = _rewrap(self._complex_class, self, formula)
        _check_complex_dtype(res)
        return res

    def real2complex(self):
        """This real LazyTensor seen as complex (zero imaginary parts)."""
        return self._to_complex(_pack(self.formula, Zero(self.formula.dim)))

    def imag2complex(self):
        """``1j * self`` as a complex LazyTensor."""
        return self._to_complex(_pack(Zero(self.formula.dim), self.formula))

    def exp1j(self):
        """``exp(1j * self) = cos(self) + 1j sin(self)`` as a complex LazyTensor."""
        f = self.formula
        return self._to_complex(_pack(A.node("Cos", f), A.node("Sin", f)))

    def _lift(self, other):
        if isinstance(other, ComplexGenericLazyTensor) and not self.is_complex:
            raise FormulaError(
                f"cannot combine {self._summary()} with the complex {other._summary()} in this "
                "operation; complex LazyTensors support + - * / and the methods of ComplexLazyTensor "
                "(convert with .real, .imag, .abs() or .angle(), or promote with .real2complex())"
            )
        return super()._lift(other)

    def _arith(self, op: str, other, reverse: bool):
        """Arithmetic: a complex operand promotes self to complex."""
        if _is_complex_operand(other):
            return self.real2complex()._arith(op, other, reverse)
        return super()._arith(op, other, reverse)

    def sumsoftmaxweight(self, weight, dim=None, axis=None, **kwargs):
        """sum_j softmax_j(F) weight_j; a complex ``weight`` gives a complex result."""
        if not _is_complex_operand(weight):
            return super().sumsoftmaxweight(weight, dim, axis, **kwargs)
        if not isinstance(weight, ComplexGenericLazyTensor):
            weight = self._complex_class(weight)
        if self.placeholders:
            raise FormulaError("sumsoftmaxweight with a complex weight needs data, not placeholder variables")
        real_weight = _rewrap(type(self), weight, weight.formula)
        out = kwargs.pop("out", None)
        res = super().sumsoftmaxweight(real_weight, dim, axis, **kwargs)
        return weight._complex_output(res, out)

    softmax_weighted_sum = sumsoftmaxweight


# ---------------------------------------------------------------------------
# the complex LazyTensor
# ---------------------------------------------------------------------------
class ComplexGenericLazyTensor(GenericLazyTensor):
    """A LazyTensor with complex values (see the module docstring for the layout).

    Built by ``LazyTensor(z)`` for a complex array ``z`` (complex64 or
    complex128) or a complex Python number, by ``LazyTensor(x, is_complex=True)``
    (a real array with zero imaginary parts), and by ``real2complex``,
    ``imag2complex`` and ``exp1j`` of real LazyTensors.
    """

    _real_class = None  # the library's real LazyTensor, set by each array library
    _dim_label = "complex vector dimension"
    __hash__ = object.__hash__

    def __init__(self, x=None, axis=None, is_complex=True):
        if isinstance(x, tuple):  # a placeholder (index, D, category) of complex dimension D
            if len(x) != 3 or not all(isinstance(t, int) and not isinstance(t, bool) for t in x):
                raise ShapeError(
                    f"a complex LazyTensor placeholder is a tuple (index, dim, category) of ints, got {x!r}"
                )
            if x[1] < 1:
                raise ShapeError(f"a complex placeholder needs a dimension >= 1, got {x[1]} in {x!r}")
            super().__init__((x[0], 2 * x[1], x[2]))
            self.complex_placeholders = frozenset({x[0]})
            return
        tools = self._tools
        if _is_complex_number(x):
            if axis not in (None, 2):
                raise ShapeError(f"a complex number is a parameter; axis={axis} is not allowed")
            super().__init__(None)
            self.formula = _pack(self._number_part(x.real), self._number_part(x.imag))
            return
        if tools is not None and tools.is_complex(x):
            L.classify(tools.shape(x), axis, "LazyTensor")  # errors name the complex shape
            if axis == 2 and tools.ndim(x) == 2:
                x = tools.reshape(x, (-1,))
            super().__init__(tools.to_real_blocks(x), axis)
        else:  # a real value made complex: zero imaginary parts
            super().__init__(x, axis)
            if self.formula is not None:
                self.formula = _pack(self.formula, Zero(self.formula.dim))
        _check_complex_dtype(self)

    def _number_part(self, value: float) -> Node:
        if float(value).is_integer():
            return Const(int(value))
        leaf = L.scalar_leaf(value)
        self.leaves[leaf.node] = leaf
        return leaf.node

    # -- metadata ------------------------------------------------------------
    @property
    def ndim(self) -> int:
        """The complex vector dimension D (the formula stores 2D real numbers)."""
        return _half(self.formula)

    @property
    def dtype(self):
        name = _COMPLEX_DTYPES.get(self.dtype_name)
        return self._tools.complex_dtype_object(name) if name else None

    @property
    def is_complex(self) -> bool:
        return True

    def _summary(self) -> str:
        return f"complex LazyTensor {self.formula_string()} of shape {self.shape}"

    def __repr__(self) -> str:
        from ..backends.dispatch import describe_choice

        kind = self._tools.array_kind.capitalize() if self._tools else ""
        dtype = _COMPLEX_DTYPES.get(self.dtype_name, "unset (from the arrays at reduction time)")
        return "\n".join(
            [
                f"{kind} polykeops ComplexLazyTensor",
                f"    formula: {self.formula_string()}  (real parts, then imaginary parts)",
                f"    shape: {self.shape}",
                f"    dtype: {dtype}",
                f"    device: {self.device or 'cpu'}",
                f"    backend: {describe_choice(self)}",
            ]
        )

    __str__ = __repr__

    # -- building formulas ---------------------------------------------------
    def _real(self, formula: Node, *others):
        """A real LazyTensor with this one's data and ``formula``."""
        return _rewrap(self._real_class, self, formula, *others)

    def _lift_scalar(self, other):
        """A complex LazyTensor for a complex Python number, a real one for a real number."""
        return type(self)(other) if _is_complex_number(other) else super()._lift_scalar(other)

    def _real_type(self) -> type:
        return self._real_class

    def _cbinary(self, other, build, reverse=False):
        res = self._combine(other, build, reverse, operands=_parts)
        _check_complex_dtype(res)
        return res

    _ARITHMETIC = {"add": _c_add, "sub": _c_sub, "mul": _c_mul, "truediv": _c_div}

    def _arith(self, op: str, other, reverse: bool):
        return self._cbinary(other, self._ARITHMETIC[op], reverse)

    def __neg__(self):
        re, im = _parts(self)
        return self._new(_pack(A.neg(re), A.neg(im)))

    def __pow__(self, other):
        """Integer powers only (by repeated complex multiplication)."""
        if not isinstance(other, int) or isinstance(other, bool):
            raise FormulaError(f"complex LazyTensors support integer powers only, got {other!r}")
        if other < 0:
            return 1 / self ** (-other)
        if other == 0:
            return self._new(_pack(Const(1, self.ndim), Zero(self.ndim)))
        result, base, n = None, self, other
        while n:
            if n & 1:
                result = base if result is None else result * base
            n >>= 1
            if n:
                base = base * base
        return result

    def power(self, other):
        return self.__pow__(other)

    def square(self):
        return self * self

    def inv(self):
        return 1 / self

    # -- complex methods -----------------------------------------------------
    @property
    def real(self):
        """The real parts, as a real LazyTensor."""
        return self._real(_re(self.formula))

    @property
    def imag(self):
        """The imaginary parts, as a real LazyTensor."""
        return self._real(_im(self.formula))

    def angle(self):
        """The argument atan2(imag, real), as a real LazyTensor."""
        re, im = _parts(self)
        return self._real(A.node("Atan2", im, re))

    def abs(self):
        """The modulus sqrt(real^2 + imag^2), as a real LazyTensor."""
        re, im = _parts(self)
        return self._real(A.node("Sqrt", A.add(A.square(re), A.square(im))))

    def conj(self):
        """The complex conjugate."""
        re, im = _parts(self)
        return self._new(_pack(re, A.neg(im)))

    def exp(self):
        """The complex exponential exp(real) (cos(imag) + 1j sin(imag))."""
        re, im = _parts(self)
        e = A.node("Exp", re)
        return self._new(_pack(A.mul(e, A.node("Cos", im)), A.mul(e, A.node("Sin", im))))

    def real2complex(self):
        raise FormulaError("real2complex cannot be applied to a complex LazyTensor")

    def imag2complex(self):
        raise FormulaError("imag2complex cannot be applied to a complex LazyTensor (use 1j * z)")

    def exp1j(self):
        raise FormulaError("exp1j cannot be applied to a complex LazyTensor (use (1j * z).exp())")

    # -- vector operations ---------------------------------------------------
    def elem(self, i: int):
        """Complex component ``i``."""
        re, im = _parts(self)
        return self._new(_pack(A.node("Elem", re, params=(int(i),)), A.node("Elem", im, params=(int(i),))))

    def extract(self, start: int, length: int):
        """Complex components ``start .. start+length-1``."""
        re, im = _parts(self)
        p = (int(start), int(length))
        return self._new(_pack(A.node("Extract", re, params=p), A.node("Extract", im, params=p)))

    def concat(self, other):
        """Concatenation of complex vectors (a real ``other`` is promoted)."""

        def build(ar, ai, br, bi):
            return _pack(A.node("Concat", ar, br), A.node("Concat", ai, bi))

        return self._cbinary(other, build)

    # -- reductions ------------------------------------------------------------
    def _complex_output(self, res, out=None):
        res = self._tools.from_real_blocks(res)
        if out is not None:
            from .call import check_out

            check_out(self._tools, out, res, _ComplexOut)
            self._tools.copy_into(out, res)
            return out
        return res

    def _complex_reduce(self, reduction: str, red_axis: int, **kwargs):
        out = kwargs.pop("out", None)
        res = self._reduce_axis(reduction, red_axis, **kwargs)
        if self.placeholders or kwargs.get("call") is False:  # a callable: complex arrays in and out
            res.post = self._complex_output
            return res
        return self._complex_output(res, out)

    def logsumexp(self, dim=None, axis=None, weight=None, **kwargs):
        """``log sum exp(z)`` of a complex scalar formula along i (dim=0) or j (dim=1).

        Computed stably in two reductions: ``m = max Re z``, then
        ``s = sum exp(z - m)`` (complex); the result ``m + log|s| + 1j angle(s)`` is
        complex (the principal logarithm: the imaginary part lies in (-pi, pi]).
        With a ``weight`` w (real or complex, scalar or vector, as pykeops' weighted
        logsumexp): ``log sum exp(z) w``, component-wise for a vector w.
        Differentiable with torch (``m`` is a constant shift: it does not change the
        value).  With placeholder variables, returns a callable.
        """
        from .reduce import _weight_alias

        weight = _weight_alias(weight, kwargs, "logsumexp")
        if self.ndim != 1:
            raise FormulaError(
                f"logsumexp needs a scalar formula; {self._summary()} has complex dimension {self.ndim}"
            )
        red_axis = self._reduction_axis(dim, axis, "logsumexp")
        if red_axis is None:
            raise FormulaError("logsumexp is a reduction over i or j; dim=-1 is not allowed here")
        out = kwargs.pop("out", None)
        if set(getattr(weight, "placeholders", {})) - set(self.placeholders):  # arrays have none
            raise FormulaError("logsumexp: the weight may only use the placeholders of the formula")
        shift = max(self.placeholders) + 1 if self.placeholders else 0
        m_var = self._real_class((shift, 1, 0 if red_axis == 1 else 1))  # m, indexed like the output
        terms = (self - m_var).exp()
        lse = _ComplexLogSumExp(
            self._tools,
            self.real._reduce_axis("Max", red_axis, **kwargs),
            (terms if weight is None else terms * weight)._complex_reduce("Sum", red_axis, **kwargs),
        )
        if self.placeholders or kwargs.get("call") is False:
            return lse
        res = lse()
        if out is not None:
            from .call import check_out

            check_out(self._tools, out, res, _ComplexOut)
            self._tools.copy_into(out, res)
            return out
        return res

    logsumexp_reduction = logsumexp
    lse = logsumexp

    def sum(self, dim=None, axis=None, **kwargs):
        """Sum over i (dim=0), j (dim=1) or the complex vector dimension (dim=-1, symbolic)."""
        if dim is None and axis is None:
            dim = -1
        red_axis = self._reduction_axis(dim, axis, "sum")
        if red_axis is None:
            re, im = _parts(self)
            return self._new(_pack(A.vsum(re), A.vsum(im)))
        return self._complex_reduce("Sum", red_axis, **kwargs)

    def sum_reduction(self, dim=None, axis=None, **kwargs):
        red_axis = self._reduction_axis(dim, axis, "sum_reduction")
        if red_axis is None:
            raise FormulaError("sum_reduction is a reduction over i or j; dim=-1 is not allowed here")
        return self._complex_reduce("Sum", red_axis, **kwargs)

    def rmatvec(self, v):
        """``K^H @ v``: the conjugate transpose applied to ``v`` (the adjoint, as scipy's
        ``LinearOperator.rmatvec`` expects; ``K.t() @ v`` is the plain transpose)."""
        return self.conj().t() @ v

    def dense(self, max_elements: int = 100_000_000):
        """The full complex ``self.shape`` array (see :meth:`GenericLazyTensor.dense`)."""
        size = math.prod(self.shape)
        if size > max_elements:
            raise ShapeError(
                f"dense() would allocate {size:,} complex entries for shape {self.shape} "
                f"(max_elements={max_elements:,}); reduce it instead, or raise max_elements"
            )
        tools = self._tools
        res = tools.from_real_blocks(self._real(self.formula).dense(max_elements=2 * size))
        return tools.reshape(res, self.shape)


class _ComplexLogSumExp:
    """``m + log(s)`` from the Max reduction ``m`` of the real parts and the Sum reduction
    ``s`` of ``exp(z - m)`` (a reduction over placeholders ``0..n-1`` and ``m`` at ``n``);
    both are arrays, or callables taking the placeholder arrays."""

    def __init__(self, tools, max_part, sum_part):
        self.tools, self.max_part, self.sum_part = tools, max_part, sum_part

    def __call__(self, *arrays, **kwargs):
        m = self.max_part(*arrays, **kwargs) if callable(self.max_part) else self.max_part
        detach = getattr(m, "detach", None)  # torch: the shift m carries no gradient
        m = detach() if detach is not None else m
        xp = self.tools.namespace(self.tools.dtype_name(m, "logsumexp maximum"), like=m)
        finite = xp.isfinite(m)
        m = xp.where(finite, m, xp.where(finite, m, 1) - 1)  # 0 where no real part is finite
        s = self.sum_part(*arrays, m, **kwargs)
        return m + xp.log(s)  # log(0) = -inf: rows of -inf real parts (or empty) give -inf

    def __repr__(self):
        return f"<polykeops complex logsumexp: max then {self.sum_part!r}>"


#: public methods of the real LazyTensor that complex LazyTensors inherit unchanged
_INHERITED = frozenset(
    {
        "nbatchdims",
        "axis",
        "shape",
        "formula_string",
        "t",
        "T",
        "matvec",
        "lt_constructor",
        "get_tools",
    }
)

_ORDERED = frozenset(
    {
        "min",
        "max",
        "argmin",
        "argmax",
        "min_argmin",
        "max_argmax",
        "Kmin",
        "argKmin",
        "Kmin_argKmin",
    }
)


def _unsupported(name: str):
    base = name[: -len("_reduction")] if name.endswith("_reduction") else name
    if base in _ORDERED:
        hint = "complex numbers are not ordered: reduce z.abs(), z.real, z.imag or z.angle() instead"
    else:
        hint = "convert with .real, .imag, .abs() or .angle() first"

    def method(self, *args, **kwargs):
        raise FormulaError(f"{name} is not supported for complex LazyTensors; {hint}")

    method.__name__ = name
    method.__doc__ = f"Not supported for complex LazyTensors ({hint})."
    return method


def _install_unsupported() -> None:
    """Refuse the real-only methods (reductions, maths, comparisons) on complex LazyTensors."""
    own = ComplexGenericLazyTensor.__dict__
    for klass in GenericLazyTensor.__mro__[:-1]:
        for name, value in vars(klass).items():
            if name.startswith("_") or name in own or name in _INHERITED:
                continue
            if isinstance(value, property):
                setattr(ComplexGenericLazyTensor, name, property(_unsupported(name)))
            elif callable(value) and not isinstance(value, (staticmethod, classmethod)):
                setattr(ComplexGenericLazyTensor, name, _unsupported(name))
    for name in ("__eq__", "__ne__", "__lt__", "__gt__", "__le__", "__ge__", "__or__", "__ror__"):
        setattr(ComplexGenericLazyTensor, name, _unsupported(name))


_install_unsupported()


class _ComplexOut:
    reduction = "complex"
