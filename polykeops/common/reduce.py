"""Reductions of LazyTensors: from a formula to a ReductionSpec.

:class:`ReductionMixin` gives :class:`~polykeops.common.lazy_tensor.GenericLazyTensor`
its reduction methods (pykeops' names and signatures); each builds a spec and
hands it to :func:`polykeops.common.call.run_spec`, as ``Genred`` does.
"""

from __future__ import annotations

from ..backends.request import BackendRequest
from ..errors import DTypeError, FormulaError, ShapeError
from ..formula import algebra as A
from ..formula.nodes import Node, Var, substitute, walk
from ..formula.spec import PRECISIONS, SUM_SCHEMES, ReductionSpec
from .call import describe_variable, run_spec

_KNOWN_OPTIONS = {"backend", "dtype_acc", "sum_scheme", "use_double_acc", "device_id", "ranges",
                  "precision", "enable_chunks", "use_fast_math", "optional_flags", "out"}


def _options(kwargs: dict) -> dict:
    unknown = set(kwargs) - _KNOWN_OPTIONS
    if unknown:
        raise FormulaError(
            f"unknown reduction option(s) {sorted(unknown)}; known: {sorted(_KNOWN_OPTIONS)}"
        )
    opts = {"backend": kwargs.get("backend"), "device_id": kwargs.get("device_id"),
            "dtype_acc": kwargs.get("dtype_acc") or "auto"}
    if kwargs.get("use_double_acc"):
        opts["dtype_acc"] = "float64"
    scheme = kwargs.get("sum_scheme") or "block_sum"
    if scheme == "auto":
        scheme = "block_sum"
    if scheme not in SUM_SCHEMES:
        raise FormulaError(f"sum_scheme must be one of {SUM_SCHEMES}, got {scheme!r}")
    opts["sum_scheme"] = scheme
    if opts["dtype_acc"] not in ("auto", "float16", "float32", "float64"):
        raise FormulaError(f"dtype_acc must be 'auto', 'float32' or 'float64', got {opts['dtype_acc']!r}")
    precision = kwargs.get("precision") or "ieee"
    if precision not in PRECISIONS:
        raise FormulaError(
            f"precision must be one of {PRECISIONS} ('tf32': float32 inner products on GPU tensor "
            f"cores with TF32 inputs, opt-in), got {precision!r}"
        )
    opts["precision"] = precision
    opts["ranges"] = kwargs.get("ranges")
    return opts


