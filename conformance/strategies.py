"""Hypothesis strategies of the conformance suite (its one helpers module for drawing cases).

Everything a test draws comes from here:

* :func:`formulas` -- random formula trees (depth <= 4 by default) drawn from the
  op table (:func:`polykeops.formula.ops.public_ops`), so that an op registered
  tomorrow is drawn tomorrow.  Static parameters come from each op's
  ``random_params``; arguments are kept inside each op's ``domain`` ("positive",
  "unit", "nonzero") by wrapping them (``Exp(Sin(x))``, ``9/10 Sin(x)``,
  ``|x| + 1/2``...), and magnitudes are kept moderate by *probing*: every new
  node is evaluated (through the op's reference implementation) on samples of
  its arguments' value intervals, and arguments that would make it explode are
  squashed (``Sin``, ``Atan``) first.  Leaf data lies in (-3, 3).
* :func:`sizes`, :func:`batch_layouts`, :func:`cases` -- M and N (1, 2, and sizes
  that are not multiples of any usual tile or block size), vector dimensions
  (1..8, and 64 / 200 for the large-dimension tests), batch dimensions with
  broadcasting, K for the K-reductions, the sum scheme, the array kind.
* :func:`block_sparse` -- a random block-sparse structure (pykeops' ``ranges``
  6-tuple, :class:`BlockSparse`): contiguous clusters of rows and columns (some
  rows or columns in no cluster, some clusters empty), a random mask of kept
  cluster pairs (all-false rows, all-true, a single block, a band...), optionally
  one structure per batch.
* :class:`Case` -- one drawn test case: a :class:`ReductionSpec`, argument
  shapes (Genred layout) and a *data recipe* (a seed, a distribution, special
  values) from which the data is regenerated, by the suite and by the
  reproduction snippet of a failure; optionally block-sparse ranges.

Every draw is labelled (``label=`` arguments) so hypothesis' falsifying
examples read well.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import cache

import numpy as np
from hypothesis import strategies as st

from polykeops.backends.arrays.numpy import NumpyNamespace
from polykeops.errors import FormulaError
from polykeops.formula import algebra as A
from polykeops.formula.nodes import CAT_I, CAT_J, CAT_P, Const, Node, Var, substitute, variables
from polykeops.formula.ops import OPS, public_ops
from polykeops.formula.reductions import REDUCTIONS
from polykeops.formula.spec import ReductionSpec

#: leaf data lies in (-LEAF, LEAF) (standard normal draws, squashed by LEAF tanh(x / LEAF))
LEAF = 3.0
#: magnitude above which a node's arguments are squashed before it is built
NODE_LIMIT = 40.0
#: sizes at the boundaries of any plausible tiling: 1, 2, the powers of two and their +-1 up to a
#: few thousand, primes (multiples of no tile size) -- drawn half of the time (see :func:`sizes`)
SPECIAL_SIZES_FAST = (
    1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 200, 255, 256, 257, 300,
    509, 511, 512, 513, 1021, 1023, 1024, 1025, 2047, 2048, 2049, 4093, 4095, 4096, 4097,
)
SPECIAL_SIZES_FULL = SPECIAL_SIZES_FAST + (3000, 8191, 8192, 8193)
#: elements (batch x M x N x widest vector) a case may have, per tier: over budget, the dimension
#: that is *not* reduced shrinks first (so that a drawn tile boundary of the reduced one survives)
CELL_BUDGET = {"fast": 40_000, "full": 400_000}
#: K (KMin, ArgKMin...) up to this, and K = N, K = N - 1, weighted at the boundaries
K_MAX = 64
K_REDUCTIONS = tuple(name for name, red in REDUCTIONS.items() if red.uses_k)
CONSTANTS = (1, 2, 3, -1, Fraction(1, 2), Fraction(-3, 2), Fraction(1, 3))

_NP = NumpyNamespace("float64")


# ---------------------------------------------------------------------------
# the drawn case
# ---------------------------------------------------------------------------


#: names of the arrays of pykeops' block-sparse 6-tuple, in order
RANGES_NAMES = ("ranges_i", "slices_i", "redranges_j", "ranges_j", "slices_j", "redranges_i")


@dataclass(frozen=True)
class BlockSparse:
    """pykeops' block-sparse ``ranges`` 6-tuple, as plain integers (hashable, printable).

    ``(ranges_i, slices_i, redranges_j, ranges_j, slices_j, redranges_i)``: the
    rows ``ranges_i[k, 0] <= i < ranges_i[k, 1]`` of i-cluster ``k`` are reduced
    over the j intervals ``redranges_j[s]``, ``slices_i[k - 1] <= s < slices_i[k]``
    (``slices_i[-1]`` read as 0); the last three arrays describe the transposed
    problem.  ``values`` holds each array flattened (row-major), ``shapes`` their
    shapes; leading dimensions before ``(C, 2)`` / ``(C,)`` are batch dimensions
    (one structure per batch, broadcasting against the reduction's batch shape).
    """

    values: tuple
    shapes: tuple

    @property
    def batch(self) -> tuple:
        return tuple(self.shapes[0][:-2])

    def arrays(self) -> list[np.ndarray]:
        """The six int64 NumPy arrays."""
        return [np.array(v, dtype=np.int64).reshape(shape) for v, shape in zip(self.values, self.shapes)]

    def swapped(self) -> BlockSparse:
        """The 6-tuple of the transposed problem (i and j exchanged)."""
        return BlockSparse(self.values[3:] + self.values[:3], self.shapes[3:] + self.shapes[:3])

    def __repr__(self) -> str:
        counts = f"{self.shapes[0][-2]} i-ranges, {self.shapes[3][-2]} j-ranges"
        return f"BlockSparse({counts}, batch={self.batch}, {self.shapes[2][-2]} (i-range, j-interval) pairs)"


#: data distributions that stress a streaming reduction, as NumPy expressions of ``rng`` and
#: ``shape`` (the same text regenerates them in the reproduction snippets); values in (-3, 3)
DATA_KINDS = {
    # sorted along the rows (i or j): the max of every reduced row is in its last tile
    "sorted": "np.sort(3 * np.tanh(rng.standard_normal(shape) / 3), axis=-2 if len(shape) > 1 else -1)",
    "descending": "-np.sort(3 * np.tanh(rng.standard_normal(shape) / 3), axis=-2 if len(shape) > 1 else -1)",
    # a few clusters, tight around their centres (near-ties, close values to separate)
    "clustered": "rng.integers(-2, 3, shape) + 1e-3 * np.tanh(rng.standard_normal(shape))",
    # large dynamic range: magnitudes from 1e-6 to 3
    "wide": "3 * np.tanh(rng.standard_normal(shape) / 3) * 10.0 ** rng.uniform(-6, 0, shape)",
    # +-a pairs and 1/2, shuffled along the rows (see cancelling): for the accumulation options
    "cancelling": "cancelling(rng, shape)",
}


def cancelling(rng, shape) -> np.ndarray:
    """Along the rows (axis -2), independently for every batch and component: pairs ``a, -a``
    (``a`` uniform in [1, 2), every mantissa bit random) and, for an odd count, one ``1/2``,
    shuffled.  The exact sum is 1/2 (0 for an even count); partial sums are as large as ``sqrt(n)``, so an
    accumulator of the data's own precision rounds (any order), while one a few bits wider adds
    exactly (float16 data in float32, float32 data in float64)."""
    shape = tuple(shape)
    if len(shape) < 2:
        return 1 + rng.random(shape)
    n = shape[-2]
    lead = shape[:-2] + shape[-1:]
    out = np.empty(lead + (n,))
    for idx in np.ndindex(*lead):
        a = 1 + rng.random(n // 2)
        row = np.concatenate([a, -a, [0.5] if n % 2 else []])
        out[idx] = rng.permutation(row)
    return np.moveaxis(out, -1, -2)


@dataclass(frozen=True)
class Case:
    """One conformance case: a spec, argument shapes and the recipe of its data.

    The data of argument ``p`` (in ``spec.variables`` order) is drawn, in that
    order, from ``numpy.random.default_rng(seed)``:

    * ``data == "normal"``: ``3 * np.tanh(rng.standard_normal(shape) / 3) * scale`` (in (-3, 3),
      without the atoms at +-3 that clipping would create);
    * ``data == "int"``: ``rng.integers(lo, hi + 1, shape)`` (many exact ties);
    * the distributions of :data:`DATA_KINDS` (sorted, clustered, wide dynamic range...):
      the expressions written there, evaluated with ``rng`` and ``shape``;

    then ``specials`` (``(p, flat_index, value)``) are written in, and every
    array is rounded to ``spec.dtype``.
    """

    spec: ReductionSpec
    shapes: tuple
    M: int
    N: int
    batch: tuple
    seed: int
    data: str = "normal"
    scale: float = 1.0
    int_range: tuple = (-3, 3)
    specials: tuple = ()
    array_kind: str = "torch"
    value_limit: float | None = None  # |F| above which the oracle rejects the case (None: per dtype)
    ranges: BlockSparse | None = None  # block-sparse ranges passed to the reduction (None: dense)

    @property
    def dtype(self) -> str:
        return self.spec.dtype

    def arrays64(self) -> list[np.ndarray]:
        """The data (float64 NumPy arrays holding values exactly representable in ``spec.dtype``)."""
        rng = np.random.default_rng(self.seed)
        out = []
        for shape in self.shapes:
            if self.data == "int":
                lo, hi = self.int_range
                a = rng.integers(lo, hi + 1, shape).astype(np.float64)
            elif self.data in DATA_KINDS:
                names = {"rng": rng, "shape": shape, "cancelling": cancelling}
                a = eval(DATA_KINDS[self.data], {"np": np}, names)  # noqa: S307
            else:
                a = LEAF * np.tanh(rng.standard_normal(shape) / LEAF) * self.scale
            out.append(a)
        for p, idx, value in self.specials:
            out[p].flat[idx] = value
        return [round_to_dtype(a, self.spec.dtype) for a in out]

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"Case({s}, M={self.M}, N={self.N}, batch={self.batch}, shapes={list(self.shapes)}, "
            f"seed={self.seed}, data={self.data!r}, specials={len(self.specials)}, kind={self.array_kind}"
            + (f", ranges={self.ranges!r}" if self.ranges is not None else "")
            + ")"
        )


# ---------------------------------------------------------------------------
# random formula trees
# ---------------------------------------------------------------------------


def _dim_candidates(arity: int, d: int, cap: int) -> list[tuple[int, ...]]:
    """Argument dimensions worth trying for an op whose result should have dimension d."""
    small = sorted({d, 1, 2 * d, 3 * d, 4 * d, d + 1, d + 2, d + 3, 2, 3, 4, 6, 8} - {0})
    small = [x for x in small if 1 <= x <= cap]
    if arity == 1:
        return [(x,) for x in small]
    if arity == 2:
        pairs = {(a, b) for a in (d, 1) for b in (d, 1)}
        pairs |= {(d * k, k) for k in range(1, 5)} | {(k, d * k) for k in range(1, 5)}
        pairs |= {(a, d - a) for a in range(1, d)}
        pairs |= {(a, d // a) for a in range(1, d + 1) if d % a == 0}
        pairs |= {(d * k, 1) for k in range(2, 5)}  # a table and a scalar index (Take)
        return sorted(p for p in pairs if max(p) <= cap)
    if arity == 3:
        return sorted({(a, b, c) for a in (d, 1) for b in (d, 1) for c in (d, 1)})
    return [(d,) * arity]


def _param_draws(opdef, dims, seed: int, tries: int = 12):
    """Candidate static parameters for ``opdef`` with argument dimensions ``dims``."""
    if not opdef.params:
        yield ()
        return
    if opdef.random_params is None:
        return
    rnd = random.Random(seed)
    for _ in range(tries):
        try:
            yield tuple(opdef.random_params(dims, rnd))
        except Exception:
            return


def _result_dim(opdef, dims, params):
    try:
        return opdef.dim(*dims, *params)
    except (FormulaError, ValueError, TypeError, ZeroDivisionError):
        return None


@cache
def _feasible(name: str, d: int, cap: int) -> tuple[tuple[int, ...], ...]:
    """Argument dimensions for which op ``name`` can produce dimension ``d`` (some parameters)."""
    opdef = OPS[name]
    found = []
    for dims in _dim_candidates(opdef.arity, d, cap):
        if any(_result_dim(opdef, dims, p) == d for p in _param_draws(opdef, dims, 12345, 24)):
            found.append(dims)
    return tuple(found)


def _interval_of(values) -> tuple[float, float] | None:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return None
    lo, hi = float(values.min()), float(values.max())
    pad = 0.1 * (hi - lo) + 1e-3 * max(1.0, abs(lo), abs(hi))
    return (lo - pad, hi + pad)


def probe(opdef, params, intervals, dims, seed: int) -> tuple[float, float] | None:
    """Estimated value interval of ``opdef(*args)`` for arguments in ``intervals`` (None: not finite)."""
    rng = np.random.default_rng(seed)
    n = 40
    args = []
    for k, ((lo, hi), d) in enumerate(zip(intervals, dims)):
        a = rng.uniform(lo, hi, (n, d))
        a[0], a[1] = lo, hi
        a[2] = lo if k % 2 else hi
        a[3] = hi if k % 2 else lo
        args.append(a)
    try:
        with np.errstate(all="ignore"):
            out = opdef.ref(_NP, *args, *params)
    except Exception:
        return None
    return _interval_of(out)


def _mag(iv) -> float:
    return max(abs(iv[0]), abs(iv[1]))


class TreeBuilder:
    """Draws one formula tree (several formulas may share its variables)."""

    def __init__(
        self,
        draw,
        *,
        max_depth=4,
        max_ops=9,
        cap=16,
        leaf_dims=None,
        ops=None,
        max_vars=5,
        consts=True,
        cats=(CAT_I, CAT_J, CAT_I, CAT_J, CAT_P),
    ):
        self.draw = draw
        self.max_depth = max_depth
        self.max_ops = max_ops
        self.cap = cap
        self.ops = [o.name for o in (ops if ops is not None else public_ops())]
        self.max_vars = max_vars
        self.consts = consts
        self.cats = cats
        self.vars: list[Node] = []
        self.n_ops = 0

    # -- leaves ---------------------------------------------------------------
    def new_var(self, dim: int, cat: int | None = None) -> Node:
        if cat is None:
            cat = self.draw(st.sampled_from(self.cats), label="variable category")
        v = Var(len(self.vars), dim, cat)
        self.vars.append(v)
        return v

    def leaf(self, dim: int):
        kind = self.draw(st.integers(0, 11), label="leaf kind")
        if kind == 11 and self.consts:
            value = self.draw(st.sampled_from(CONSTANTS), label="constant")
            return Const(value, dim), (float(value), float(value))
        same = [v for v in self.vars if v.dim == dim]
        if same and (kind < 6 or len(self.vars) >= self.max_vars):
            v = self.draw(st.sampled_from(same), label="reused variable")
        else:
            v = self.new_var(dim)
        return v, (-LEAF, LEAF)

    # -- wrappers -------------------------------------------------------------
    def squash(self, node: Node, iv):
        if _mag(iv) <= 2.0:
            return node, iv
        if self.draw(st.booleans(), label="squash with Sin (else Atan)"):
            return A.node("Sin", node), (-1.0, 1.0)
        return A.node("Atan", node), (-1.5708, 1.5708)

    def adapt(self, node: Node, iv, domain: str):
        """``node`` turned into a formula whose values lie in ``domain``."""
        if domain == "positive":
            if iv[0] >= 0.1 and iv[1] <= NODE_LIMIT:
                return node, iv
            how = self.draw(st.integers(0, 2), label="positive wrapper")
            if how == 0:
                return A.node("Exp", A.node("Sin", node)), (0.36, 2.72)
            node, iv = self.squash(node, iv)
            if how == 1:
                return A.add(A.node("Abs", node), Const(Fraction(1, 2), 1)), (0.5, 0.5 + _mag(iv))
            return A.add(A.square(A.node("Atan", node)), Const(Fraction(1, 4), 1)), (0.25, 2.72)
        if domain == "unit":
            if _mag(iv) <= 0.95:
                return node, iv
            if self.draw(st.booleans(), label="unit wrapper Sin (else Atan)"):
                return A.mul(Const(Fraction(9, 10), 1), A.node("Sin", node)), (-0.9, 0.9)
            return A.mul(Const(Fraction(3, 5), 1), A.node("Atan", node)), (-0.95, 0.95)
        if domain == "nonzero":
            if (iv[0] >= 0.2 or iv[1] <= -0.2) and _mag(iv) <= NODE_LIMIT:
                return node, iv
            how = self.draw(st.integers(0, 2), label="nonzero wrapper")
            if how == 0:
                return A.node("Exp", A.node("Sin", node)), (0.36, 2.72)
            node, iv = self.squash(node, iv)
            pos = A.add(A.node("Abs", node), Const(Fraction(1, 2), 1))
            hi = 0.5 + _mag(iv)
            if how == 1:
                return pos, (0.5, hi)
            return A.neg(pos), (-hi, -0.5)
        return node, iv  # "real" (and unknown domains)

    # -- trees ----------------------------------------------------------------
    def tree(self, dim: int, depth: int = 0):
        """A random formula of dimension ``dim`` and its estimated value interval."""
        at_top = depth == 0
        if depth >= self.max_depth or self.n_ops >= self.max_ops:
            return self.leaf(dim)
        if not at_top and self.draw(st.integers(0, 9), label="stop here (leaf)") < 1 + depth:
            return self.leaf(dim)
        choices = [name for name in self.ops if _feasible(name, dim, self.cap)]
        if not choices:
            return self.leaf(dim)
        name = self.draw(st.sampled_from(choices), label=f"op (dim {dim})")
        opdef = OPS[name]
        dims = self.draw(st.sampled_from(_feasible(name, dim, self.cap)), label=f"{name} argument dims")
        seed = self.draw(st.integers(0, 2**31 - 1), label=f"{name} parameter seed")
        params = next(
            (p for p in _param_draws(opdef, dims, seed) if _result_dim(opdef, dims, p) == dim), None
        )
        if params is None:
            return self.leaf(dim)
        self.n_ops += 1
        raw = [self.tree(d, depth + 1) for d in dims]
        domains = tuple(opdef.domain) + ("real",) * (opdef.arity - len(opdef.domain))
        for attempt in range(2):
            args = [self.adapt(n, iv, dom) for (n, iv), dom in zip(raw, domains)]
            iv = probe(opdef, params, [a[1] for a in args], dims, seed)
            if iv is not None and _mag(iv) <= NODE_LIMIT:
                break
            if attempt == 0:
                raw = [self.squash(n, v) for n, v in raw]
        else:
            return self.leaf(dim)
        try:
            node = A.node(name, *[a[0] for a in args], params=params)
        except FormulaError:
            return self.leaf(dim)
        if node.dim != dim:  # pragma: no cover - a smart constructor changed the dimension
            return self.leaf(dim)
        return node, iv


def _ensure_ij(builder: TreeBuilder, formula: Node) -> Node:
    """Make the formula depend on an i- and a j-variable (adds ``Sin(v) / 2`` terms if needed)."""
    present = {v.cat for v in variables(formula)}
    for cat in (CAT_I, CAT_J):
        if cat in present:
            continue
        pool = [v for v in builder.vars if v.cat == cat]
        v = (
            pool[0]
            if pool
            else builder.new_var(builder.draw(st.sampled_from([1, 2]), label="extra var dim"), cat)
        )
        term = A.mul(Const(Fraction(1, 2), 1), A.node("Sin", v))
        if term.dim != 1 and term.dim != formula.dim:
            term = A.vsum(term)
        formula = A.add(formula, term)
    return formula


def renumber(formulas) -> tuple[tuple[Node, ...], tuple[Node, ...]]:
    """Formulas whose variables are numbered 0..n-1 (in index order), and those variables."""
    old = variables(*formulas)
    mapping = {v: Var(k, v.dim, v.cat) for k, v in enumerate(old)}
    new = tuple(substitute(f, mapping) for f in formulas)
    return new, tuple(mapping[v] for v in old)


@st.composite
def formulas(
    draw,
    reduction: str,
    *,
    max_depth: int = 4,
    max_dim: int = 8,
    max_ops: int = 9,
    out_dims=None,
    weight_dims=(1, 2, 3),
    ops=None,
    large_dim: int | None = None,
    consts: bool = True,
    weight_ops=None,
):
    """``(formulas, variables)`` for ``reduction`` (two formulas for weighted reductions).

    With ``large_dim``, the variables have that dimension (64, 200...): trees are
    drawn with dimension ``large_dim`` or 1, to reach chunked code paths.
    """
    red = REDUCTIONS[reduction]
    cap = max(16, large_dim or 0)
    builder = TreeBuilder(draw, max_depth=max_depth, max_ops=max_ops, cap=cap, ops=ops, consts=consts)
    if red.scalar_formula:
        dim = 1
    elif large_dim:
        dim = draw(st.sampled_from([1, large_dim]), label="formula dimension")
    else:
        choices = out_dims or [d for d in (1, 2, 3, 4, 5, 8) if d <= max_dim]
        dim = draw(st.sampled_from(choices), label="formula dimension")
    # an i- and a j-variable to start with (leaves reuse variables of the right dimension)
    for cat in (CAT_I, CAT_J):
        if large_dim:
            d = large_dim
        else:
            d = draw(st.sampled_from(sorted({dim, 1, 2, 3})), label="first variables' dims")
        builder.new_var(d, cat)
    f, _ = builder.tree(dim)
    f = _ensure_ij(builder, f)
    forms = [f]
    if red.n_formulas == 2:
        dg = draw(st.sampled_from(list(weight_dims)), label="weight dimension")
        depth_g = max(1, max_depth - 2)
        builder.max_depth = depth_g
        builder.n_ops = max(0, builder.max_ops - 4)
        if weight_ops is not None:
            builder.ops = [o.name for o in weight_ops]
        g, giv = builder.tree(dg)
        if reduction == "LogSumExpWeight":  # the weights must be positive
            g, _ = builder.adapt(g, giv, "positive")
        forms.append(g)
    return renumber(forms)


# ---------------------------------------------------------------------------
# sizes, batches, cases
# ---------------------------------------------------------------------------


def sizes(tier: str = "fast", *, max_size: int | None = None):
    """M or N: a boundary size (up to a few thousand, capped by ``max_size``) half of the time,
    else any size up to 300 (fast) / 3000 (full)."""
    special = SPECIAL_SIZES_FULL if tier == "full" else SPECIAL_SIZES_FAST
    plain_top = 3000 if tier == "full" else 300
    if max_size:
        plain_top = min(plain_top, max_size)
        special = [s for s in special if s <= max_size]
    return st.one_of(st.sampled_from(special), st.integers(1, plain_top))


def k_values(n_red: int, k_max: int = K_MAX):
    """K for a reduction over ``n_red`` elements: 1, 2, n_red, n_red - 1 and the powers of two +-1
    up to ``k_max`` half of the time, else any K in [1, min(k_max, n_red)]."""
    top = max(1, min(k_max, n_red))
    edges = {1, 2, n_red, n_red - 1} | {b + d for b in (8, 16, 32, 64) for d in (-1, 0, 1)}
    edges = sorted(k for k in edges if 1 <= k <= n_red and (k <= top or k >= n_red - 1))
    return st.one_of(st.sampled_from(edges), st.integers(1, top))


@st.composite
def batch_layouts(draw, variables_, *, allow: bool = True, max_batch_dims: int = 3):
    """``(batch_shape, per-variable batch shapes)``: each variable's batch dims broadcast to the batch."""
    if not allow or not draw(st.integers(0, 2), label="batched?"):
        return (), tuple(() for _ in variables_)
    nb = draw(st.integers(1, max_batch_dims), label="number of batch dims")
    full = tuple(draw(st.sampled_from([2, 3, 1, 2, 5, 4]), label="batch size") for _ in range(nb))
    per = []
    for _ in variables_:
        drop = (
            draw(st.integers(0, nb), label="leading batch dims omitted")
            if draw(st.booleans(), label="omit leading batch dims?")
            else 0
        )
        dims = tuple(1 if draw(st.booleans(), label="broadcast this batch dim?") else n for n in full[drop:])
        per.append(dims)
    # the batch shape the front end sees: the broadcast of every variable's batch shape
    width = max(len(b) for b in per) if per else 0
    actual = tuple(
        max([1] + [b[len(b) - width + k] for b in per if len(b) - width + k >= 0]) for k in range(width)
    )
    return actual, tuple(per)


def _widest(forms) -> int:
    from polykeops.formula.nodes import walk

    return max([n.dim for f in forms for n in walk(f)] + [1])


#: dtypes stored in 16 bits: shallower formulas and smaller sizes (their sums round early)
LOW_PRECISION = ("float16", "bfloat16")


def round_to_dtype(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` (to nearest even), as float64 (NumPy has no bfloat16: torch rounds)."""
    if dtype == "bfloat16":
        import torch

        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(torch.bfloat16).double().numpy()
    return a.astype(dtype).astype(np.float64)


@st.composite
def cases(
    draw,
    reduction: str,
    axis: int,
    dtype: str,
    *,
    tier: str = "fast",
    batch: bool = True,
    array_kinds=("torch",),
    sum_schemes=("block_sum",),
    max_depth: int | None = None,
    large_dim: int | None = None,
    ops=None,
    forms=None,
    data: str = "normal",
    max_size: int | None = None,
    k_max: int = K_MAX,
    consts: bool = True,
    int_range=(-3, 3),
    data_kinds=None,
    specials: bool = False,
):
    """A full :class:`Case` for ``reduction`` along ``axis`` in ``dtype``."""
    if forms is None:
        if max_depth is None:
            max_depth = 2 if dtype in LOW_PRECISION else 4
        forms, vars_ = draw(
            formulas(reduction, max_depth=max_depth, large_dim=large_dim, ops=ops, consts=consts),
            label="formulas",
        )
    elif isinstance(forms, st.SearchStrategy):
        forms, vars_ = draw(forms, label="formulas")
    else:
        forms, vars_ = forms
    red = REDUCTIONS[reduction]
    scheme = "block_sum"
    if red.is_sum_like and len(sum_schemes) > 1:
        scheme = draw(st.sampled_from(sorted(sum_schemes)), label="sum_scheme")
    top = max_size or (1000 if (dtype in LOW_PRECISION and tier == "full") else None)
    M = draw(sizes(tier, max_size=top), label="M")
    N = draw(sizes(tier, max_size=top), label="N")
    bshape, per = draw(batch_layouts(vars_, allow=batch), label="batch layout")
    width = _widest(forms)
    budget = CELL_BUDGET[tier]
    nbatch = int(np.prod(bshape)) if bshape else 1
    while M * N * width * nbatch > budget and max(M, N) > 1:
        # the dimension that is not reduced shrinks first, then the reduced one
        if (axis == 1 and M > 1) or (axis == 0 and N == 1):
            M = max(1, M // 2 + (M % 2))
        else:
            N = max(1, N // 2 + (N % 2))
    k = None
    if red.uses_k:
        n_red = N if axis == 1 else M
        k = draw(k_values(n_red, k_max), label="K")
    spec = ReductionSpec(
        reduction=reduction, formulas=forms, variables=vars_, axis=axis, k=k, dtype=dtype, sum_scheme=scheme
    )
    shapes = _shapes(vars_, per, M, N)
    if dtype == "bfloat16":  # NumPy has no bfloat16
        array_kinds = tuple(k for k in array_kinds if k != "numpy") or ("torch",)
    kind = (
        draw(st.sampled_from(list(array_kinds)), label="array kind")
        if len(array_kinds) > 1
        else array_kinds[0]
    )
    seed = draw(st.integers(0, 2**32 - 1), label="data seed")
    if data_kinds and data == "normal":
        data = draw(st.sampled_from(("normal",) + tuple(data_kinds)), label="data distribution")
    case = Case(
        spec=spec,
        shapes=shapes,
        M=M,
        N=N,
        batch=bshape,
        seed=seed,
        data=data,
        array_kind=kind,
        int_range=tuple(int_range),
    )
    if specials and draw(st.integers(0, 2), label="special values? (0: yes)") == 0:
        case = replace(case, specials=draw(finite_specials(case), label="special values"))
    return case


def draw_case(source, caps, reduction: str, axis: int, dtype: str, *, tier: str, **kwargs) -> Case:
    """A :func:`cases` draw (labelled ``case``) from a test's ``st.data()`` object ``source``, at the
    session's ``tier``, with batch dimensions if the capabilities ``caps`` claim them."""
    return source.draw(cases(reduction, axis, dtype, tier=tier, batch=caps.batch, **kwargs), label="case")


def case_from(
    spec: ReductionSpec, M: int, N: int, *, seed: int = 0, batch=(), per_var_batch=None, **kwargs
) -> Case:
    """A :class:`Case` for a hand-written spec (deterministic tests)."""
    per = [
        tuple(per_var_batch[pos]) if per_var_batch is not None else tuple(batch)
        for pos in range(len(spec.variables))
    ]
    shapes = _shapes(spec.variables, per, M, N)
    return Case(spec=spec, shapes=shapes, M=M, N=N, batch=tuple(batch), seed=seed, **kwargs)


def _shapes(variables_, per_var_batch, M: int, N: int) -> tuple[tuple[int, ...], ...]:
    """The argument shapes: each variable's batch shape, then (M, dim), (N, dim) or (dim,)."""
    rows = {CAT_I: (M,), CAT_J: (N,)}
    return tuple(b + rows.get(v.cat, ()) + (v.dim,) for v, b in zip(variables_, per_var_batch))


# ---------------------------------------------------------------------------
# special values at drawn positions
# ---------------------------------------------------------------------------

#: the tile sizes whose boundaries special values are put next to (any plausible tiling)
TILE_EDGES = (8, 16, 32, 64, 128, 256, 512, 1024)
#: finite special values of every dtype: zeros, rounding ties, tiny, subnormal (see SEMANTICS.md)
FINITE_SPECIALS = {
    "float16": (0.0, -0.0, 0.5, -0.5, 1.5, -2.5, 2.0**-14, 2.0**-20, -(2.0**-24)),
    "bfloat16": (0.0, -0.0, 0.5, -0.5, 1.5, -2.5, 1e-30, 2.0**-130, -(2.0**-133)),
    "float32": (0.0, -0.0, 0.5, -0.5, 1.5, -2.5, 1e-30, 1e-40, -1.4e-45),
    "float64": (0.0, -0.0, 0.5, -0.5, 1.5, -2.5, 1e-300, 1e-310, -5e-324),
}
#: IEEE special values (placed by the tests of NaN / infinities)
NONFINITE = (float("nan"), float("inf"), float("-inf"))


def positions(n: int):
    """A row position in ``range(n)``: the first, the last, next to a tile boundary, the middle,
    anywhere (so that "the interesting element" is in the first, last and a middle tile alike)."""
    edges = {0, n - 1, n // 2} | {t + d for t in TILE_EDGES for d in (-1, 0, 1)}
    edges = sorted(p for p in edges if 0 <= p < n)
    return st.one_of(st.sampled_from(edges), st.integers(0, n - 1))


@st.composite
def special_positions(draw, case, p: int):
    """A flat index into argument ``p`` of ``case``: its row drawn by :func:`positions`."""
    shape = case.shapes[p]
    v = case.spec.variables[p]
    if v.cat in (CAT_I, CAT_J) and len(shape) >= 2:
        row = draw(positions(shape[-2]), label="row of the special value")
        lead = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        b = draw(st.integers(0, lead - 1), label="batch of the special value")
        c = draw(st.integers(0, shape[-1] - 1), label="component of the special value")
        return (b * shape[-2] + row) * shape[-1] + c
    return draw(st.integers(0, int(np.prod(shape)) - 1), label="position of the special value")


@st.composite
def finite_specials(draw, case, values=None, max_count: int = 4):
    """``Case.specials``: 1 to ``max_count`` finite special values (zeros, halves, tiny and subnormal
    numbers, or a copy of another entry of the same argument: an exact tie) at drawn positions."""
    values = FINITE_SPECIALS[case.dtype] if values is None else values
    arrays = None
    out = []
    for _ in range(draw(st.integers(1, max_count), label="number of special values")):
        p = draw(st.integers(0, len(case.shapes) - 1), label="argument of the special value")
        idx = draw(special_positions(case, p), label="special position")
        if draw(st.integers(0, 3), label="copy of another entry (a tie)? (0: yes)") == 0:
            if arrays is None:
                arrays = case.arrays64()
            src = draw(special_positions(case, p), label="copied position")
            value = float(arrays[p].flat[src])
        else:
            value = draw(st.sampled_from(values), label="special value")
        out.append((p, int(idx), value))
    return tuple(out)


# ---------------------------------------------------------------------------
# block-sparse ranges
# ---------------------------------------------------------------------------

#: most clusters drawn along one axis (keeps the keep-mask and the snippets small)
MAX_CLUSTERS = 9


@st.composite
def _clusters(draw, n: int, what: str):
    """Contiguous clusters ``[(start, end)]`` (sorted) of ``range(n)``: maybe some rows in none of
    them, maybe an empty cluster ``(p, p)``.

    The simplest draws (what hypothesis tries first and shrinks towards) cover every row.
    """
    count = draw(st.integers(1, min(n, MAX_CLUSTERS)), label=f"number of {what}-clusters")
    cuts = []
    if count > 1:
        cuts = draw(
            st.lists(st.integers(1, n - 1), min_size=count - 1, max_size=count - 1, unique=True),
            label=f"{what}-cluster boundaries",
        )
    bounds = [0] + sorted(cuts) + [n]
    clusters = list(zip(bounds[:-1], bounds[1:]))
    if draw(st.booleans(), label=f"leave {what}-clusters out?"):
        left_out = draw(
            st.lists(st.sampled_from([False, False, True]), min_size=count, max_size=count),
            label=f"{what}-clusters left out (uncovered)",
        )
        clusters = [c for c, out in zip(clusters, left_out) if not out]
    if draw(st.integers(0, 3), label=f"an empty {what}-cluster? (3: yes)") == 3:
        p = draw(st.integers(0, n), label=f"position of the empty {what}-cluster")
        clusters = sorted(clusters + [(p, p)])
    return clusters


KEEP_PATTERNS = ("random", "random", "random", "all", "single", "band", "none")


@st.composite
def _keep_mask(draw, ni: int, nj: int):
    """A boolean matrix of kept (i-cluster, j-cluster) pairs, as a list of lists."""
    if ni == 0 or nj == 0:
        return [[False] * nj for _ in range(ni)]
    pattern = draw(st.sampled_from(KEEP_PATTERNS), label="keep pattern")
    if pattern == "all":
        return [[True] * nj for _ in range(ni)]
    if pattern == "none":
        return [[False] * nj for _ in range(ni)]
    if pattern == "single":
        k = draw(st.integers(0, ni - 1), label="kept block row")
        l_ = draw(st.integers(0, nj - 1), label="kept block column")
        return [[(a, b) == (k, l_) for b in range(nj)] for a in range(ni)]
    if pattern == "band":
        width = draw(st.integers(0, 2), label="band half-width")
        shift = draw(st.integers(-1, 1), label="band shift")
        return [[abs(a - b + shift) <= width for b in range(nj)] for a in range(ni)]
    bits = draw(
        st.lists(st.sampled_from([True, True, False]), min_size=ni * nj, max_size=ni * nj),
        label="kept blocks",
    )
    keep = [bits[a * nj : (a + 1) * nj] for a in range(ni)]
    cleared = draw(
        st.lists(st.integers(0, 4), min_size=ni, max_size=ni), label="i-clusters that keep nothing (4)"
    )
    return [[False] * nj if c == 4 else row for row, c in zip(keep, cleared)]


def _half(rows, cols, keep, order):
    """``(ranges, slices, redranges)`` of one orientation: clusters ``rows`` listed in ``order``,
    each reduced over its kept clusters of ``cols`` (in increasing position)."""
    ranges, slices, red = [], [], []
    for a in order:
        ranges.append(rows[a])
        red += sorted(cols[b] for b in range(len(cols)) if keep[a][b])
        slices.append(len(red))
    return ranges, slices, red


@st.composite
def _structure(draw, M: int, N: int):
    """One block-sparse structure: the 6 lists of one batch element."""
    ci = draw(_clusters(M, "i"), label="i-clusters")
    cj = draw(_clusters(N, "j"), label="j-clusters")
    keep = draw(_keep_mask(len(ci), len(cj)), label="keep mask")
    # clusters listed in any order (the intervals each one reduces over stay in increasing order)
    order_i, order_j = list(range(len(ci))), list(range(len(cj)))
    if draw(st.integers(0, 3), label="clusters listed out of order?") == 0:
        order_i = draw(st.permutations(order_i), label="order of the i-clusters")
        order_j = draw(st.permutations(order_j), label="order of the j-clusters")
    keep_t = [[keep[a][b] for a in range(len(ci))] for b in range(len(cj))]
    return _half(ci, cj, keep, order_i) + _half(cj, ci, keep_t, order_j)


def _pad(lists, pairs: bool, fill_last: bool):
    """Lists of one array across batch elements padded to a common length (empty intervals
    ``(0, 0)``; slices repeat their last value: padded clusters reduce over nothing)."""
    width = max(len(x) for x in lists)
    out = []
    for x in lists:
        extra = width - len(x)
        if pairs:
            out.append(list(x) + [(0, 0)] * extra)
        else:
            out.append(list(x) + [x[-1] if (fill_last and x) else 0] * extra)
    return out, width


@st.composite
def block_sparse(draw, M: int, N: int, batch=(), *, per_batch: bool = True):
    """A random :class:`BlockSparse` for an ``M x N`` reduction (rows i, reduced over j).

    With a non-empty ``batch`` and ``per_batch``, the ranges may get leading batch
    dimensions (each 1 or the batch size): one structure per batch element, the
    lists padded with empty clusters and intervals to a common length.
    """
    rb = ()
    if batch and per_batch and draw(st.booleans(), label="per-batch ranges?"):
        rb = tuple(draw(st.sampled_from([1, n]), label="ranges batch size") for n in batch)
    elements = [
        draw(_structure(M, N), label="block-sparse structure")
        for _ in np.ndindex(*rb)
    ]
    return _assemble(elements, rb)


def blocks_from(clusters_i, clusters_j, keep, batch=()) -> BlockSparse:
    """A :class:`BlockSparse` from explicit clusters and keep matrices (deterministic tests).

    Without ``batch``: ``clusters_i``, ``clusters_j`` lists of ``(start, end)``, ``keep`` a
    list of lists of booleans.  With ``batch`` (the ranges' batch shape): one of each per
    batch element, in ``numpy.ndindex`` order.
    """
    if not batch:
        clusters_i, clusters_j, keep = [clusters_i], [clusters_j], [keep]
    elements = []
    for ci, cj, kp in zip(clusters_i, clusters_j, keep):
        kt = [[kp[a][b] for a in range(len(ci))] for b in range(len(cj))]
        elements.append(_half(ci, cj, kp, range(len(ci))) + _half(cj, ci, kt, range(len(cj))))
    return _assemble(elements, tuple(batch))


def _assemble(elements, rb) -> BlockSparse:
    """The :class:`BlockSparse` of one 6-list structure per batch element (``rb``: ranges batch shape)."""
    values, shapes = [], []
    for pos in range(6):
        pairs = pos not in (1, 4)
        padded, width = _pad([e[pos] for e in elements], pairs, fill_last=True)
        flat = tuple(int(v) for x in padded for item in x for v in (item if pairs else (item,)))
        values.append(flat)
        shapes.append(rb + ((width, 2) if pairs else (width,)))
    return BlockSparse(tuple(values), tuple(shapes))
