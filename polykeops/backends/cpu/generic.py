"""The generic engine: any formula, no compilation at call time.

:func:`compile_program` turns a canonical spec into the op program that the C
interpreter of ``include/pk_generic_impl.h`` runs (see ``include/pk_generic.h``
for the format): one slot per distinct node, instructions grouped by phase
(uniform, row, tile, lane) so that sub-formulas depending on i only or on j
only are computed once per row block or once per tile and shared (phases of
:mod:`polykeops.backends.codegen.plan`); inner products and squared distances of dimension
>= :data:`MIN_DIM` between a row operand and a column operand (found by
:func:`polykeops.formula.inner_products.find_inner_products`) are *blocks*, computed for all the
rows of a work item x the columns of a tile by a register-blocked micro-kernel
(``include/pk_generic_ipblock.h``) before the lane phase; the reduction is given by its family and
state layout (:mod:`polykeops.formula.reductions`).  The
interpreter is C (``include/pk_generic_impl.h``) in the Cython extensions built by
``setup.py``: ``_generic_avx512``, ``_generic_avx2`` or ``_generic`` (portable), the first
one this CPU runs (``POLYKEOPS_GENERIC_ISA=avx512|avx2|baseline`` picks one); their work
items run in the shared Cython driver (``_driver.pyx``), as those of specialised kernels.
"""

from __future__ import annotations

import ctypes
import importlib
import threading
from dataclasses import dataclass

import numpy as np

from ... import config
from ...formula import inner_products
from ...formula.inner_products import COLUMNS, SQDIST, InnerProduct, find_inner_products
from ...formula.nodes import CAT_I, CAT_J, CAT_P, Node, walk
from ...formula.reductions import ACCUMULATOR, FAMILIES, VALUE
from ..codegen import generic_ops, plan
from ..codegen.states import layout
from ..codegen.states import state_words as _state_words
from .call import PreparedCall
from .omp import driver

# slot kinds (pk_generic.h)
S_CONST, S_PARAM, S_IVAR, S_JVAR, S_UNIFORM, S_ROW, S_TILE, S_LANE, S_BLOCK = range(9)
#: slot kind of a computed node, by phase
PHASE_SLOTS = {plan.UNIFORM: S_UNIFORM, plan.ROW: S_ROW, plan.TILE: S_TILE, plan.LANE: S_LANE}
#: reduction family -> its code in the C program (pk_generic.h's PKF_* follow the order of FAMILIES)
FAMILY_CODES = {family: code for code, family in enumerate(FAMILIES)}

#: op name -> C op code (pk_generic.h), from the C renderer's rules; checked against the extension
OPCODES = generic_ops.OPCODES
SUPPORTED_OPS = frozenset(OPCODES) - {"Copy", "SqDist"}

INSTR_DTYPE = np.dtype(
    [("op", "<i4"), ("dim", "<i4"), ("out", "<i4"), ("nargs", "<i4"), ("arg", "<i4", (3,)),
     ("ip0", "<i4"), ("ip1", "<i4"), ("pad", "<i4"), ("dp", "<f8")]
)
SLOT_DTYPE = np.dtype([("kind", "<i4"), ("dim", "<i4"), ("index", "<i4"), ("pad", "<i4")])
BLOCK_DTYPE = np.dtype(
    [("kind", "<i4"), ("out", "<i4"), ("x", "<i4"), ("y", "<i4"), ("dim", "<i4"), ("count", "<i4"),
     ("xc", "<i4"), ("xk", "<i4"), ("yc", "<i4"), ("yk", "<i4"), ("scale", "<f8")]
)

#: smallest dimension of the inner products computed by blocks: the formula layer's threshold,
#: measured on this engine and the specialised kernels alike (below, the pair-by-pair code wins)
MIN_DIM = inner_products.MIN_DIM