class ReductionMixin:
    """Reduction methods of LazyTensors (pykeops names and signatures)."""

    # -- axis handling ---------------------------------------------------
    def _reduction_axis(self, dim, axis, what: str):
        """0 (over i), 1 (over j) or None (over the vector dimension)."""
        if dim is None:
            dim = axis
        if dim is None:
            raise FormulaError(f"{what}: pass dim=0 or dim=1 (the axis to reduce over)")
        nb = self.nbatchdims
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise FormulaError(f"{what}: dim must be an int, got {dim!r}")
        full = nb + 3
        given = dim
        if dim == -1:  # pykeops: -1 is the vector dimension; no other negative axis is accepted
            dim += full
        elif dim < 0:
            raise FormulaError(
                f"{what}: dim={given} is not valid: as in pykeops, reductions take dim={nb} (over i) "
                f"or dim={nb + 1} (over j), counted from the left ({nb} batch dimension(s) first), "
                f"and -1 means the vector dimension; negative dims other than -1 are refused because "
                f"the shape {self.shape} does not always show the vector axis"
            )
        if dim == nb:
            return 0
        if dim == nb + 1:
            return 1
        if dim == nb + 2:
            return None
        raise FormulaError(
            f"{what}: dim={given} is not valid for a LazyTensor with {nb} batch dimension(s); "
            f"use {nb} (reduce over i), {nb + 1} (over j) or -1 (vector dimension)"
        )

    def _reduce(self, reduction: str, dim=None, axis=None, *, k=None, weight=None, **kwargs):
        red_axis = self._reduction_axis(dim, axis, reduction)
        if red_axis is None:
            raise FormulaError(f"{reduction} is a reduction over i or j; dim=-1 is not allowed here")
        return self._reduce_axis(reduction, red_axis, k=k, weight=weight, **kwargs)

    def _reduce_axis(self, reduction: str, red_axis: int, *, k=None, weight=None, call=True, **kwargs):
        opts = _options(kwargs)
        lt = self
        if weight is not None:
            weight = self._lift(weight)
            lt = self._new(self.formula, weight)
        if opts["ranges"] is None:  # pykeops: K.ranges = ... applies unless the call names ranges
            opts["ranges"] = lt.ranges
        formulas = [self.formula] + ([weight.formula] if weight is not None else [])
        spec, leaves = _number(lt, formulas, reduction, red_axis, k, opts)
        shard = next((leaf.shard for leaf in leaves if leaf.shard is not None), None)
        if lt.placeholders or not call:  # a callable: takes the placeholders' arrays (maybe none)
            if shard is not None:
                raise FormulaError(f"{reduction}: placeholders cannot be mixed with sharded variables")
            return _PlaceholderReduction(type(self), spec, leaves, opts, lt)
        if shard is not None:  # some variable is split across processes: they reduce together
            return shard.reduce(self._tools, spec, leaves, opts, out=kwargs.get("out"),
                                shape_hint=(lt.ni, lt.nj, lt.batch))
        arrays = [leaf.array for leaf in leaves]
        return run_spec(self._tools, spec, arrays, opts["backend"], leaves=leaves,
                        out=kwargs.get("out"), shape_hint=(lt.ni, lt.nj, lt.batch),
                        ranges=opts["ranges"], device_id=opts["device_id"])

    # -- public reductions ----------------------------------------------
    def sum(self, dim=None, axis=None, **kwargs):
        """Sum over i (dim=0), j (dim=1) or the vector dimension (dim=-1, symbolic)."""
        if dim is None and axis is None:
            dim = -1
        if self._reduction_axis(dim, axis, "sum") is None:
            return self._new(A.vsum(self.formula))
        return self._reduce("Sum", dim, axis, **kwargs)

    def sum_reduction(self, dim=None, axis=None, **kwargs):
        return self._reduce("Sum", dim, axis, **kwargs)

    def logsumexp(self, dim=None, axis=None, weight=None, **kwargs):
        """log sum exp of a scalar formula; with ``weight`` (pykeops also spells it ``other``),
        log sum exp(F) * weight."""
        weight = _weight_alias(weight, kwargs, "logsumexp")
        name = "LogSumExpWeight" if weight is not None else "LogSumExp"
        return self._reduce(name, dim, axis, weight=weight, **kwargs)

    logsumexp_reduction = logsumexp

    def lse(self, dim=None, axis=None, weight=None, **kwargs):
        return self.logsumexp(dim, axis, weight, **kwargs)

    def max_sumshiftexp(self, dim=None, axis=None, weight=None, **kwargs):
        """The raw (max, sum of shifted exponentials) pair of a scalar formula."""
        weight = _weight_alias(weight, kwargs, "max_sumshiftexp")
        name = "Max_SumShiftExpWeight" if weight is not None else "Max_SumShiftExp"
        return self._reduce(name, dim, axis, weight=weight, **kwargs)

    def sumsoftmaxweight(self, weight, dim=None, axis=None, **kwargs):
        """sum_j softmax_j(F) weight_j."""
        return self._reduce("SumSoftMaxWeight", dim, axis, weight=weight, **kwargs)

    softmax_weighted_sum = sumsoftmaxweight

    def _select(self, reduction, vector_op, dim, axis, **kwargs):
        if dim is None and axis is None and vector_op is not None:
            dim = -1
        red_axis = self._reduction_axis(dim, axis, reduction)
        if red_axis is None:
            if vector_op is None:
                raise FormulaError(f"{reduction} has no vector (dim=-1) form")
            return self._unary(vector_op)
        return self._reduce_axis(reduction, red_axis, **kwargs)

    def min(self, dim=None, axis=None, **kwargs):
        return self._select("Min", "Min", dim, axis, **kwargs)

    def max(self, dim=None, axis=None, **kwargs):
        return self._select("Max", "Max", dim, axis, **kwargs)

    def argmin(self, dim=None, axis=None, **kwargs):
        return self._select("ArgMin", "ArgMin", dim, axis, **kwargs)

    def argmax(self, dim=None, axis=None, **kwargs):
        return self._select("ArgMax", "ArgMax", dim, axis, **kwargs)

    def min_argmin(self, dim=None, axis=None, **kwargs):
        return self._select("Min_ArgMin", None, dim, axis, **kwargs)

    def max_argmax(self, dim=None, axis=None, **kwargs):
        return self._select("Max_ArgMax", None, dim, axis, **kwargs)

    min_reduction = min
    max_reduction = max
    argmin_reduction = argmin
    argmax_reduction = argmax
    min_argmin_reduction = min_argmin
    max_argmax_reduction = max_argmax

    def Kmin(self, K, dim=None, axis=None, **kwargs):
        """The K smallest values along i or j, ascending."""
        return self._reduce("KMin", dim, axis, k=K, **kwargs)

    def argKmin(self, K, dim=None, axis=None, **kwargs):
        """The indices (int64) of the K smallest values along i or j."""
        return self._reduce("ArgKMin", dim, axis, k=K, **kwargs)

    def Kmin_argKmin(self, K, dim=None, axis=None, **kwargs):
        return self._reduce("KMin_ArgKMin", dim, axis, k=K, **kwargs)

    Kmin_reduction = Kmin
    argKmin_reduction = argKmin
    Kmin_argKmin_reduction = Kmin_argKmin

    # -- linear algebra ----------------------------------------------------
    def __matmul__(self, v, **kwargs):
        """``K @ v``: sum_j K_ij v_j for an array v of shape (N,), (N, E) or (*batch, N, E).

        ``K.__matmul__(v, **kwargs)`` passes pykeops' reduction keywords (``backend``,
        ``sum_scheme``, ``dtype_acc``, ``ranges``, ``out``...) to the Sum reduction."""
        tools = self._tools
        if not tools.is_array(v):
            raise FormulaError(f"K @ v needs an array v, got {type(v).__name__}")
        shape = tools.shape(v)
        if self.dtype_name is not None and not tools.is_complex(v):
            vtype = tools.dtype_name(v, f"K @ v: v of shape {tuple(shape)}")
            if vtype != self.dtype_name:
                raise DTypeError(
                    f"K @ v: v of shape {tuple(shape)} has dtype {vtype} but K ({self._summary()}) "
                    f"has dtype {self.dtype_name}; convert v first"
                )
        squeeze = len(shape) == 1
        if squeeze:
            v = tools.reshape(v, (shape[0], 1))
        vj = type(self)(tools.insert_j_axis(v))
        out = kwargs.pop("out", None)
        res = (self * vj).sum(dim=self.nbatchdims + 1, **kwargs)
        res = tools.reshape(res, tools.shape(res)[:-1]) if squeeze else res
        if out is None:
            return res
        from .call import check_out

        check_out(tools, out, res, _MATMUL_SPEC)
        tools.copy_into(out, res)
        return out

    def solve(self, other, var=None, call=True, *, alpha=0, eps=None, max_iter=None, backend=None,
              **kwargs):
        """Solve ``alpha * a + K a = other`` by conjugate gradient (K symmetric positive).

        ``other`` is an array of shape (N,), (N, E) or (*batch, N, E), or an
        i-variable LazyTensor; returns ``a`` with the shape of ``other``.
        Differentiable with torch (the backward pass solves a second system).
        """
        if var is not None:
            raise FormulaError("solve(var=...) is not supported: write the system as K.solve(b, alpha=...)")
        from .solve import solve

        opts = _options(dict(kwargs, backend=backend))
        # parsed once for every reduction of the conjugate gradient
        request = BackendRequest.parse(opts.pop("backend"), opts.pop("device_id"))
        if isinstance(other, ReductionMixin):  # an i-variable LazyTensor: its array
            leaves = list(other.leaves.values())
            if other.formula.op != "Leaf" or len(leaves) != 1 or leaves[0].cat != 0:
                raise FormulaError("solve: the right-hand side must be an i-variable LazyTensor or an array")
            leaf = leaves[0]
            other = self._tools.reshape(leaf.array, tuple(leaf.batch) + (leaf.n, leaf.dim))
        if not call:  # pykeops: a callable that solves the system when called
            return _PendingSolve(self, other, dict(alpha=alpha, eps=eps, max_iter=max_iter, backend=request,
                                                   **opts))
        return solve(self, other, alpha=alpha, eps=eps, max_iter=max_iter, backend=request, **opts)

    def matvec(self, v):
        """``K @ v`` (for scipy's LinearOperator)."""
        return self @ v

    def rmatvec(self, v):
        """``K.T @ v``."""
        return self.t() @ v


