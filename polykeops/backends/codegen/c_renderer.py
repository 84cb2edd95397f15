"""Formula IR -> C-family statements, shared by the CPU and CUDA backends.

:class:`CRenderer` walks a formula DAG once, children before parents, and emits
one local variable per distinct node (common sub-expressions are computed once):

* a node of dimension 1 becomes a scalar ``const T vN = ...;``
* a node of dimension d > 1 becomes a small array ``T vN[d];`` filled by a loop
  over its components (marked for unrolling) or by explicit statements for the
  index-shuffling ops (Concat, ExtractT...).

The renderer knows nothing about where values come from: the caller gives a
``leaf`` callback that returns the C expression of component ``k`` of a
variable (``k`` is an int or a C index expression), and may give ``known``
accessors for nodes that are computed elsewhere (hoisted out of a loop, or
stored in a tile buffer).  Dialect differences between C and CUDA (scalar
types, names of math functions, pragmas, literals of infinity and NaN) are
class attributes, so a CUDA renderer is a subclass that overrides a few of them.

Elementwise ops are rendered by *C rules*, one per op, kept in an open registry:
:func:`register_c_rule` adds one (the rules of the built-in ops are registered at
the bottom of this module, a third party registers its own the same way), and
every dialect, the CPU kernels, the CUDA kernels and the generic CPU engine's
interpreter (generated from these rules by :mod:`.generic_ops`) use the same
rule.  The semantics of every op follow its reference implementation in
:mod:`polykeops.formula.ops` (including NaN and infinity propagation); the
tests compare rendered kernels with the reference on random and special values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction

from ...errors import BackendError
from ...formula.nodes import Node
from .plan import postorder as _postorder


class UnsupportedOpError(BackendError):
    """The renderer has no C rule for an operation (for example a third-party op)."""


@dataclass
class RenderedFormula:
    """The statements computing some nodes, and how to read any node's components."""

    lines: list[str]
    access: Callable[[Node, object], str]
    names: dict = field(default_factory=dict)

    def value(self, node: Node, k: object = 0) -> str:
        """C expression of component ``k`` of ``node``."""
        return self.access(node, k)


#: a C rule: ``rule(renderer, *component_expressions, *params) -> C expression`` of one component
CRule = Callable[..., str]

#: op name -> C rule of an elementwise op (component k of the result from component k of each
#: argument, component 0 of an argument of dimension 1); filled by :func:`register_c_rule`
C_RULES: dict[str, CRule] = {}


def register_c_rule(op_name: str, rule: CRule, replace: bool = False) -> CRule:
    """Register the C rule of the elementwise op ``op_name`` (the op must also be in the op table).

    ``rule(r, *args, *params)`` receives the renderer ``r`` (for literals: ``r.literal(x)``,
    math functions: ``r.call("tanh", a)``), the C expressions of one component of each argument
    and the op's static parameters, and returns the C expression of that component of the
    result.  Every C-family backend then renders the op (the CPU kernels and CUDA; the generic
    CPU engine interprets the built-in ops only, and declines the others).  Raises if the op has
    a rule already, unless ``replace``.
    """
    if op_name in C_RULES and not replace:
        raise BackendError(f"operation {op_name!r} already has a C rule (pass replace=True to change it)")
    C_RULES[op_name] = rule
    return rule


