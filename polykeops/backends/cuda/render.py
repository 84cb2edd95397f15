"""The CUDA dialect of the shared C renderer, and how a kernel's formula code is laid out.

:class:`CudaRenderer` is :class:`polykeops.backends.codegen.CRenderer` with the
CUDA spelling (IEEE ``expf``/``exp`` from NVRTC's built-in math library, no
OpenMP pragmas, ``__device__`` helpers) and a higher unroll limit: on a GPU a
small array survives in registers only when every index is a constant, so
vectors up to :data:`CudaRenderer.unroll_limit` components are written out.

On top of the renderer, :func:`render_formulas` arranges the formula code of a
map-reduce kernel:

* *hoisting*: every sub-formula that does not depend on j (and is at most
  :data:`HOIST_MAX_DIM` wide) is computed once per output row, before the j
  loop (the renderer's ``known`` seam);
* *chunked evaluation*: a ``Sum`` of an element-wise vector of at least
  :data:`CHUNK_MIN_DIM` components (``SqDist(x, y)`` at D = 256, a dot product)
  is a loop over the components that reads its operands one component at a
  time, so no D-wide temporary exists (registers would spill);
* *output slices*: :func:`slice_formula` pushes an ``Extract`` down a formula so
  that a kernel computing components ``[c0, c0 + w)`` of a wide result reads and
  computes only those (the element-wise part of it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...formula.nodes import CAT_J, Const, Node, Var, Zero, walk
from ..codegen import CRenderer
from ..codegen.plan import dependencies, frontier, postorder

#: element-wise ops: component k of the result needs component k of each argument
#: (component 0 of an argument of dimension 1): the ops with a C rule (a live view of the registry)
ELEMENTWISE = CRenderer.elementwise_ops()

#: a Sum over an element-wise vector at least this wide is a loop (chunked evaluation)
CHUNK_MIN_DIM = 65
#: widest sub-formula hoisted out of the j loop (wider ones would not stay in registers)
HOIST_MAX_DIM = 64

#: offset of the scalar stand-ins of the variables of a chunked sum
_SCALAR_BASE = 1 << 30


class CudaRenderer(CRenderer):
    """The C renderer with the CUDA (NVRTC) dialect."""

    simd_pragma = ""
    unroll_pragma = "#pragma unroll {n}"
    infinity = "pk_inf_f()"
    nan = "pk_nan_f()"
    math_funcs = {}  # the C library's names (expf, tanhf...): NVRTC's built-in math library
    fma_funcs = {}  # NVRTC contracts multiply-adds itself
    unroll_limit = 64


# ---------------------------------------------------------------------------
# output slices
# ---------------------------------------------------------------------------


def slice_formula(f: Node, start: int, length: int) -> Node:
    """A formula for components ``[start, start + length)`` of ``f``, with the slice pushed down
    through element-wise ops, ``Concat``, ``SumT`` and nested ``Extract`` (to the variables)."""
    memo: dict = {}

    def sl(n: Node, s: int, ln: int) -> Node:
        if s == 0 and ln == n.dim:
            return n
        key = (n, s, ln)
        if key in memo:
            return memo[key]
        op = n.op
        if op == "Zero":
            out = Zero(ln)
        elif op == "Const":
            out = Const(n.params[0], ln)
        elif op in ELEMENTWISE:
            out = Node(op, tuple(a if a.dim == 1 else sl(a, s, ln) for a in n.args), n.params)
        elif op == "Extract":
            out = sl(n.args[0], n.params[0] + s, ln)
        elif op == "SumT":
            out = Node("SumT", n.args, (ln,)) if ln > 1 else n.args[0]
        elif op == "Concat":
            a, b = n.args
            if s + ln <= a.dim:
                out = sl(a, s, ln)
            elif s >= a.dim:
                out = sl(b, s - a.dim, ln)
            else:
                out = Node("Concat", (sl(a, s, a.dim - s), sl(b, 0, s + ln - a.dim)))
        else:
            out = Node("Extract", (n,), (s, ln))
        memo[key] = out
        return out

    return sl(f, start, length)


# ---------------------------------------------------------------------------
# chunked sums
# ---------------------------------------------------------------------------


def _chunkable(a: Node) -> bool:
    """Whether ``a`` is element-wise of dimension ``a.dim`` down to variables, constants
    and scalar sub-formulas."""
    seen = set()
    stack = [a]
    while stack:
        n = stack.pop()
        if n in seen or n.dim == 1:
            continue
        seen.add(n)
        if n.op in ("Var", "Const", "Zero"):
            continue
        if n.op not in ELEMENTWISE or n.dim != a.dim:
            return False
        stack.extend(n.args)
    return True


def is_chunked_sum(n: Node) -> bool:
    return n.op == "Sum" and n.args[0].dim >= CHUNK_MIN_DIM and _chunkable(n.args[0])


def _scalarize(a: Node, scalars: dict) -> Node:
    """``a`` (element-wise, dimension D) as a scalar formula: D-wide variables become scalar
    stand-ins ``Var(_SCALAR_BASE + index, 1, cat)``; scalar sub-formulas stay (they are
    rendered before the loop and passed as known nodes)."""
    memo: dict = {}
    for n in walk(a):
        if n.dim == 1:
            memo[n] = n
            if n.op not in ("Const", "Zero", "Var"):
                scalars[n] = None
        elif n.op == "Var":
            memo[n] = Var(_SCALAR_BASE + n.index, 1, n.cat)
        elif n.op in ("Const", "Zero"):
            memo[n] = Const(n.value, 1)
        else:
            memo[n] = Node(n.op, tuple(memo[x] for x in n.args), n.params)
    return memo[a]


@dataclass
class FormulaCode:
    """The formula code of one kernel."""

    pre: list[str]  # once per output row, before the j loop
    body: list[str]  # once per (i, j)
    values: list[list[str]]  # values[f][k]: C expression of component k of formula f


def render_formulas(renderer: CRenderer, formulas, leaf, given=None) -> FormulaCode:
    """Lay out the code computing ``formulas`` (see the module docstring); ``given`` maps nodes
    whose value the kernel computes itself (tensor-core inner products, :mod:`.mma`) to
    ``k -> C expression``."""
    counter = [0]
    jdep = {n: CAT_J in d for n, d in dependencies(formulas).items()}

    chunk_interior: set[Node] = set()
    for f in formulas:
        for n in walk(f):
            if is_chunked_sum(n):
                chunk_interior.update(m for m in walk(n.args[0]) if m.dim > 1)

    def leaf_scalar(v, k):
        if v.index >= _SCALAR_BASE:
            return leaf(Var(v.index - _SCALAR_BASE, 1, v.cat), "__CHUNK__")
        return leaf(v, k)

    def render_block(roots, known):
        """Lines computing ``roots`` (chunked sums as loops) and the updated known map."""
        known = dict(known)
        lines: list[str] = []
        for s in postorder(roots, stop=lambda n: n in known):
            if not is_chunked_sum(s):
                continue
            scalars: dict = {}
            body = _scalarize(s.args[0], scalars)
            if scalars:
                rs = renderer.render(list(scalars), leaf, known=known, prefix="v", counter=counter)
                lines += rs.lines
                for n in scalars:
                    known[n] = lambda k, n=n, rs=rs: rs.value(n, 0)
            acc = f"v{counter[0]}"
            idx = f"c{counter[0]}"
            counter[0] += 1
            inner = renderer.render([body], leaf_scalar, known=known, prefix="v", counter=counter)
            lines.append(f"{renderer.T} {acc} = {renderer.literal(0)};")
            lines.append("#pragma unroll 8")
            lines.append(f"for (int {idx} = 0; {idx} < {s.args[0].dim}; ++{idx}) {{")
            lines += ["  " + x.replace("__CHUNK__", idx) for x in inner.lines]
            lines.append(f"  {acc} += {inner.value(body, 0).replace('__CHUNK__', idx)};")
            lines.append("}")
            known[s] = lambda k, acc=acc: acc
        rest = [r for r in roots if r not in known and not r.is_leaf]
        rendered = None
        if rest:
            rendered = renderer.render(rest, leaf, known=known, prefix="v", counter=counter)
            lines += rendered.lines
        return lines, known, rendered

    # hoisted: maximal j-independent sub-formulas (outside the element-wise interior of chunks)
    hoist = frontier(formulas, inner=lambda n: jdep[n],
                     keep=lambda n: (not jdep[n] and bool(n.args) and n.dim <= HOIST_MAX_DIM
                                     and n not in chunk_interior))
    given = dict(given or {})
    pre_lines, known, pre_r = render_block(hoist, given)
    for n in hoist:
        if n not in known:
            known[n] = lambda k, n=n, r=pre_r: r.value(n, k)

    body_lines, known, body_r = render_block(list(formulas), known)

    def value(f, k):
        if f in known:
            return known[f](k if f.dim > 1 else 0)
        if f.is_leaf:
            if f.op == "Var":
                return leaf(f, k if f.dim > 1 else 0)
            return renderer.literal(0 if f.op == "Zero" else f.params[0])
        return body_r.value(f, k)

    values = [[value(f, k) for k in range(f.dim)] for f in formulas]
    return FormulaCode(pre_lines, body_lines, values)
