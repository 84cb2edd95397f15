"""GenericLazyTensor: the symbolic tensor shared by the NumPy and torch front ends.

A LazyTensor holds a formula (a :class:`~polykeops.formula.nodes.Node` whose
leaves stand for the user's arrays) and the arrays themselves.  Arithmetic
builds bigger formulas; reductions (``sum``, ``logsumexp``, ``argKmin``...)
turn them into a :class:`~polykeops.formula.spec.ReductionSpec` and evaluate it
with a backend.  Subclasses set ``_tools``, the array-library glue (see
:mod:`polykeops.numpy.tools` and :mod:`polykeops.torch.tools`).
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

from ..errors import DeviceError, DTypeError, FormulaError, ShapeError
from ..formula import algebra as A
from ..formula import composite as C
from ..formula.derivative import diff as _diff
from ..formula.derivative import grad as _grad
from ..formula.nodes import CAT_I, CAT_J, CAT_P, CATEGORY_NAMES, Const, Node
from ..formula.optable import OPS, OpDef
from ..formula.printing import to_string
from . import leaves as L
from .reduce import ReductionMixin


def _broadcast_batch(a: tuple, b: tuple, left, right) -> tuple:
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            raise ShapeError(
                f"incompatible batch dimensions {a} and {b} between {left._summary()} and {right._summary()}"
            )
        out.append(max(x, y))
    return tuple(out)


#: default bound on N * D for :meth:`GenericLazyTensor.from_dense` (a row of the matrix is one
#: i-variable of dimension N * D, held per row by the engines; its gradient costs O(N * D) per pair)
FROM_DENSE_MAX_ROW = 8192


class GenericLazyTensor(ReductionMixin):
    """Symbolic wrapper for arrays; see :class:`polykeops.torch.LazyTensor`."""

    _tools = None  # set by subclasses
    _dim_label = "vector dimension"  # in error messages
    __array_priority__ = 1000  # NumPy defers binary operators to us
    __hash__ = object.__hash__
    #: pykeops' block-sparsity attribute: ``K.ranges = ranges_ij`` makes every reduction of K (and
    #: of the LazyTensors built from it) block-sparse; a ``ranges=`` keyword of a reduction wins
    ranges = None

    def __init__(self, x=None, axis=None):
        self.ranges = None
        self.leaves: dict[Node, L.LeafData] = {}
        self.ni = None
        self.nj = None
        self.batch: tuple = ()
        self.dtype_name = None
        self.device = None
        self.array_kind = None
        self.placeholders: dict[int, Node] = {}
        self.complex_placeholders: frozenset[int] = frozenset()  # indices of complex placeholders
        if x is None:
            self.formula = None
            return
        tools = self._tools
        if isinstance(x, tuple):
            if len(x) != 3 or not all(isinstance(t, int) for t in x):
                raise ShapeError(
                    f"a LazyTensor placeholder is a tuple (index, dim, category) of ints, got {x!r}"
                )
            var = L.placeholder(*x)
            self.formula = var
            self.placeholders[var.index] = var
            return
        if isinstance(x, bool):
            raise FormulaError("booleans are not valid LazyTensor values")
        if isinstance(x, int):
            self.formula = Const(x)
            return
        if isinstance(x, float):
            leaf = L.scalar_leaf(x)
            self.formula = leaf.node
            self.leaves[leaf.node] = leaf
            return
        if isinstance(x, Fraction):
            self.formula = Const(x)
            return
        if isinstance(x, list):  # pykeops: a list of numbers is a parameter (no dtype of its own)
            if axis not in (None, 2):
                raise ShapeError(f"a list of numbers is a parameter; axis={axis} is not allowed")
            if not x or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x):
                raise FormulaError(f"a LazyTensor list must be a non-empty list of numbers, got {x!r:.80}")
            leaf = L.list_leaf(x)
            self.formula = leaf.node
            self.leaves[leaf.node] = leaf
            return
        shard_leaf = getattr(x, "_polykeops_leaf", None)
        if shard_leaf is not None:  # a shard of a variable split across processes
            leaf = shard_leaf(axis)  # (polykeops.torch.distributed.sharded): sizes are local
            self.dtype_name = tools.dtype_name(leaf.array, "LazyTensor input")
            self.device = tools.device_name(leaf.array)
            self.array_kind = tools.array_kind
            self.formula = leaf.node
            self.leaves[leaf.node] = leaf
            self.batch = leaf.batch
            self.ni, self.nj = (leaf.n, None) if leaf.cat == CAT_I else (None, leaf.n)
            return
        if not tools.is_array(x):
            raise FormulaError(
                f"cannot make a LazyTensor from {type(x).__name__}; expected a "
                f"{tools.array_kind} array, an int, a float or an (index, dim, category) tuple"
            )
        shape = tools.shape(x)
        if 0 in shape:
            raise ShapeError(f"cannot make a LazyTensor from an empty array of shape {shape}")
        self.dtype_name = tools.dtype_name(x, "LazyTensor input")
        self.device = tools.device_name(x)
        self.array_kind = tools.array_kind
        cat, n, batch, dim = L.classify(shape, axis, "LazyTensor")
        leaf = L.make_leaf(x, cat, dim, n, batch)
        self.formula = leaf.node
        self.leaves[leaf.node] = leaf
        self.batch = batch
        if cat == CAT_I:
            self.ni = n
        elif cat == CAT_J:
            self.nj = n

    # ------------------------------------------------------------------
    # symbolic metadata
    # ------------------------------------------------------------------
    @property
    def nbatchdims(self) -> int:
        return len(self.batch)

    @property
    def axis(self):
        """Category of a single-variable LazyTensor (0: i, 1: j, 2: parameter)."""
        cats = {leaf.cat for leaf in self.leaves.values()} | {v.cat for v in self.placeholders.values()}
        return cats.pop() if len(cats) == 1 else None

    @property
    def shape(self) -> tuple:
        """``(*batch, M, N)`` or ``(*batch, M, N, D)`` for D = ``self.ndim`` > 1 (as in pykeops)."""
        ni = self.ni if self.ni is not None else 1
        nj = self.nj if self.nj is not None else 1
        d = self.ndim
        return tuple(self.batch) + (ni, nj) + ((d,) if d > 1 else ())

    @property
    def _shape(self) -> tuple:
        """``(*batch, M, N, D)``, D included even when it is 1 (pykeops' internal shape)."""
        ni = self.ni if self.ni is not None else 1
        nj = self.nj if self.nj is not None else 1
        return tuple(self.batch) + (ni, nj, self.ndim)

    @property
    def ndim(self) -> int:
        """The vector dimension of the formula (pykeops' meaning of ``ndim``)."""
        return self.formula.dim

    @property
    def dtype(self):
        return self._tools.dtype_object(self.dtype_name)

    def __len__(self):  # pragma: no cover - mirrors pykeops
        return self.shape[0]

    def _summary(self) -> str:
        return f"LazyTensor {to_string(self.formula)} of shape {self.shape}"

    def __repr__(self) -> str:
        from ..backends.dispatch import describe_choice

        lines = [
            f"{self._tools.array_kind.capitalize() if self._tools else ''} polykeops LazyTensor",
            f"    formula: {self.formula_string()}",
            f"    shape: {self.shape}",
            f"    dtype: {self.dtype_name or 'unset (from the arrays at reduction time)'}",
            f"    device: {self.device or 'cpu'}",
            f"    backend: {describe_choice(self)}",
        ]
        return "\n".join(lines)

    __str__ = __repr__

    def formula_string(self) -> str:
        """The formula in KeOps syntax, variables named by category and order of appearance."""
        names = {}
        counters = {CAT_I: 0, CAT_J: 0, CAT_P: 0}
        from ..formula.nodes import walk

        for n in walk(self.formula):
            if n.op == "Leaf":
                c = n.cat
                names[n] = f"{CATEGORY_NAMES[c]}_{counters[c]}({n.dim})" if n not in names else names[n]
                counters[c] += 1
        return to_string(self.formula, names)

    # ------------------------------------------------------------------
    # building formulas
    # ------------------------------------------------------------------
    def _new(self, formula: Node, *others: GenericLazyTensor) -> GenericLazyTensor:
        res = type(self)()
        res.formula = formula
        res.leaves = dict(self.leaves)
        res.placeholders = dict(self.placeholders)
        res.complex_placeholders = self.complex_placeholders
        res.ni, res.nj, res.batch = self.ni, self.nj, self.batch
        res.dtype_name, res.device, res.array_kind = self.dtype_name, self.device, self.array_kind
        res.ranges = self.ranges
        for o in others:
            res._merge(o)
        return res

    def _merge(self, other: GenericLazyTensor) -> None:
        if other.array_kind and self.array_kind and other.array_kind != self.array_kind:
            raise DTypeError(f"cannot combine {self._summary()} and {other._summary()}: array kinds differ")
        if other.dtype_name and self.dtype_name and other.dtype_name != self.dtype_name:
            merged = self._tools.autocast_dtype(self.device or other.device)
            if merged is None:
                raise DTypeError(
                    f"cannot combine {self._summary()} (dtype {self.dtype_name}) with "
                    f"{other._summary()} (dtype {other.dtype_name}); convert one of them first"
                )
            self.dtype_name = merged  # the array library's mixed-precision context (torch.autocast)
        if other.device and self.device and other.device != self.device:
            raise DeviceError(
                f"cannot combine {self._summary()} (device {self.device}) with "
                f"{other._summary()} (device {other.device}); move them to one device"
            )
        for attr, label in (("ni", "M (the i axis)"), ("nj", "N (the j axis)")):
            a, b = getattr(self, attr), getattr(other, attr)
            if a is not None and b is not None and a != b:
                raise ShapeError(
                    f"incompatible sizes along {label}: {a} for {self._summary()} "
                    f"and {b} for {other._summary()}"
                )
            if a is None:
                setattr(self, attr, b)
        self.batch = _broadcast_batch(self.batch, other.batch, self, other)
        self._merge_ranges(other)
        self.dtype_name = self.dtype_name or other.dtype_name
        self.device = self.device or other.device
        self.array_kind = self.array_kind or other.array_kind
        self.leaves.update(other.leaves)
        for k in self.placeholders.keys() & other.placeholders.keys():
            if (k in self.complex_placeholders) != (k in other.complex_placeholders):
                raise FormulaError(f"placeholder index {k} is used as a real and as a complex variable")
        for k, v in other.placeholders.items():
            if k in self.placeholders and self.placeholders[k] != v:
                raise FormulaError(f"placeholder index {k} is used as {self.placeholders[k]!r} and as {v!r}")
            self.placeholders[k] = v
        self.complex_placeholders = self.complex_placeholders | other.complex_placeholders

    def _merge_ranges(self, other: GenericLazyTensor) -> None:
        """The ``ranges`` attribute of a combination: the one of either operand (as pykeops' join);
        two different ones are an error."""
        mine, theirs = self.ranges, getattr(other, "ranges", None)
        if theirs is None or mine is theirs:
            return
        if mine is None:
            self.ranges = theirs
            return
        tools = self._tools
        same = len(mine) == len(theirs) and all(
            tuple(tools.shape(a)) == tuple(tools.shape(b)) and bool((a == b).all())
            for a, b in zip(mine, theirs)
        )
        if not same:
            raise ShapeError(
                f"cannot combine {self._summary()} and {other._summary()}: they carry different "
                "block-sparsity ranges (the .ranges attribute)"
            )

    def _lift(self, other) -> GenericLazyTensor:
        if isinstance(other, GenericLazyTensor):
            return other
        scalar = self._lift_scalar(other)
        if scalar is not None:
            return scalar
        tools = self._tools
        if isinstance(other, list):
            return self._real_type()(other)
        if tools.is_array(other):
            shape = tuple(tools.shape(other))
            if len(shape) == 2:
                raise FormulaError(
                    f"cannot combine {self._summary()} with a raw 2-D array of shape {shape}: "
                    "it is ambiguous, wrap it in a LazyTensor with axis=0 (i) or axis=1 (j) first"
                )
            # as pykeops: LazyTensor(other) -- a 0-d or 1-D array is a parameter, a 3-D+ one is
            # indexed by its shape (..., M, 1, D) / (..., 1, N, D) / (..., 1, 1, D)
            return self._real_type()(other)
        raise FormulaError(f"cannot combine {self._summary()} with {type(other).__name__}")

    def _lift_scalar(self, other):
        """A real LazyTensor for a Python int, float or Fraction; None for anything else."""
        if isinstance(other, bool):
            return None
        if isinstance(other, (int, float, Fraction)):
            return self._real_type()(other)
        if isinstance(other, numbers.Integral):
            return self._real_type()(int(other))
        if isinstance(other, numbers.Real) and not self._tools.is_array(other):
            return self._real_type()(float(other))  # NumPy float scalars (np.float32(0.5)...)
        return None

    def _real_type(self) -> type:
        """The real LazyTensor class of self (complex LazyTensors override it)."""
        return type(self)

    def _combine(self, other, build, reverse=False, operands=lambda lt: (lt.formula,)):
        """``build(*operands(a), *operands(b))`` for ``(a, b) = (self, other)`` (or reversed)."""
        other = self._lift(other)
        a, b = (other, self) if reverse else (self, other)
        try:
            formula = build(*operands(a), *operands(b))
        except FormulaError as exc:
            raise FormulaError(f"{exc} (while combining {a._summary()} and {b._summary()})") from None
        return self._new(formula, other)

    def _binary(self, other, build, reverse=False):
        return self._combine(other, build, reverse)

    def _unary(self, op: str, *params) -> GenericLazyTensor:
        return self._new(A.node(op, self.formula, params=tuple(params)))

    # arithmetic: every operator goes through _arith (complex support overrides it)
    _ARITHMETIC = {"add": A.add, "sub": A.sub, "mul": A.mul, "truediv": A.div}

    def _arith(self, op: str, other, reverse: bool):
        return self._binary(other, self._ARITHMETIC[op], reverse)

    def __add__(self, other):
        return self._arith("add", other, False)

    def __radd__(self, other):
        return self._arith("add", other, True)

    def __sub__(self, other):
        return self._arith("sub", other, False)

    def __rsub__(self, other):
        return self._arith("sub", other, True)

    def __mul__(self, other):
        return self._arith("mul", other, False)

    def __rmul__(self, other):
        return self._arith("mul", other, True)

    def __truediv__(self, other):
        return self._arith("truediv", other, False)

    def __rtruediv__(self, other):
        return self._arith("truediv", other, True)

    def __neg__(self):
        return self._new(A.neg(self.formula))

    def __abs__(self):
        return self.abs()

    def __pow__(self, other):
        if isinstance(other, int) and not isinstance(other, bool):
            return self._new(A.power(self.formula, other))
        if isinstance(other, float) and other == 0.5:
            return self.sqrt()
        if isinstance(other, float) and other == -0.5:
            return self.rsqrt()
        if isinstance(other, float) and other.is_integer():
            return self._new(A.power(self.formula, int(other)))
        return self._binary(other, lambda a, b: A.node("Powf", a, b))

    def power(self, other):
        """``self ** other`` (pykeops' Powf for a LazyTensor exponent)."""
        return self.__pow__(other)

    # comparisons (0/1 values)
    def __eq__(self, other):
        return self._binary(other, lambda a, b: A.node("Equal", a, b))

    def __ne__(self, other):
        return self._binary(other, lambda a, b: A.node("NotEqual", a, b))

    def __lt__(self, other):
        return self._binary(other, lambda a, b: A.node("LessThan", a, b))

    def __gt__(self, other):
        return self._binary(other, lambda a, b: A.node("GreaterThan", a, b))

    def __le__(self, other):
        return self._binary(other, lambda a, b: A.node("LessOrEqual", a, b))

    def __ge__(self, other):
        return self._binary(other, lambda a, b: A.node("GreaterOrEqual", a, b))

    # elementwise maths: one method per unary op of the op table (OpDef.method), added below the
    # class by _install_op_methods; the ones that are more than "apply the op" are written here
    def sinc(self):
        """sin(pi x) / (pi x), 1 at 0."""
        return self._new(C.sinc(self.formula))

    def atan2(self, other):
        """atan2(self, other): the angle of the point (other, self)."""
        return self._binary(other, lambda a, b: A.node("Atan2", a, b))

    def round(self, decimals: int = 0):
        return self._unary("Round", int(decimals))

    def clamp(self, a, b):
        """min(max(self, a), b); integer bounds give ClampInt."""
        if all(isinstance(t, int) and not isinstance(t, bool) for t in (a, b)):
            return self._unary("ClampInt", a, b)
        a, b = self._lift(a), self._lift(b)
        return self._new(A.node("Clamp", self.formula, a.formula, b.formula), a, b)

    def clampint(self, a: int, b: int):
        return self._unary("ClampInt", int(a), int(b))

    def ifelse(self, a, b):
        """``a`` where self >= 0, ``b`` elsewhere."""
        a, b = self._lift(a), self._lift(b)
        return self._new(A.node("IfElse", self.formula, a.formula, b.formula), a, b)

    def mod(self, modulus, offset=0):
        """self - modulus * floor((self - offset) / modulus)."""
        m, o = self._lift(modulus), self._lift(offset)
        return self._new(A.node("Mod", self.formula, m.formula, o.formula), m, o)

    # vector operations
    def sqnorm2(self):
        return self._new(C.sqnorm2(self.formula))

    def norm2(self):
        return self._new(C.norm2(self.formula))

    def norm(self, dim=-1):
        if dim not in (-1, self.nbatchdims + 2):
            raise ShapeError(f"norm() is taken over the vector dimension (dim=-1), got dim={dim}")
        return self.norm2()

    def normalize(self):
        return self._new(C.normalize(self.formula))

    def sqdist(self, other):
        return self._binary(other, C.sqdist)

    def weightedsqnorm(self, other):
        """Squared norm of ``self`` weighted by ``other`` (as pykeops: ``x.weightedsqnorm(s)``).

        ``s`` of dimension 1 (isotropic), D (diagonal) or D*D (full symmetric matrix).
        """
        return self._binary(other, C.weightedsqnorm, reverse=True)

    def weightedsqdist(self, g, s):
        """|self - g|^2 weighted by ``s``."""
        g, s = self._lift(g), self._lift(s)
        return self._new(C.weightedsqdist(s.formula, self.formula, g.formula), g, s)

    def __or__(self, other):
        return self._binary(other, A.scalprod)

    def __ror__(self, other):
        return self._binary(other, A.scalprod, reverse=True)

    def elem(self, i: int):
        return self._unary("Elem", int(i))

    def extract(self, start: int, length: int):
        return self._unary("Extract", int(start), int(length))

    def __getitem__(self, key):
        if isinstance(key, tuple):
            if len(key) == 0:
                raise FormulaError("empty index")
            lead, key = key[:-1], key[-1]
            if any(k is not Ellipsis and k != slice(None) for k in lead):
                raise FormulaError("LazyTensors can only be indexed along the vector dimension")
        d = self.ndim
        if isinstance(key, int) and not isinstance(key, bool):
            if not -d <= key < d:
                raise FormulaError(f"index {key} out of range for {self._dim_label} {d}")
            return self.elem(key % d)
        if isinstance(key, slice):
            start, stop, step = key.indices(d)
            if step != 1 or stop <= start:
                raise FormulaError(f"unsupported slice {key} for {self._dim_label} {d}")
            return self.extract(start, stop - start)
        raise FormulaError(f"unsupported index {key!r}")

    def one_hot(self, dim: int):
        return self._unary("OneHot", int(dim))

    def take(self, index, d: int = 1):
        """Row ``round(index)`` of ``self`` read as an ``(ndim / d) x d`` matrix (``d`` values).

        A gather: ``a_i.take(k_j, d)`` costs O(d) per pair whatever the size of the table
        ``a_i``.  ``index`` is a scalar LazyTensor (or number); rows outside
        ``[0, ndim / d)`` give zeros.  Differentiable with respect to ``self`` (the index is
        piecewise constant: its gradient is zero).
        """
        d = int(d)
        return self._binary(index, lambda a, k: C.take(a, k, d))

    def concat(self, other):
        return self._binary(other, C.concat)

    def matvecmult(self, other):
        return self._binary(other, C.matvecmult)

    def vecmatmult(self, other):
        return self._binary(other, C.vecmatmult)

    def tensorprod(self, other):
        return self._binary(other, C.tensorprod)

    def grad(self, other: GenericLazyTensor, gradin):
        """Symbolic gradient of self with respect to the variable ``other``, applied to ``gradin``."""
        var = other.formula
        if var.op not in ("Leaf", "Var"):
            raise FormulaError(f"grad: {other._summary()} is not a variable")
        e = self._lift(gradin)
        return self._new(_grad(self.formula, var, e.formula), other, e)

    def diff(self, other: GenericLazyTensor, direction):
        """Directional derivative of self with respect to the variable ``other``."""
        var = other.formula
        if var.op not in ("Leaf", "Var"):
            raise FormulaError(f"diff: {other._summary()} is not a variable")
        u = self._lift(direction)
        return self._new(_diff(self.formula, var, u.formula), other, u)

    # ------------------------------------------------------------------
    # pykeops' remaining symbolic operations: formula-level constructions of
    # polykeops.formula.composite (layouts and conventions documented there),
    # so every backend, the derivatives and the formula parser support them
    # ------------------------------------------------------------------
    def _as_variable(self, v, what: str) -> GenericLazyTensor:
        if not isinstance(v, GenericLazyTensor) or v.formula.op not in ("Leaf", "Var"):
            shown = v._summary() if isinstance(v, GenericLazyTensor) else repr(v)
            raise FormulaError(f"{what}: {shown} is not a variable (a LazyTensor made from one array)")
        return v

    def keops_tensordot(self, other, dimfa, dimfb, contfa, contfb, *permute):
        """Tensor dot product over the vector dimension (KeOps' TensorDot).

        ``self`` and ``other`` hold tensors of shapes ``dimfa`` and ``dimfb`` flattened
        row-major; the axes ``contfa`` of self are contracted with the axes ``contfb``
        of other.  The kept axes of self then of other form the result, reordered by
        the optional permutation (given as one sequence, as in pykeops, or as ints):
        kept axis ``k`` goes to position ``permute[k]``.
        """
        if not permute:
            perm = None
        elif len(permute) == 1 and not isinstance(permute[0], int):
            perm = permute[0]
        else:
            perm = permute
        return self._binary(other, lambda a, b: C.tensordot(a, b, dimfa, dimfb, contfa, contfb, perm))

    def keops_kron(self, other, dimfself, dimfother):
        """Flattened Kronecker product: ``np.kron(self.reshape(dimfself), other.reshape(dimfother))``."""
        return self._binary(other, lambda a, b: C.kron(a, b, dimfself, dimfother))

    def bspline(self, x, k: int = 0):
        """B-spline basis functions of order ``k`` for the knots ``self``, at the scalar ``x``
        (dimension ``self.ndim - k - 1``; order 0 is the indicator of ``t_j <= x < t_{j+1}``)."""
        return self._binary(x, lambda t, s: C.bspline(t, s, k))

    def softdtw_sqdist(self, other, gamma):
        """Soft-DTW between the sequences ``self`` and ``other`` (their components), with the
        cost ``(x_i - y_j)**2`` and the smoothing ``gamma`` (a scalar LazyTensor or a number)."""
        other, gamma = self._lift(other), self._lift(gamma)
        try:
            formula = C.softdtw_sqdist(self.formula, other.formula, gamma.formula)
        except FormulaError as exc:
            raise FormulaError(f"{exc} (while combining {self._summary()} and {other._summary()})") from None
        return self._new(formula, other, gamma)

    def difference_matrix(self, other):
        """All differences ``self_k - other_l`` at index ``k * other.ndim + l``."""
        return self._binary(other, C.difference_matrix)

    def grad_matrix(self, v):
        """The gradients of the components of self with respect to the variable ``v``, one
        after the other (the Jacobian, row-major): dimension ``self.ndim * v.ndim``."""
        v = self._as_variable(v, "grad_matrix")
        return self._new(C.grad_matrix(self.formula, v.formula), v)

    def divergence(self, v):
        """``sum_k d self_k / d v_k`` (self and the variable ``v`` of the same dimension)."""
        v = self._as_variable(v, "divergence")
        return self._new(C.divergence(self.formula, v.formula), v)

    def laplacian(self, v):
        """``sum_k d^2 self / d v_k^2`` of a scalar formula."""
        v = self._as_variable(v, "laplacian")
        return self._new(C.laplacian(self.formula, v.formula), v)

    def trace_operator(self, v):
        """Trace of the linear map ``v -> self`` (self linear in the variable ``v``, of dimension
        ``v.ndim`` or 1); ``v`` does not appear in the result."""
        v = self._as_variable(v, "trace_operator")
        return self._new(C.trace_operator(self.formula, v.formula))

    def factorize(self, other):
        """Self, unchanged (pykeops' Factorize).  Formulas are DAGs whose equal sub-formulas
        are one node, evaluated once by every backend: they are always factorized."""
        return self._new(C.factorize(self.formula, self._lift(other).formula))

    def auto_factorize(self):
        """Self, unchanged (see :meth:`factorize`)."""
        return self._new(C.auto_factorize(self.formula))

    @staticmethod
    def concatenate(tuple_of_lt, axis=-1):
        """Concatenation of LazyTensors along the vector dimension (the only axis allowed)."""
        if not isinstance(tuple_of_lt, (tuple, list)):
            raise FormulaError("LazyTensor.concatenate is implemented on tuples of LazyTensors")
        if not tuple_of_lt:
            raise FormulaError("LazyTensor.concatenate received an empty tuple")
        first = tuple_of_lt[0]
        if not isinstance(first, GenericLazyTensor):
            raise FormulaError(f"LazyTensor.concatenate needs LazyTensors, got {type(first).__name__}")
        if axis not in (-1, first.nbatchdims + 2):
            raise ShapeError(
                f"LazyTensors can only be concatenated along their last (vector) axis: "
                f"axis=-1 or {first.nbatchdims + 2}, got {axis}"
            )
        out = first
        for other in tuple_of_lt[1:]:
            out = out.concat(other)
        return out

    @staticmethod
    def cat(tuple_of_lt, dim):
        """Alias of :meth:`concatenate` (torch's name)."""
        return GenericLazyTensor.concatenate(tuple_of_lt, dim)

    def lt_constructor(self, x=None, axis=None, **kwargs):
        """A new LazyTensor of the same class as self (pykeops' class API)."""
        return type(self)(x=x, axis=axis, **kwargs)

    def get_tools(self):
        """Set (and return) ``self.tools``, with ``self.Genred`` and ``self.KernelSolve`` of
        the array library of this class (pykeops' class API)."""
        self.tools = self._tools  # Genred and KernelSolve: class attributes set by front_end()
        return self.tools

    def dim(self) -> int:
        """Number of dimensions of the symbolic shape, ``(*batch, M, N, D)`` (as in pykeops,
        D counts even when it is 1)."""
        return self.nbatchdims + 3

    # ------------------------------------------------------------------
    # dense export and transposition (reductions live in reduce.py)
    # ------------------------------------------------------------------
    def dense(self, max_elements: int = 100_000_000):
        """The full ``self.shape`` array (for small problems and debugging).

        Evaluated with the array library's own operations, so torch tensors keep
        their autograd graph.  Raises ShapeError beyond ``max_elements`` entries.
        """
        from ..formula.evaluate import evaluate

        if self.placeholders:
            raise FormulaError("dense() needs data: this LazyTensor has placeholder variables")
        size = math.prod(self.shape)
        if size > max_elements:
            raise ShapeError(
                f"dense() would allocate {size:,} entries for shape {self.shape} "
                f"(max_elements={max_elements:,}); reduce it instead, or raise max_elements"
            )
        tools = self._tools
        dtype = self.dtype_name or "float32"
        values = {}
        like = None
        for node, leaf in self.leaves.items():
            if leaf.is_scalar:
                continue
            if leaf.cat == CAT_I:
                shape = tuple(leaf.batch) + (leaf.n, 1, leaf.dim)
            elif leaf.cat == CAT_J:
                shape = tuple(leaf.batch) + (1, leaf.n, leaf.dim)
            else:
                shape = tuple(leaf.batch) + (1, 1, leaf.dim)
            values[node] = tools.reshape(leaf.array, shape)
            like = leaf.array
        for node, leaf in self.leaves.items():
            if leaf.is_scalar:
                values[node] = tools.scalar_array(leaf.array, dtype, like=like, shape=(1, 1, leaf.dim))
        xp = tools.namespace(dtype, like)
        full = tuple(self.batch) + (self.ni or 1, self.nj or 1, self.formula.dim)
        out = evaluate(self.formula, xp, values)
        out = xp.broadcast_to(out, full) + 0
        return tools.reshape(out, self.shape)

    @classmethod
    def from_dense(cls, array, max_row_size: int = FROM_DENSE_MAX_ROW):
        """A dense matrix ``array`` as a LazyTensor indexed by (i, j), for small problems and debugging.

        ``array`` has shape ``(M, N)`` (scalar entries), or ``(M, N, D)`` (vector entries of
        dimension D), with optional leading batch dimensions ``(*batch, M, N, D)`` (a
        batch of scalar matrices needs the trailing ``D = 1`` axis).  The result has
        the shape of ``array``: combine it with symbolic LazyTensors and reduce it like any
        other (``sum``, ``logsumexp``, ``argmin``, ``@``, ``solve``...), on every
        backend; with torch, reductions are differentiable with respect to ``array``.

        Row ``i`` of ``array`` becomes an i-variable of dimension ``N * D`` and entry
        ``(i, j)`` is gathered from it with the ``Take`` op (``A_i.take(j, D)``): reading an
        entry costs ``O(D)`` and infinite or NaN entries stay in their place.  The gradient
        with respect to ``array`` is an ``N * D`` vector per row, so it costs ``O(N * D)`` per
        pair.  ``N * D`` larger than ``max_row_size`` raises a ShapeError (raise
        ``max_row_size`` deliberately if you need to).  A complex ``array`` gives a complex
        LazyTensor (see ``ComplexLazyTensor``).
        """
        tools = cls._tools
        if not tools.is_array(array):
            raise FormulaError(f"from_dense needs a {tools.array_kind} array, got {type(array).__name__}")
        shape = tuple(tools.shape(array))
        if len(shape) < 2:
            raise ShapeError(
                f"from_dense needs a matrix of shape (M, N), (M, N, D) or (*batch, M, N, D); "
                f"got an array of shape {shape}"
            )
        if 0 in shape:
            raise ShapeError(f"from_dense: the matrix of shape {shape} is empty")
        dtype = tools.dtype_name(array, f"from_dense matrix of shape {shape}")
        batch, (m, n, d) = (shape[:-3], shape[-3:]) if len(shape) >= 3 else ((), shape + (1,))
        if n * d > max_row_size:
            raise ShapeError(
                f"from_dense: the matrix of shape {shape} ({dtype}) has rows of N * D = {n * d} "
                f"values, more than max_row_size={max_row_size:,}: each row is one variable of "
                "that size and the gradient costs O(N * D) per pair; use dense array arithmetic, "
                "or pass a larger max_row_size"
            )
        if dtype == "float16" and n > 2048:
            raise ShapeError(
                f"from_dense: the float16 matrix of shape {shape} has N = {n} columns; float16 "
                "represents column indices exactly up to 2048 only: convert it to float32"
            )
        xp = tools.namespace(dtype, like=array)
        index = cls(tools.reshape(xp.arange(n), (1, n, 1)), axis=1)
        rows = cls(tools.reshape(array, batch + (m, 1, n * d)), axis=0)
        return rows.take(index, d)

    def t(self):
        """The transposed LazyTensor (i and j exchanged)."""
        mapping = {}
        res = self._new(self.formula)
        res.leaves = {}
        for node, leaf in self.leaves.items():
            new = L.swapped(leaf, self._tools)
            mapping[node] = new.node
            res.leaves[new.node] = new
        from ..formula.nodes import substitute
        from ..formula.spec import swap_category

        for v in self.placeholders.values():
            mapping[v] = swap_category(v)
        res.placeholders = {k: swap_category(v) for k, v in self.placeholders.items()}
        res.formula = substitute(self.formula, mapping)
        res.ni, res.nj = self.nj, self.ni
        if self.ranges is not None:  # i and j exchanged: (ranges_j, slices_j, redranges_i, ranges_i, ...)
            r = tuple(self.ranges)
            res.ranges = r[3:6] + r[0:3] if len(r) == 6 else r
        return res

    @property
    def T(self):
        return self.t()


def _op_method(opdef: OpDef):
    op = opdef.name

    def method(self):
        return self._unary(op)

    method.__name__ = opdef.method
    method.__qualname__ = f"GenericLazyTensor.{opdef.method}"
    method.__doc__ = f"{opdef.doc or op.lower() + '(x)'}, elementwise (the {op} operation)."
    return method


def _install_op_methods(cls) -> None:
    """A method per op of the table that names one (``x.tanh()`` applies ``Tanh``); methods written
    by hand in the class win."""
    for opdef in OPS.values():
        if opdef.method and getattr(cls, opdef.method, None) is None:
            setattr(cls, opdef.method, _op_method(opdef))


_install_op_methods(GenericLazyTensor)
