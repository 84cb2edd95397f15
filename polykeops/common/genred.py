"""Genred: reductions written as KeOps formula strings (pykeops' ``Genred``).

``Genred(formula, aliases, reduction_op="Sum", axis=0, ...)`` parses the formula
once and returns a callable taking the arrays named by the aliases (in alias
order): ``(M, D)`` for ``Vi`` variables, ``(N, D)`` for ``Vj``, ``(D,)`` for
``Pm``, with optional leading batch dimensions.  ``axis=0`` reduces over i
(output indexed by j), ``axis=1`` over j (output indexed by i), as in pykeops.
"""

from __future__ import annotations

from ..backends.request import BackendRequest
from ..errors import FormulaError, ShapeError
from ..formula.parser import parse_alias, parse_formula, parse_reduction_formula
from ..formula.spec import ReductionSpec
from .call import run_spec
from .reduce import _options

_K_REDUCTIONS = ("KMin", "ArgKMin", "KMin_ArgKMin")


class GenericGenred:
    """A compiled-once reduction of a formula string; call it with arrays."""

    _tools = None  # set by subclasses

    def __init__(self, formula: str, aliases, reduction_op: str = "Sum", axis: int = 0, dtype=None,
                 opt_arg=None, formula2=None, cuda_type=None, dtype_acc="auto",
                 use_double_acc=False, sum_scheme="auto", enable_chunks=True,
                 rec_multVar_highdim=False, use_fast_math=True, precision="ieee"):
        # enable_chunks, rec_multVar_highdim, use_fast_math: pykeops' code-generation switches,
        # accepted for compatibility; our engines choose chunking themselves and never trade
        # IEEE semantics for speed.
        if not isinstance(formula, str):
            raise FormulaError(f"Genred: the formula must be a string, got {type(formula).__name__}")
        aliases = list(aliases)
        if formula2 is not None:
            f1, variables = parse_reduction_formula(formula, aliases)
            from ..formula.parser import parse_aliases

            f2 = parse_formula(formula2, parse_aliases(aliases))
            formulas = (f1, f2)
            variables = _all_variables(variables, f2)
        else:
            f1, variables = parse_reduction_formula(formula, aliases)
            formulas = (f1,)
        name = reduction_op
        if formula2 is not None and name in ("LogSumExp", "Max_SumShiftExp"):
            name += "Weight"
        k = opt_arg if name in _K_REDUCTIONS else None
        if name in _K_REDUCTIONS and k is None:
            raise FormulaError(f"Genred: reduction {name} needs K, given as opt_arg=K")
        self.formula, self.aliases, self.reduction_op, self.axis = formula, aliases, reduction_op, axis
        self.formula2, self.opt_arg = formula2, opt_arg
        self.options = _options({"dtype_acc": dtype_acc, "use_double_acc": use_double_acc,
                                 "sum_scheme": sum_scheme, "precision": precision})
        self.spec = ReductionSpec(
            reduction=name, formulas=formulas, variables=variables, axis=axis, k=k,
            dtype="float32", dtype_acc=self.options["dtype_acc"], sum_scheme=self.options["sum_scheme"],
            precision=self.options["precision"],
        )

    def __call__(self, *args, backend=None, device_id=-1, ranges=None, out=None):
        tools = self._tools
        n = len(self.spec.variables)
        if len(args) != n:
            raise FormulaError(
                f"Genred({self.formula!r}) takes {n} array(s) (aliases {self.aliases}), got {len(args)}"
            )
        for i, (a, v) in enumerate(zip(args, self.spec.variables)):
            if not tools.is_array(a):
                from .call import describe_variable

                raise ShapeError(
                    f"Genred({self.formula!r}): argument {i} ({describe_variable(v)}) must be a "
                    f"{tools.array_kind} array, got {type(a).__name__}"
                )
        dtypes = {tools.dtype_name(a, f"Genred argument {i}") for i, a in enumerate(args)}
        if len(dtypes) > 1:
            from ..errors import DTypeError

            raise DTypeError(
                f"Genred({self.formula!r}): arguments have mixed dtypes "
                f"{[tools.dtype_name(a, '') for a in args]}; convert them to one dtype"
            )
        spec = self.spec.with_(dtype=dtypes.pop())
        return run_spec(tools, spec, list(args), backend=backend, out=out, ranges=ranges,
                        device_id=device_id)

    def __repr__(self) -> str:
        return (f"Genred({self.formula!r}, {self.aliases!r}, reduction_op={self.reduction_op!r}, "
                f"axis={self.axis})")