class PkProgram(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in (
        "nslots", "ninstr", "n_uniform", "n_row", "n_tile", "n_lane", "family", "kind", "log", "kahan",
        "want_value", "want_index", "K", "fslot", "gslot", "fdim", "gdim", "BI", "TJ", "nvars",
        "dot_adim", "dot_bdim", "nacc", "nval")] + [
        ("slots", ctypes.c_void_p), ("code", ctypes.c_void_p), ("consts", ctypes.c_void_p),
        ("nblocks", ctypes.c_int32), ("pad2", ctypes.c_int32), ("blocks", ctypes.c_void_p)]


C_SIZES = {"float32": 4, "float64": 8}


@dataclass
class Program:
    """A compiled op program (arrays kept alive with the ctypes struct that points into them)."""

    struct: PkProgram
    slots: np.ndarray
    code: np.ndarray
    consts: np.ndarray
    blocks: np.ndarray
    t_double: int
    acc_double: int


#: the most scratch memory the blocks of products of a program take, per thread (while one row per
#: work item allows it)
BLOCK_BYTES = 8 << 20


#: rows per work item of a program with blocks, by the largest dimension of its products: the
#: y operand is transposed once per tile for all of them, which counts at large D (kNN K=10,
#: D = 256, 2 threads: 0.40 -> 0.31 s with 256 rows; Gaussian K @ b: 0.19 -> 0.17 s); below
#: D = 128 more rows only push the blocks and the states out of L1 (K @ b, D = 16: -30% at 256)
BLOCK_ROWS = ((256, 256), (128, 128), (0, 64))