class CRenderer:
    """C renderer; subclasses (CUDA, ...) override the dialect attributes below."""

    #: dtype name -> C scalar type
    float_types = {"float32": "float", "float64": "double"}
    simd_pragma = "#pragma omp simd"
    unroll_pragma = "#pragma GCC unroll {n}"
    infinity = "INFINITY"
    nan = "NAN"
    #: math functions whose name differs from the C library's (``tanhf`` for float, ``tanh`` for
    #: double), per C scalar type: the vectorisable IEEE-safe versions of the CPU runtime header
    #: (pk_math.h); the CUDA dialect uses the C names (NVRTC's math library)
    math_funcs = {
        "float": {
            "exp": "pk_expf", "log": "pk_logf", "expm1": "pk_expm1f", "log1p": "pk_log1pf",
            "tanh": "pk_tanhf", "sinh": "pk_sinhf", "cosh": "pk_coshf", "erf": "pk_erff",
        },
        "double": {
            "exp": "pk_exp", "log": "pk_log", "expm1": "pk_expm1", "log1p": "pk_log1p",
            "tanh": "pk_tanh", "sinh": "pk_sinh", "cosh": "pk_cosh", "erf": "pk_erf",
        },
    }
    #: components above which small arrays are filled by loops rather than unrolled text
    unroll_limit = 16
    #: the fused multiply-add of each C scalar type (pk_math.h: one instruction where the CPU
    #: has it): the CPU kernels are compiled without contraction (each op rounds as written,
    #: whatever its context), and ops that are sums of products (``Sum(Square(u))``,
    #: ``Sum(u * v)``) are written with it; empty: the dialect's compiler contracts (CUDA)
    fma_funcs = {"float": "PK_FMAF", "double": "PK_FMA"}

    def __init__(self, dtype: str = "float32"):
        if dtype not in self.float_types:
            raise BackendError(f"{type(self).__name__} cannot render dtype {dtype!r}")
        self.dtype = dtype
        self.T = self.float_types[dtype]
        self.fn = self.math_funcs.get(self.T, {})

    # ------------------------------------------------------------------
    # literals and helpers
    # ------------------------------------------------------------------
    def literal(self, value) -> str:
        """A C literal of type T for an int, Fraction or float constant (rounded as NumPy does)."""
        x = float(Fraction(value)) if not isinstance(value, float) else value
        if math.isnan(x):
            return f"(({self.T}){self.nan})"
        if math.isinf(x):
            return f"(({self.T}){'-' if x < 0 else ''}{self.infinity})"
        text = repr(x)
        if self.T == "double":
            return f"({text})" if x < 0 else text
        # double literal then cast: the same double -> float rounding as np.full(float(v), float32)
        return f"(({self.T}){text})"

    def unroll(self, n: int) -> str:
        return self.unroll_pragma.format(n=n)

    def call(self, fname: str, *args: str) -> str:
        """C call of the math function ``fname`` (a C library name: ``exp``, ``tanh``...) in this
        dialect and scalar type."""
        name = self.fn.get(fname) or (fname + "f" if self.T == "float" else fname)
        return f"{name}({', '.join(args)})"

    @classmethod
    def supported_ops(cls) -> frozenset:
        """The op names this renderer can emit (leaves excluded)."""
        return frozenset(C_RULES) | frozenset(cls._STRUCTURAL)

    @staticmethod
    def elementwise_ops():
        """The names of the ops with a C rule (a live view: rules registered later are in it)."""
        return C_RULES.keys()

    @staticmethod
    def is_elementwise(node: Node) -> bool:
        """True for ops computed component by component (no mixing of components)."""
        return node.op in C_RULES

    # ------------------------------------------------------------------
    # the walk
    # ------------------------------------------------------------------
    def render(
        self,
        roots: Iterable[Node],
        leaf: Callable[[Node, object], str],
        known: dict | None = None,
        prefix: str = "v",
        counter: list | None = None,
    ) -> RenderedFormula:
        """Statements computing ``roots`` (and their sub-nodes, once each).

        ``leaf(var, k)`` gives the expression of component ``k`` of a ``Var``;
        ``known[node](k)`` the expression of an already computed node.
        ``counter`` (a one-element list) continues the numbering of names
        across several calls that share one C scope.
        """
        known = dict(known or {})
        names: dict[Node, str] = {}
        lines: list[str] = []
        counter = counter if counter is not None else [0]

        def access(node: Node, k) -> str:
            if node in known:
                return known[node](k if node.dim > 1 else 0)
            op = node.op
            if op == "Const":
                return self.literal(node.params[0])
            if op == "Zero":
                return self.literal(0)
            if op == "Var":
                return leaf(node, k if node.dim > 1 else 0)
            if op == "Leaf":
                raise BackendError("un-numbered Leaf nodes cannot be rendered (use a canonical spec)")
            name = names[node]
            return name if node.dim == 1 else f"{name}[{k}]"

        todo = _postorder(roots, stop=lambda n: n in known or n.is_leaf)
        for n in todo:
            if n.op not in C_RULES and n.op not in self._STRUCTURAL:
                raise UnsupportedOpError(
                    f"the C renderer has no rule for operation {n.op!r}; "
                    "the reference backend evaluates it"
                )
        for n in todo:
            name = f"{prefix}{counter[0]}"
            counter[0] += 1
            names[n] = name
            if n.op in C_RULES:
                self._emit_elementwise(n, name, access, lines)
            else:
                getattr(self, self._STRUCTURAL[n.op])(n, name, access, lines)
        return RenderedFormula(lines, access, names)

    def render_component(
        self,
        nodes: list,
        k: str,
        dim: int,
        leaf: Callable[[Node, object], str],
        known: dict | None = None,
        prefix: str = "c",
        counter: list | None = None,
    ) -> tuple[list[str], dict]:
        """Component ``k`` (a C index expression) of elementwise ``nodes`` of dimension ``dim``.

        ``nodes`` are in dependency order; each becomes one scalar ``const T``.  This is
        how large vector values are computed: inside a loop over their components, so
        that each component is a scalar (in a register, or one SIMD lane per j).
        Returns the lines and ``{node: scalar name}``.
        """
        known = known or {}
        counter = counter if counter is not None else [0]
        names: dict[Node, str] = {}
        lines: list[str] = []

        def comp(a: Node) -> str:
            if a in names:
                return names[a]
            kk = k if a.dim == dim and dim > 1 else 0
            if a in known:
                return known[a](kk)
            if a.op == "Const":
                return self.literal(a.params[0])
            if a.op == "Zero":
                return self.literal(0)
            if a.op == "Var":
                return leaf(a, kk)
            raise BackendError(f"render_component: operand {a.op} is neither computed nor known")

        for n in nodes:
            if n.op not in C_RULES or n.dim != dim:
                raise BackendError(
                    f"render_component: {n.op} of dimension {n.dim} is not elementwise in {dim}"
                )
            expr = C_RULES[n.op](self, *[comp(a) for a in n.args], *n.params)
            name = f"{prefix}{counter[0]}"
            counter[0] += 1
            lines.append(f"const {self.T} {name} = {expr};")
            names[n] = name
        return lines, names

    # ------------------------------------------------------------------
    # elementwise ops: an expression of the components of the arguments
    # ------------------------------------------------------------------
    def _emit_elementwise(self, n: Node, name: str, access, lines: list[str]) -> None:
        rule = C_RULES[n.op]
        d = n.dim

        def comp(k):
            args = [access(a, k if a.dim == d and d > 1 else 0) for a in n.args]
            return rule(self, *args, *n.params)

        if d == 1:
            lines.append(f"const {self.T} {name} = {comp(0)};")
        elif d <= self.unroll_limit:
            lines.append(f"{self.T} {name}[{d}];")
            for k in range(d):
                lines.append(f"{name}[{k}] = {comp(k)};")
        else:
            lines.append(f"{self.T} {name}[{d}];")
            lines.append(self.unroll(8))
            lines.append(f"for (int k_ = 0; k_ < {d}; ++k_) {name}[k_] = {comp('k_')};")

    def _one(self):
        return self.literal(1)

    def _zero(self):
        return self.literal(0)

    def _sign(self, a):
        # torch's sign: 0 at +-0 and at NaN (a selection, never arithmetic on the argument)
        return f"(({a}) > 0 ? {self._one()} : (({a}) < 0 ? {self.literal(-1)} : {self._zero()}))"

    def _round(self, a, decimals):
        s = self.literal(10.0**decimals)
        inner = f"{self.call('fabs', a)} * {s} + {self.literal(0.5)}"
        return f"({self._sign(a)} * {self.call('floor', inner)} / {s})"

    def _pow_int(self, a, n: int) -> str:
        if n == 0:
            return self._one()
        m = abs(n)
        if m > 16:
            return self.call("pow", a, self.literal(n))
        # binary exponentiation written out (an expression tree of products)
        def power(e):
            if e == 1:
                return f"({a})"
            half = power(e // 2)
            sq = f"({half} * {half})"
            return sq if e % 2 == 0 else f"({sq} * ({a}))"

        p = power(m)
        return p if n > 0 else f"({self._one()} / {p})"

    #: structural ops (components mixed or moved): op name -> emitting method
    _STRUCTURAL = {
        "Sum": "_emit_sum",
        "SumT": "_emit_sumt",
        "Max": "_emit_minmax",
        "Min": "_emit_minmax",
        "ArgMax": "_emit_argminmax",
        "ArgMin": "_emit_argminmax",
        "OneHot": "_emit_onehot",
        "Take": "_emit_take",
        "Elem": "_emit_elem",
        "ElemT": "_emit_elemt",
        "Extract": "_emit_extract",
        "ExtractT": "_emit_extractt",
        "Concat": "_emit_concat",
        "MatVecMult": "_emit_matvec",
        "VecMatMult": "_emit_vecmat",
        "TensorProd": "_emit_tensorprod",
    }

    # ------------------------------------------------------------------
    # structural ops: explicit statements
    # ------------------------------------------------------------------
    def _declare(self, name: str, d: int) -> str:
        return f"{self.T} {name}[{d}];" if d > 1 else f"{self.T} {name};"

    def _assign_loop(self, lines, name, d, expr_of_k, start=0, count=None):
        """``name[start + k] = expr(k)`` for k < count, unrolled below the limit."""
        count = d if count is None else count
        def target(k):
            if d == 1:
                return name
            return f"{name}[{start} + {k}]" if start else f"{name}[{k}]"

        if count <= self.unroll_limit:
            for k in range(count):
                lines.append(f"{target(k)} = {expr_of_k(k)};")
        else:
            lines.append(self.unroll(8))
            lines.append(f"for (int k_ = 0; k_ < {count}; ++k_) {target('k_')} = {expr_of_k('k_')};")

    def _emit_sum(self, n, name, access, lines):
        (a,) = n.args
        if a.dim == 1:
            lines.append(f"const {self.T} {name} = {access(a, 0)};")
            return
        fma = self.fma_funcs.get(self.T)
        if fma and a.op in ("Square", "Mult"):  # a sum of products: multiply-adds
            u, v = a.args[0], a.args[-1]
            lines.append(f"{self.T} {name} = ({access(u, 0)}) * ({access(v, 0)});")
            step = lambda k: f"{name} = {fma}({access(u, k)}, {access(v, k)}, {name});"  # noqa: E731
        else:
            lines.append(f"{self.T} {name} = {access(a, 0)};")
            step = lambda k: f"{name} += {access(a, k)};"  # noqa: E731
        if a.dim - 1 <= self.unroll_limit:
            for k in range(1, a.dim):
                lines.append(step(k))
        else:
            lines.append(self.unroll(8))
            lines.append(f"for (int k_ = 1; k_ < {a.dim}; ++k_) {step('k_')}")

    def _emit_sumt(self, n, name, access, lines):
        (a,) = n.args
        lines.append(self._declare(name, n.dim))
        self._assign_loop(lines, name, n.dim, lambda k: access(a, 0))

    def _emit_minmax(self, n, name, access, lines):
        (a,) = n.args
        cmp = "<" if n.op == "Min" else ">"
        lines.append(f"{self.T} {name} = {access(a, 0)};")
        # NaN propagates (as NumPy's max): once the running value is NaN it stays NaN
        for k in self._range_text(1, a.dim, lines):
            x = access(a, k)
            lines.append(f"{name} = (({x}) {cmp} {name} || ({x}) != ({x})) ? ({x}) : {name};")

    def _emit_argminmax(self, n, name, access, lines):
        (a,) = n.args
        cmp = "<" if n.op == "ArgMin" else ">"
        best = f"{name}_b"
        lines.append(f"{self.T} {best} = {access(a, 0)};")
        lines.append(f"{self.T} {name} = {self._zero()};")
        # first NaN wins; otherwise first strict optimum
        for k in self._range_text(1, a.dim, lines):
            x = access(a, k)
            kk = self.literal(k) if isinstance(k, int) else f"(({self.T}){k})"
            lines.append(
                f"if ((({x}) {cmp} {best}) || (({x}) != ({x}) && {best} == {best})) "
                f"{{ {best} = ({x}); {name} = {kk}; }}"
            )

    def _range_text(self, start: int, stop: int, lines):
        """Component indices start..stop-1: ints (unrolled) or one loop variable."""
        if stop - start <= self.unroll_limit:
            return list(range(start, stop))
        lines.append(self.unroll(8))
        lines.append(f"for (int k_ = {start}; k_ < {stop}; ++k_)")
        return ["k_"]

    def _emit_onehot(self, n, name, access, lines):
        (a,) = n.args
        r = f"{name}_r"
        lines.append(f"const {self.T} {r} = {self._round(access(a, 0), 0)};")
        lines.append(self._declare(name, n.dim))
        one, zero = self._one(), self._zero()
        self._assign_loop(
            lines, name, n.dim,
            lambda k: f"({r} == {self.literal(k) if isinstance(k, int) else f'(({self.T}){k})'}"
                      f" ? {one} : {zero})",
        )

    def _emit_take(self, n, name, access, lines):
        a, k = n.args
        d = n.dim
        r, ok, base = f"{name}_r", f"{name}_ok", f"{name}_b"
        lines.append(f"const {self.T} {r} = {self._round(access(k, 0), 0)};")
        # NaN fails both comparisons: no row
        lines.append(f"const int {ok} = {r} >= {self._zero()} && {r} < {self.literal(a.dim // d)};")
        lines.append(f"const int {base} = {ok} ? (int)({r}) * {d} : 0;")
        lines.append(self._declare(name, d))
        self._assign_loop(lines, name, d, lambda c: f"({ok} ? {access(a, f'{base} + {c}')} : {self._zero()})")

    def _emit_elem(self, n, name, access, lines):
        (a,) = n.args
        lines.append(f"const {self.T} {name} = {access(a, n.params[0])};")

    def _emit_elemt(self, n, name, access, lines):
        (a,) = n.args
        m, d = n.params
        x = access(a, 0)
        lines.append(self._declare(name, d))
        self._assign_loop(lines, name, d, lambda k: f"({x}) * {self._zero()}")
        lines.append(f"{name}[{m}] = {x};" if d > 1 else f"{name} = {x};")

    def _emit_extract(self, n, name, access, lines):
        (a,) = n.args
        start, length = n.params
        if length == 1:
            lines.append(f"const {self.T} {name} = {access(a, start)};")
            return
        lines.append(self._declare(name, length))
        self._assign_loop(
            lines, name, length,
            lambda k: access(a, start + k if isinstance(k, int) else f"{start} + {k}"),
        )

    def _emit_extractt(self, n, name, access, lines):
        (a,) = n.args
        start, d = n.params
        zero = f"({access(a, 0)}) * {self._zero()}"
        lines.append(self._declare(name, d))
        if d == 1:
            lines.append(f"{name} = {access(a, 0)};")
            return
        if start:
            self._assign_loop(lines, name, d, lambda k: zero, 0, start)
        self._assign_loop(lines, name, d, lambda k: access(a, k), start, a.dim)
        tail = d - start - a.dim
        if tail:
            self._assign_loop(lines, name, d, lambda k: zero, start + a.dim, tail)

    def _emit_concat(self, n, name, access, lines):
        a, b = n.args
        lines.append(self._declare(name, n.dim))
        self._assign_loop(lines, name, n.dim, lambda k: access(a, k), 0, a.dim)
        self._assign_loop(lines, name, n.dim, lambda k: access(b, k), a.dim, b.dim)

    def _emit_matvec(self, n, name, access, lines):
        a, x = n.args
        cols = x.dim
        rows = n.dim
        lines.append(self._declare(name, rows))
        for r in self._range_text(0, rows, lines):
            tgt = name if rows == 1 else f"{name}[{r}]"
            terms = self._dot(
                lambda c, r=r: access(a, self._idx(r, cols, c)), lambda c: access(x, c), cols
            )
            lines.append(f"{{ {tgt} = {terms}; }}" if "\n" not in terms else terms.replace("@T@", tgt))

    def _emit_vecmat(self, n, name, access, lines):
        x, a = n.args
        rows = x.dim
        cols = n.dim
        lines.append(self._declare(name, cols))
        for c in self._range_text(0, cols, lines):
            tgt = name if cols == 1 else f"{name}[{c}]"
            terms = self._dot(
                lambda r: access(x, r), lambda r, c=c: access(a, self._idx(r, cols, c)), rows
            )
            lines.append(f"{{ {tgt} = {terms}; }}" if "\n" not in terms else terms.replace("@T@", tgt))

    def _idx(self, r, ncols: int, c):
        if isinstance(r, int) and isinstance(c, int):
            return r * ncols + c
        return f"({r}) * {ncols} + ({c})"

    def _dot(self, left, right, length: int) -> str:
        """sum_c left(c) * right(c): an expression when short, else a loop template."""
        if length <= self.unroll_limit:
            return " + ".join(f"({left(c)}) * ({right(c)})" for c in range(length))
        return (
            f"{{ {self.T} s_ = {self._zero()};\n{self.unroll(8)}\n"
            f"for (int c_ = 0; c_ < {length}; ++c_) s_ += ({left('c_')}) * ({right('c_')});\n"
            "@T@ = s_; }"
        )

    def _emit_tensorprod(self, n, name, access, lines):
        a, b = n.args
        m, nn = a.dim, b.dim
        lines.append(self._declare(name, m * nn))
        if m * nn <= self.unroll_limit * 4:
            for r in range(m):
                for c in range(nn):
                    tgt = name if m * nn == 1 else f"{name}[{r * nn + c}]"
                    lines.append(f"{tgt} = ({access(a, r)}) * ({access(b, c)});")
            return
        lines.append(f"for (int r_ = 0; r_ < {m}; ++r_)")
        lines.append(self.unroll(8))
        lines.append(
            f"for (int c_ = 0; c_ < {nn}; ++c_) {name}[r_ * {nn} + c_] = "
            f"({access(a, 'r_')}) * ({access(b, 'c_')});"
        )


def _builtin_rules() -> dict:
    """op name -> C rule of the built-in elementwise ops."""

    def f1(fname):
        return lambda r, a: r.call(fname, a)

    z = lambda r: r._zero()  # noqa: E731
    one = lambda r: r._one()  # noqa: E731

    def cmp(op):
        return lambda r, a, b: f"((({a}) {op} ({b})) ? {one(r)} : {z(r)})"

    return {
        "Minus": lambda r, a: f"(-({a}))",
        "Exp": f1("exp"),
        "Log": f1("log"),
        "XLogX": lambda r, a: f"(({a}) == {z(r)} ? ({a}) * {z(r)} : ({a}) * {r.call('log', a)})",
        "Sin": f1("sin"),
        "Cos": f1("cos"),
        "SinXDivX": lambda r, a: f"(({a}) == {z(r)} ? {one(r)} : {r.call('sin', a)} / ({a}))",
        "SinXDivXDeriv": lambda r, a: (
            f"(({a}) == {z(r)} ? {z(r)} : ({r.call('cos', a)} - {r.call('sin', a)} / ({a})) / ({a}))"
        ),
        "Asin": f1("asin"),
        "Acos": f1("acos"),
        "Atan": f1("atan"),
        "Sqrt": f1("sqrt"),
        "Rsqrt": lambda r, a: f"(({a}) == {z(r)} ? {z(r)} : {one(r)} / {r.call('sqrt', a)})",
        "Inv": lambda r, a: f"({one(r)} / ({a}))",
        "Square": lambda r, a: f"(({a}) * ({a}))",
        "Abs": f1("fabs"),
        "Sign": lambda r, a: r._sign(a),
        "Step": lambda r, a: f"(({a}) >= {z(r)} ? {one(r)} : {z(r)})",
        # max(x, 0) as a selection: 0 at -inf, NaN stays NaN (as torch.relu)
        "ReLU": lambda r, a: f"((({a}) > {z(r)} || ({a}) != ({a})) ? ({a}) : {z(r)})",
        "Floor": f1("floor"),
        "Tanh": f1("tanh"),
        "Sinh": f1("sinh"),
        "Cosh": f1("cosh"),
        "Erf": f1("erf"),
        "Log1p": f1("log1p"),
        "Expm1": f1("expm1"),
        "Add": lambda r, a, b: f"(({a}) + ({b}))",
        "Subtract": lambda r, a, b: f"(({a}) - ({b}))",
        "Mult": lambda r, a, b: f"(({a}) * ({b}))",
        "Divide": lambda r, a, b: f"(({a}) / ({b}))",
        "Powf": lambda r, a, b: r.call("pow", a, b),
        "Atan2": lambda r, a, b: r.call("atan2", a, b),
        "Equal": cmp("=="),
        "NotEqual": cmp("!="),
        "LessThan": cmp("<"),
        "GreaterThan": cmp(">"),
        "LessOrEqual": cmp("<="),
        "GreaterOrEqual": cmp(">="),
        # selections, never arithmetic with a zero: the branch not taken may be +-inf or NaN
        "IfElse": lambda r, c, a, b: f"(({c}) >= {z(r)} ? ({a}) : ({b}))",
        "Clamp": lambda r, x, a, b: f"(({x}) < ({a}) ? ({a}) : (({x}) > ({b}) ? ({b}) : ({x})))",
        "ClampInt": lambda r, x, lo, hi: (
            f"(({x}) < {r.literal(lo)} ? {r.literal(lo)} : "
            f"(({x}) > {r.literal(hi)} ? {r.literal(hi)} : ({x})))"
        ),
        "Mod": lambda r, x, m, off: f"(({x}) - ({m}) * {r.call('floor', _paren_div(x, off, m))})",
        "Round": lambda r, a, decimals: r._round(a, decimals),
        "Pow": lambda r, a, n: r._pow_int(a, n),
    }


def _paren_div(x, off, m) -> str:
    return f"(({x}) - ({off})) / ({m})"


for _name, _rule in _builtin_rules().items():
    register_c_rule(_name, _rule)

#: the ops whose C rule is built in (what the generic CPU engine's interpreter is generated from)
BUILTIN_C_RULES = frozenset(C_RULES)