class _MatmulSpec:
    reduction = "K @ v (Sum)"


_MATMUL_SPEC = _MatmulSpec()


def _weight_alias(weight, kwargs: dict, what: str):
    """pykeops passes the weight of a logsumexp as ``other=`` (its reduction's argument name)."""
    other = kwargs.pop("other", None)
    if other is not None and weight is not None:
        raise FormulaError(f"{what}: pass the weight once, as weight= or other=")
    return weight if weight is not None else other


class _PendingSolve:
    """``K.solve(b, call=False)``: call it (without arguments) to solve the system."""

    def __init__(self, lazy, other, options):
        self.lazy, self.other, self.options = lazy, other, options

    def __call__(self, *args, **kwargs):
        from .solve import solve

        if args:
            raise FormulaError("this solve takes no arrays: its right-hand side was given to solve()")
        return solve(self.lazy, self.other, **dict(self.options, **kwargs))

    def __repr__(self):
        return f"<polykeops pending solve of {self.lazy._summary()}>"


def _number(lt, formulas: list[Node], reduction, red_axis, k, opts):
    """The spec of a reduction, and the data leaves in argument order."""
    leaves_in_order = []
    seen = set()
    for f in formulas:
        for n in walk(f):
            if n.op == "Leaf" and n not in seen:
                seen.add(n)
                leaves_in_order.append(lt.leaves[n])
    base = max(lt.placeholders) + 1 if lt.placeholders else 0
    mapping = {}
    for pos, leaf in enumerate(leaves_in_order):
        mapping[leaf.node] = Var(base + pos, leaf.dim, leaf.cat)
    numbered = tuple(substitute(f, mapping) for f in formulas)
    placeholder_vars = []
    for idx in range(base):
        if idx not in lt.placeholders:
            raise FormulaError(
                f"placeholder variables must use indices 0..{base - 1} without gaps; index {idx} is missing"
            )
        placeholder_vars.append(lt.placeholders[idx])
    variables = tuple(placeholder_vars) + tuple(mapping[leaf.node] for leaf in leaves_in_order)
    dtype = lt.dtype_name or "float32"
    spec = ReductionSpec(
        reduction=reduction,
        formulas=numbered,
        variables=variables,
        axis=red_axis,
        k=k,
        dtype=dtype,
        dtype_acc=opts["dtype_acc"],
        sum_scheme=opts["sum_scheme"],
        precision=opts.get("precision", "ieee"),
    )
    return spec, leaves_in_order