def _tile_sizes(spec, lane_dims: int, tile_dims: int, state_words: int,
                block_dims: int = 0, block_dim: int = 0) -> tuple[int, int]:
    """(BI, TJ): rows per work item and columns per tile.  ``block_dims``: the values per pair of
    the program's blocks; ``block_dim``: the largest dimension of their products."""
    size = C_SIZES[spec.dtype]
    rows, states = 64, 64 * 1024  # rows per item, at most so many bytes of their states
    if block_dims:
        rows = next(r for least, r in BLOCK_ROWS if block_dim >= least)
        states = 256 * 1024 if rows > 64 else states
    bi = max(1, min(rows, states // max(8 * state_words, 1)))
    if block_dims:
        # a block slot holds BI rows of a column: [count][BI][TJ]; matvec-like products of many
        # outputs (count) get fewer rows per item, so that the blocks take at most BLOCK_BYTES
        # at the smallest TJ (64)
        bi = max(1, min(bi, BLOCK_BYTES // (block_dims * 64 * size)))
    per_col = (lane_dims + tile_dims + 2 + bi * block_dims) * size
    tj = 128 * 1024 // max(per_col, 1)
    tj = max(64 if block_dims else 32, min(1024, tj // 32 * 32))
    return bi, tj


def block_products(formulas, min_dim: int = MIN_DIM) -> list[InnerProduct]:
    """The inner products of ``formulas`` that the generic engine computes by blocks: every one
    that :func:`~polykeops.formula.inner_products.find_inner_products` finds (scalar products,
    squared distances, matvec-like products; operands that are variables or i-only / j-only
    expressions, which the engine already evaluates once per row / per column)."""
    return find_inner_products(formulas, min_dim=min_dim)


def compile_program(spec) -> Program:
    """The op program of a canonical float32/float64 spec."""
    products = {p.node: p for p in block_products(spec.formulas)}
    operands = [o for p in products.values() for o in (p.x, p.y)]
    phase = plan.phases(tuple(spec.formulas) + tuple(operands))
    blocks: list[tuple] = []
    slots: list[tuple[int, int, int]] = []
    slot_of: dict = {}
    consts: list[float] = []
    phases: dict[int, list] = {S_UNIFORM: [], S_ROW: [], S_TILE: [], S_LANE: []}

    def phase_of(n: Node) -> int:
        return PHASE_SLOTS[phase[n]]

    def new_slot(kind, dim, index=0) -> int:
        slots.append((kind, dim, index))
        return len(slots) - 1

    uses = _use_counts(spec.formulas)

    def sqdist_operands(n: Node):
        """(a, b) when n is Sum(Square(a - b)) with single-use inner nodes (fused into one op)."""
        if n.op != "Sum":
            return None
        sq = n.args[0]
        if uses[sq] != 1 or not (sq.op == "Square" or (sq.op == "Pow" and sq.params == (2,))):
            return None
        sub = sq.args[0]
        if uses[sub] != 1 or sub.op != "Subtract":
            return None
        return sub.args

    def block_slot(p: InnerProduct) -> int:
        xs, ys = slot(p.x), slot(p.y)
        s = new_slot(S_BLOCK, p.count, len(blocks))
        D, q = p.dim, p.count
        # component steps of the count vectors in the matrix operand (rows: vector c is
        # A[c * D + k]; columns: vector c is A[c + k * count]); a vector operand is shared
        mat = (D, 1) if p.layout != COLUMNS else (1, q)
        xc, xk = mat if p.matrix == "x" else (0, 1)
        yc, yk = mat if p.matrix == "y" else (0, 1)
        blocks.append((1 if p.kind == SQDIST else 0, s, xs, ys, D, q, xc, xk, yc, yk, float(p.scale)))
        return s

    def slot(n: Node) -> int:
        if n in slot_of:
            return slot_of[n]
        if n in products:
            s = slot_of[n] = block_slot(products[n])
            return s
        fused = sqdist_operands(n)
        if fused is not None:
            args = [slot(a) for a in fused]
            kind = phase_of(n)
            s = new_slot(kind, n.dim)
            ins = dict(op=OPCODES["SqDist"], dim=1, out=s, nargs=2, arg=(args[0], args[1], 0),
                       ip0=max(a.dim for a in fused))
            phases[kind].append(ins)
            slot_of[n] = s
            return s
        if n.op == "Var":
            kind = {CAT_I: S_IVAR, CAT_J: S_JVAR, CAT_P: S_PARAM}[n.cat]
            s = new_slot(kind, n.dim, n.index)
        elif n.op in ("Const", "Zero"):
            s = new_slot(S_CONST, n.dim, len(consts))
            consts.extend([float(n.value)] * n.dim)
        else:
            args = [slot(a) for a in n.args]
            kind = phase_of(n)
            s = new_slot(kind, n.dim)
            phases[kind].append(_instr(n, s, args))
        slot_of[n] = s
        return s

    # slot() recurses into the arguments of a node without a slot: visiting the nodes children
    # first (iteratively) keeps that recursion one level deep, whatever the depth of the formula;
    # the inner nodes of a fused SqDist are never given slots of their own
    fused_inner = set()
    for f in spec.formulas:
        for n in walk(f):
            if sqdist_operands(n) is not None:
                fused_inner.update((n.args[0], n.args[0].args[0]))
    # the nodes read by the program: a block stands for its operands (the nodes between them and
    # the product are not computed unless something else reads them)
    needed: set = set()
    stack = list(spec.formulas)
    while stack:
        n = stack.pop()
        if n in needed:
            continue
        needed.add(n)
        stack.extend((products[n].x, products[n].y) if n in products else n.args)
    roots_set = set(spec.formulas)  # slotted below (a Sum of a product may need none: dot)
    for f in tuple(spec.formulas) + tuple(operands):
        for n in walk(f):
            if n in needed and n not in fused_inner and n not in roots_set:
                slot(n)

    def in_place(s: int) -> bool:
        """The reduction reads a root slot as [dim][TJ] lanes: a block of one product is such a
        row of lanes (its rows TJ apart), not a block of several."""
        kind, dim, _ = slots[s]
        return kind in (S_LANE, S_TILE, S_JVAR) or (kind == S_BLOCK and dim == 1)

    dot = None
    f0 = spec.formulas[0]
    if (spec.reduction == "Sum" and spec.sum_scheme != "kahan_scheme" and f0.op == "Mult"
            and uses[f0] == 1):
        sa, sb = slot(f0.args[0]), slot(f0.args[1])
        if in_place(sa) and in_place(sb):
            dot = (sa, sb, f0.args[0].dim, f0.args[1].dim)
    roots = []
    for f in ([] if dot else spec.formulas):
        s = slot(f)
        if not in_place(s):
            # the reduction reads [dim][TJ] buffers: copy a constant/row/parameter root into one
            c = new_slot(S_LANE, f.dim)
            phases[S_LANE].append(dict(op=OPCODES["Copy"], dim=f.dim, out=c, nargs=1, arg=(s, 0, 0)))
            s = c
        roots.append(s)

    code_list = phases[S_UNIFORM] + phases[S_ROW] + phases[S_TILE] + phases[S_LANE]
    code = np.zeros(max(1, len(code_list)), dtype=INSTR_DTYPE)
    for q, ins in enumerate(code_list):
        for key, value in ins.items():
            code[q][key] = value
    slot_arr = np.zeros(max(1, len(slots)), dtype=SLOT_DTYPE)
    for q, (kind, dim, index) in enumerate(slots):
        slot_arr[q] = (kind, dim, index, 0)
    const_arr = np.array(consts + [0.0], dtype=np.float64)
    block_arr = np.zeros(max(1, len(blocks)), dtype=BLOCK_DTYPE)
    for q, b in enumerate(blocks):
        block_arr[q] = b

    if dot:
        roots = [dot[0], dot[1]]
    red = spec.red
    family = red.family
    fdim = spec.formulas[0].dim
    gdim = spec.formulas[1].dim if len(spec.formulas) > 1 else 0
    lane_dims = sum(d for (k, d, _) in slots if k == S_LANE)
    tile_dims = sum(d for (k, d, _) in slots if k in (S_TILE, S_JVAR))
    state_words = _state_words(spec, compensated=True)  # the worst case of the sums' schemes
    fields = layout(spec)
    block_dims = sum(d for (k, d, _) in slots if k == S_BLOCK)
    bi, tj = _tile_sizes(spec, lane_dims, tile_dims, state_words, block_dims,
                         max((int(b["dim"]) for b in block_arr[:len(blocks)]), default=0))
    acc = spec.accumulation_dtype
    st = PkProgram(
        nslots=len(slots), ninstr=len(code_list),
        n_uniform=len(phases[S_UNIFORM]), n_row=len(phases[S_ROW]),
        n_tile=len(phases[S_TILE]), n_lane=len(phases[S_LANE]),
        family=FAMILY_CODES[family],
        kind=1 if getattr(red, "selection_kind", "") == "max" else 0,
        log=1 if getattr(red, "log", False) else 0,
        kahan=1 if spec.sum_scheme == "kahan_scheme" else 0,
        want_value=1 if getattr(red, "want_value", False) else 0,
        want_index=1 if getattr(red, "want_index", False) else 0,
        K=spec.k or 0, fslot=roots[0], gslot=roots[1] if len(roots) > 1 else -1,
        fdim=fdim, gdim=gdim, BI=bi, TJ=tj, nvars=len(spec.variables),
        dot_adim=dot[2] if dot else 0, dot_bdim=dot[3] if dot else 0,
        nacc=sum(f.size for f in fields if f.kind == ACCUMULATOR),
        nval=sum(f.size for f in fields if f.kind == VALUE),
        slots=slot_arr.ctypes.data, code=code.ctypes.data, consts=const_arr.ctypes.data,
        nblocks=len(blocks), blocks=block_arr.ctypes.data,
    )
    return Program(st, slot_arr, code, const_arr, block_arr, int(spec.dtype == "float64"),
                   int(acc == "float64"))


def _use_counts(formulas) -> dict:
    """node -> number of references (as an argument of a distinct node, or as a root)."""
    from ...formula.nodes import walk

    uses: dict = {}
    seen = set()
    for f in formulas:
        uses[f] = uses.get(f, 0) + 1
        for n in walk(f):
            if n in seen:
                continue
            seen.add(n)
            for a in n.args:
                uses[a] = uses.get(a, 0) + 1
    return uses


def _instr(n: Node, out: int, args: list[int]) -> dict:
    op = n.op
    ins = dict(op=OPCODES[op], dim=n.dim, out=out, nargs=len(args), arg=tuple(args + [0] * (3 - len(args))))
    p = n.params
    if op == "Round":
        ins["dp"] = 10.0 ** p[0]
    elif op == "Pow":
        ins["ip0"] = p[0]
    elif op == "ClampInt":
        ins["ip0"], ins["ip1"] = p
    elif op in ("Elem",):
        ins["ip0"] = p[0]
    elif op in ("ElemT", "Extract", "ExtractT"):
        ins["ip0"], ins["ip1"] = p
    elif op in ("SumT", "OneHot", "Take"):
        ins["ip0"] = p[0]
    return ins


# ---------------------------------------------------------------------------
# the extension
# ---------------------------------------------------------------------------

_lock = threading.Lock()
_state: dict = {}


#: the generic engine's modules, best first, by instruction set
VARIANTS = {"avx512": "_generic_avx512", "avx2": "_generic_avx2", "baseline": "_generic"}


def variants() -> dict:
    """Instruction set -> module, for the variants that are built and that this CPU runs."""
    out = {}
    if driver() is None:  # (loads the OpenMP runtime first: see .omp)
        return out
    for isa, name in VARIANTS.items():
        try:
            mod = importlib.import_module(f"{__package__}.{name}")
        except ImportError:
            continue
        if mod.cpu_ok():
            out[isa] = mod
    return out


def _check(mod) -> str | None:
    """Why the module ``mod`` does not match this package (None: it does)."""
    bad = [name for name, code in OPCODES.items() if mod.opcode(name.upper()) != code]
    if bad:
        return f"the generic engine extension is out of date (op codes of {bad}); rebuild it"
    if mod.ops_digest() != generic_ops.digest():
        return "the generic engine extension is out of date (op rules changed); rebuild it"
    if mod.abi() // 1000 != INSTR_DTYPE.itemsize * 1000 + ctypes.sizeof(PkProgram):
        return "the generic engine extension is out of date (ABI); rebuild it"
    return None


def _load():
    with _lock:
        if "lib" in _state or "error" in _state:
            return _state.get("lib")
        found = variants()
        want = config.generic_isa()
        if want and want in found:
            found = {want: found[want]}
        if not found:
            _state["error"] = (
                "the generic engine extension is not built; run `pip install -e .` "
                "(or `python setup.py build_ext --inplace`)"
            )
            return None
        mod = next(iter(found.values()))
        why = _check(mod)
        if why:
            _state["error"] = why
            return None
        _state["lib"] = mod
        return mod


def available() -> tuple[bool, str]:
    lib = _load()
    if lib is None:
        return False, _state.get("error", "not built")
    return True, f"generic engine ({lib.isa()})"


class GenericEngine:
    """Runs one spec through the interpreter (same ``run(prepared)`` interface as kernels)."""

    def __init__(self, spec, lib):
        self.spec = spec
        self.lib = lib
        self.program = p = compile_program(spec)
        self.engine = lib.Engine(ctypes.addressof(p.struct), ctypes.sizeof(p.struct), p.t_double,
                                 p.acc_double, p)
        self.block_rows = self.engine.block_rows

    def run(self, prepared: PreparedCall, switch=None) -> None:
        """Reduce ``prepared``; a kernel offered to ``switch`` (a ``_driver.Switch``) during the
        call takes over the remaining work items."""
        self.engine.run(prepared, switch)

    def __repr__(self) -> str:
        return f"<polykeops generic engine for {self.spec}>"


_engines: dict = {}


def engine_for(spec):
    """The generic engine for ``spec`` (None if the extension is missing or an op is unknown to it)."""
    eng = _engines.get(spec)
    if eng is not None:
        return eng
    lib = _load()
    if lib is None:
        return None
    for f in spec.formulas:
        if any(n.op not in SUPPORTED_OPS for n in _nodes(f) if not n.is_leaf):
            return None
    eng = GenericEngine(spec, lib)
    with _lock:
        if len(_engines) > 4096:
            _engines.clear()
        _engines[spec] = eng
    return eng


def _nodes(f):
    from ...formula.nodes import walk

    return walk(f)