def _all_variables(variables, extra):
    from ..formula.nodes import variables as find

    by_index = {v.index: v for v in variables}
    for v in find(extra):
        by_index.setdefault(v.index, v)
    return tuple(by_index[i] for i in sorted(by_index))


def generic(cls, reduction_op: str, formula: str, output: str, *aliases, **kwargs):
    """pykeops' ``generic_sum``-style helpers: ``output`` ("a = Vi(1)") gives the axis."""
    _, out = parse_alias(output, 0)
    if out.cat not in (0, 1):
        raise FormulaError(f"the output {output!r} must be a Vi or a Vj variable")
    axis = 1 if out.cat == 0 else 0
    if reduction_op in _K_REDUCTIONS:
        kwargs.setdefault("opt_arg", out.dim)  # the output's dimension is K, as in pykeops
    return cls(formula, list(aliases), reduction_op=reduction_op, axis=axis, **kwargs)


class GenericKernelSolve:
    """pykeops' KernelSolve: solve ``alpha * a + K a = b`` where ``K a`` is a Genred formula.

    ``formula`` is linear in the variable named ``varinvalias`` (e.g.
    ``"Exp(-g * SqDist(x, y)) * a"`` with ``"a = Vj(1)"``); calling the object
    with the arrays of every alias — the right-hand side ``b`` in the place of
    ``varinvalias`` — returns ``a`` (conjugate gradient; K must be symmetric
    positive).  With torch tensors the result is differentiable.
    """

    _tools = None
    _genred = None

    def __init__(self, formula: str, aliases, varinvalias: str, axis: int = 0, dtype=None,
                 opt_arg=None, cuda_type=None, dtype_acc="auto", use_double_acc=False,
                 sum_scheme="auto", enable_chunks=True, rec_multVar_highdim=None):
        from ..formula.parser import parse_aliases

        aliases = list(aliases)
        named = parse_aliases(aliases)
        if varinvalias not in named:
            raise FormulaError(f"KernelSolve: {varinvalias!r} is not one of the aliases {list(named)}")
        var = named[varinvalias]
        if var.cat not in (0, 1):
            raise FormulaError(f"KernelSolve: {varinvalias!r} must be a Vi or a Vj variable")
        self.position = var.index
        red_axis = 1 if var.cat == 1 else 0
        self.genred = self._genred(formula, aliases, reduction_op="Sum", axis=red_axis,
                                   dtype_acc=dtype_acc, use_double_acc=use_double_acc,
                                   sum_scheme=sum_scheme)
        if self.genred.spec.formulas[0].dim != var.dim:
            raise FormulaError(
                f"KernelSolve: the formula has dimension {self.genred.spec.formulas[0].dim}, "
                f"the unknown {varinvalias!r} has {var.dim}"
            )
        self.formula, self.aliases, self.varinvalias = formula, aliases, varinvalias

    def __call__(self, *args, backend=None, device_id=-1, alpha=1e-10, eps=None, max_iter=None,
                 ranges=None, warmup=None):
        from .solve import default_tolerance

        request = BackendRequest.parse(backend, device_id)  # once for every product of the solve
        tools = self._tools
        args = list(args)
        if len(args) != len(self.genred.spec.variables):
            raise FormulaError(
                f"KernelSolve takes {len(self.genred.spec.variables)} arrays "
                f"(aliases {self.aliases}), got {len(args)}"
            )
        b = args[self.position]
        dtype = tools.dtype_name(b, "KernelSolve right-hand side")
        tol = eps if eps is not None else default_tolerance(dtype)
        iters = max_iter if max_iter is not None else max(10, 2 * tools.shape(b)[-2])

        def apply_k(v):
            call_args = list(args)
            call_args[self.position] = v
            return self.genred(*call_args, backend=request, ranges=ranges)

        others = [a for i, a in enumerate(args) if i != self.position and tools.is_array(a)]
        return tools.solve_operator(apply_k, others, b, alpha, tol, iters)