class _PlaceholderReduction:
    """A reduction over placeholder variables: call it with the arrays, in index order."""

    def __init__(self, cls, spec, leaves, opts, lt):
        self.cls, self.spec, self.leaves, self.opts = cls, spec, leaves, opts
        self.n_placeholders = len(spec.variables) - len(leaves)
        self.complex_args = sorted(lt.complex_placeholders)  # complex arrays, passed as real blocks
        self.post = None  # applied to the result (complex reductions: real blocks -> complex)

    def __call__(self, *arrays, backend=None, ranges=None, **kwargs):
        tools = self.cls._tools
        if len(arrays) != self.n_placeholders:
            raise FormulaError(
                f"this reduction takes {self.n_placeholders} array(s) (placeholders 0.."
                f"{self.n_placeholders - 1}), got {len(arrays)}"
            )
        arrays = list(arrays)
        for k in self.complex_args:
            a, v = arrays[k], self.spec.variables[k]
            if not tools.is_complex(a):
                if tools.is_array(a):
                    shown = f"an array of shape {tuple(tools.shape(a))} and dtype {a.dtype}"
                else:
                    shown = type(a).__name__
                name = describe_variable(v, complex_dim=True)
                raise DTypeError(
                    f"argument {k} is a complex placeholder ({name}): pass a "
                    f"complex64 or complex128 {tools.array_kind} array, got {shown}"
                )
            shape = tuple(tools.shape(a))
            if not shape or shape[-1] != v.dim // 2:
                name = describe_variable(v, complex_dim=True)
                raise ShapeError(
                    f"argument {k} (the complex placeholder {name}) has shape "
                    f"{shape}: its last axis must be the complex dimension {v.dim // 2}"
                )
            arrays[k] = tools.to_real_blocks(a)
        dtypes = {tools.dtype_name(a, f"argument {i}") for i, a in enumerate(arrays)}
        if len(dtypes) > 1:
            raise DTypeError(f"arguments have mixed dtypes {sorted(dtypes)}")
        spec = self.spec.with_(dtype=dtypes.pop()) if dtypes else self.spec
        all_arrays = list(arrays) + [leaf.array for leaf in self.leaves]
        res = run_spec(tools, spec, all_arrays, backend or self.opts["backend"], leaves=self.leaves,
                       ranges=ranges if ranges is not None else self.opts["ranges"],
                       device_id=kwargs.get("device_id", self.opts["device_id"]))
        return res if self.post is None else self.post(res)

    def __repr__(self):
        return f"<polykeops reduction {self.spec}>"
