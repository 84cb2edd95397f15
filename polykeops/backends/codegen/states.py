"""Reduction states in C: one renderer per reduction family, for every C-family backend.

The partial state of a reduction is declared as data in
:mod:`polykeops.formula.reductions` (``Reduction.family`` and
``Reduction.state_layout``); this module renders it.  :func:`state_class` picks
the renderer of a spec's family (adding a reduction to an existing family needs
no edit here).  Each renderer knows two forms of the same state:

* the *record* form, used by the CPU kernels: a C struct ``pk_state`` whose
  fields are the layout's fields (arrays), initialised, combined and finalised
  by small functions, and updated one tile of formula values at a time by the
  helpers of ``cpu/include/pk_reduce.h``; the generic engine stores the same
  fields (see :func:`state_words`);
* the *register* form, used by the CUDA kernels: every entry of the layout is a
  scalar C variable ``<prefix>_<field><n>`` (so that a combine can hold two
  states ``A`` and ``B``), updated one value at a time.  A register state covers
  one *output slice*: components ``[c0, c0 + w)`` of the formula
  ``Reduction.component_formula``.  Partial states (the CUDA 2D scheme) are
  stored in a ``double`` workspace for the float fields and a ``long long``
  workspace for the indices.

Dialect differences of the register form (infinity, ``exp``/``log`` spellings)
are attributes of :class:`Dialect`.

The semantics are those of the reference rules: Sum with ``direct_sum``,
``block_sum`` (a fresh accumulator per j tile) or ``kahan_scheme`` (Neumaier),
float16 accumulation emulated by rounding to half after every addition;
max-shifted sums of exponentials whose shift is 0 for an infinite or NaN maximum;
component-wise selections where a NaN wins and ties go to the smallest j; K-min
lists sorted NaN first, then ascending, ties by index (entry ``k * D + d``;
missing entries ``+inf`` with index ``-1``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...formula.reductions import ACCUMULATOR, INDEX, KMIN, LSE, SELECT, SOFTMAX, SUM

SIZEOF = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


@dataclass(frozen=True)
class StateTypes:
    """The C types of one kernel."""

    T: str  # compute type of formula values ("float" or "double")
    ACC: str  # accumulation type of sums ("float" or "double")
    acc_half: bool  # accumulate in float16 (rounding after each addition)
    IDX: str  # index type in registers ("int" or "long long")
    out: tuple[str, ...]  # C element type of each output array


class Dialect:
    """Spellings of the register form (CUDA, NVRTC's math library and the prelude's helpers)."""

    infinity = {"float": "pk_inf_f()", "double": "pk_inf_d()"}
    functions = {"float": {"exp": "expf", "log": "logf"}, "double": {"exp": "exp", "log": "log"}}

    @classmethod
    def inf(cls, ctype: str) -> str:
        return cls.infinity[ctype]

    @classmethod
    def fn(cls, name: str, ctype: str) -> str:
        return cls.functions[ctype][name]


def layout(spec):
    """The state layout of a canonical spec (formula dims, K and Kahan option filled in)."""
    return spec.red.state_layout(tuple(f.dim for f in spec.formulas), spec.k,
                                 compensated=spec.sum_scheme == "kahan_scheme")


def state_words(spec, compensated: bool | None = None) -> int:
    """Entries of a state (any kind), e.g. to size per-row state buffers; ``compensated=True``
    counts the compensation terms of a Kahan sum whatever the spec's scheme (the worst case)."""
    if compensated is None:
        compensated = spec.sum_scheme == "kahan_scheme"
    fields = spec.red.state_layout(tuple(f.dim for f in spec.formulas), spec.k, compensated=compensated)
    return sum(f.size for f in fields)


class State:
    """Base class of the family renderers; see the module docstring."""

    family = ""
    uses_index = False  # whether an update needs the column index j (no gathering of j intervals)

    def __init__(self, spec, ct: StateTypes | None = None, c0: int = 0, w: int | None = None,
                 dialect=Dialect):
        self.spec = spec
        self.red = spec.red
        self.ct = ct
        self.dialect = dialect
        self.fdims = [f.dim for f in spec.formulas]
        self.k = spec.k
        self.kahan = spec.sum_scheme == "kahan_scheme"
        self.layout = layout(spec)
        cf = self.red.component_formula
        self.c0 = c0
        self.w = w if w is not None else (self.fdims[cf] if cf is not None else 1)
        self.out_dims = tuple(o.dim for o in spec.outputs())
        # register form: float and index entries of a (sliced) partial state
        per = {f.name: (f.size // self.fdims[cf] * self.w if f.sliced and cf is not None else f.size)
               for f in self.layout}
        self.nf = sum(per[f.name] for f in self.layout if f.kind != INDEX)
        self.ni = sum(per[f.name] for f in self.layout if f.kind == INDEX)

    @property
    def plain_sum(self) -> bool:
        """True when a state is a plain sum of the formula (per-lane accumulators may feed it)."""
        return False

    # -- record form (CPU kernels) -----------------------------------------
    def record_bytes(self) -> int:
        """Bytes of one record (the accumulation type counts at least 4 bytes)."""
        size = SIZEOF[self.spec.dtype]
        acc = max(SIZEOF[self.spec.accumulation_dtype], 4)
        return sum(f.size * (acc if f.kind == ACCUMULATOR else 8 if f.kind == INDEX else size)
                   for f in self.layout)

    def record_fields(self, T: str, ACC: str) -> list[str]:
        """Declarations of the fields of ``pk_state`` (``T``, ``ACC``: the C types of values and sums)."""
        ctype = {ACCUMULATOR: ACC, INDEX: "int64_t"}
        return [f"{ctype.get(f.kind, T)} {f.name}[{f.size}];" for f in self.layout]

    def record_scratch(self, prev: str) -> tuple[list[str], str]:
        """Scratch areas the record functions need, after ``prev``: ``#define`` lines, new end."""
        return [], prev

    def record_prologue(self) -> list[str]:
        """Lines of ``pk_process`` that set up the scratch areas of the tile reduction."""
        return []

    def tile_buffers(self) -> list[tuple[str, str, int]]:
        """Extra [dim][TJ] buffers of the tile reduction: (name, C type, dim)."""
        return []

    def tile_reduce(self) -> list[str]:
        """Reduce the formula buffers fb (and gb) of one row and one tile into the record ``s``."""
        raise NotImplementedError

    def block_reduce(self, buf: str) -> tuple[list[str], list[str]] | None:
        """Reduce blocks of a scalar formula's values (``buf[j * BIP + r]``: the rows ``i0 + r``
        of a work item, the ``n`` columns ``jt + j`` of a tile) into the records ``st[r]``: the
        lines run once per work item, and once per tile; None when the family reduces rows one
        at a time only.  ``thr`` is a scratch of BIP values."""
        return None

    def record_functions(self) -> list[str]:
        """``pk_state_init``, ``pk_state_combine`` (a covers smaller j than b) and
        ``pk_state_finalize`` (writes the outputs of one row)."""
        L = ["static inline void pk_state_init(pk_state *s)", "{"]
        L += self.record_init()
        L += ["}", "static inline void pk_state_combine(pk_state *a, const pk_state *b, char *scratch)", "{",
              "    (void)scratch;"]
        L += self.record_combine()
        L += ["}", "static inline void pk_state_finalize(const pk_call *c, const pk_state *s, int64_t row)",
              "{"]
        for pos, o in enumerate(self.spec.outputs()):
            ty = "int64_t" if o.kind == "index" else "T"
            L.append(f"    {ty} *o{pos} = ({ty} *)c->outs[{pos}] + row * {o.dim};")
        L += self.record_finalize()
        L.append("}")
        return L

    def record_init(self) -> list[str]:
        raise NotImplementedError

    def record_combine(self) -> list[str]:
        raise NotImplementedError

    def record_finalize(self) -> list[str]:
        raise NotImplementedError

    # -- register form (CUDA kernels) ---------------------------------------
    @classmethod
    def slice_plan(cls, spec) -> tuple[int, int]:
        """(components that may be sliced, registers per component) of a state."""
        red = spec.red
        cf = red.component_formula
        dim = spec.formulas[cf].dim if cf is not None else 1
        fields = layout(spec)
        per = sum(f.size for f in fields if f.sliced) // dim if cf is not None else 1
        return dim, max(per, 1)

    def init(self, p: str) -> list[str]:
        raise NotImplementedError

    def update(self, p: str, fv: list[list[str]], j: str) -> list[str]:
        raise NotImplementedError

    def tile_begin(self, p: str) -> list[str]:
        return []

    def tile_end(self, p: str) -> list[str]:
        return []

    def combine(self, pa: str, pb: str) -> list[str]:
        raise NotImplementedError

    def fields(self, p: str) -> tuple[list[str], list[str]]:
        """Names of the float fields and of the index fields, in storage order."""
        raise NotImplementedError

    def field_types(self) -> list[str]:
        raise NotImplementedError

    def finalize(self, p: str, row: str) -> list[str]:
        raise NotImplementedError

    def store(self, p: str, w: str) -> list[str]:
        fl, ix = self.fields(p)
        lines = [f"wsf[({w}) * {self.nf} + {n}] = (double){f};" for n, f in enumerate(fl)]
        lines += [f"wsi[({w}) * {self.ni} + {n}] = (long long){f};" for n, f in enumerate(ix)]
        return lines

    def load(self, p: str, w: str) -> list[str]:
        fl, ix = self.fields(p)
        types = self.field_types()
        lines = [f"{t} {f} = ({t})wsf[({w}) * {self.nf} + {n}];"
                 for n, (f, t) in enumerate(zip(fl, types))]
        idx = self.ct.IDX
        lines += [f"{idx} {f} = ({idx})wsi[({w}) * {self.ni} + {n}];" for n, f in enumerate(ix)]
        return lines

    def write(self, out: int, row: str, col: int, value: str) -> str:
        return f"pk_st(o{out} + {row} * {self.out_dims[out]}LL + {col}, {value});"

    def round_acc(self, expr: str) -> str:
        return f"pk_round_h({expr})" if self.ct.acc_half else expr


# ---------------------------------------------------------------------------


class SumState(State):
    family = SUM

    def __init__(self, spec, ct=None, c0=0, w=None, dialect=Dialect):
        super().__init__(spec, ct, c0, w, dialect)
        self.scheme = spec.sum_scheme

    @property
    def plain_sum(self):
        return not self.kahan

    @classmethod
    def slice_plan(cls, spec):
        dim, per = super().slice_plan(spec)
        if spec.sum_scheme == "block_sum":
            per += 1  # the accumulator of the current tile
        return dim, per

    # record form
    def tile_reduce(self):
        lines = []
        for d in range(self.fdims[0]):
            if self.kahan:
                lines.append(f"pk_kahan_tile(fb + {d} * TJ, n, &s->s[{d}], &s->c[{d}]);")
            else:
                lines.append(f"s->s[{d}] += pk_sum_tile(fb + {d} * TJ, n);")
        return lines

    def record_init(self):
        D = self.fdims[0]
        L = [f"    for (int d = 0; d < {D}; ++d) s->s[d] = 0;"]
        if self.kahan:
            L.append(f"    for (int d = 0; d < {D}; ++d) s->c[d] = 0;")
        return L

    def record_combine(self):
        D = self.fdims[0]
        if self.kahan:
            return [f"    for (int d = 0; d < {D}; ++d) "
                    "pk_neumaier_add(&a->s[d], &a->c[d], b->s[d], b->c[d]);"]
        return [f"    for (int d = 0; d < {D}; ++d) a->s[d] += b->s[d];"]

    def record_finalize(self):
        D = self.fdims[0]
        if self.kahan:
            return [f"    for (int d = 0; d < {D}; ++d)",
                    "        o0[d] = (T)(isfinite(s->s[d]) ? s->s[d] + s->c[d] : s->s[d]);"]
        return [f"    for (int d = 0; d < {D}; ++d) o0[d] = (T)s->s[d];"]

    # register form
    def field_types(self):
        return [self.ct.ACC] * self.nf

    def fields(self, p):
        fl = [f"{p}_s{d}" for d in range(self.w)]
        if self.kahan:
            fl += [f"{p}_c{d}" for d in range(self.w)]
        return fl, []

    def init(self, p):
        fl, _ = self.fields(p)
        return [f"{self.ct.ACC} {f} = 0;" for f in fl]

    def tile_begin(self, p):
        if self.scheme != "block_sum":
            return []
        return [f"{self.ct.ACC} {p}_t{d} = 0;" for d in range(self.w)]

    def tile_end(self, p):
        if self.scheme != "block_sum":
            return []
        return [f"{p}_s{d} = {self.round_acc(f'{p}_s{d} + {p}_t{d}')};" for d in range(self.w)]

    def update(self, p, fv, j):
        A = self.ct.ACC
        lines = []
        for d, v in enumerate(fv[0]):
            if self.kahan:
                lines.append(self._neumaier(f"{p}_s{d}", f"{p}_c{d}", f"({A}){v}"))
            else:
                tgt = f"{p}_t{d}" if self.scheme == "block_sum" else f"{p}_s{d}"
                lines.append(f"{tgt} = {self.round_acc(f'{tgt} + ({A}){v}')};")
        return lines

    def _neumaier(self, s, c, y, cy=None):
        A = self.ct.ACC
        extra = f" + {cy}" if cy else ""
        lost = f"(pk_abs({s}) >= pk_abs(pk_y) ? ({s} - pk_t) + pk_y : (pk_y - pk_t) + {s})"
        return (f"{{ const {A} pk_y = {y}; const {A} pk_t = {self.round_acc(f'{s} + pk_y')}; "
                f"{c} = {self.round_acc(f'{c}{extra} + {lost}')}; {s} = pk_t; }}")

    def combine(self, pa, pb):
        lines = []
        for d in range(self.w):
            if self.kahan:
                lines.append(self._neumaier(f"{pa}_s{d}", f"{pa}_c{d}", f"{pb}_s{d}", f"{pb}_c{d}"))
            else:
                lines.append(f"{pa}_s{d} = {self.round_acc(f'{pa}_s{d} + {pb}_s{d}')};")
        return lines

    def finalize(self, p, row):
        lines = []
        for d in range(self.w):
            v = f"{p}_s{d} + {p}_c{d}" if self.kahan else f"{p}_s{d}"
            lines.append(self.write(0, row, self.c0 + d, f"({self.ct.ACC})({v})"))
        return lines


# ---------------------------------------------------------------------------


class ShiftExpState(State):
    """The max-shifted sums of exponentials: LogSumExp, Max_SumShiftExp (weighted or not) and
    SumSoftMaxWeight.  The record keeps the sums that share the shift in one array ``s``."""

    family = LSE

    def __init__(self, spec, ct=None, c0=0, w=None, dialect=Dialect):
        super().__init__(spec, ct, c0, w, dialect)
        red = self.red
        self.softmax = red.family == SOFTMAX
        self.weighted = red.component_formula is not None
        self.log = (not self.softmax) and red.log
        # register form: sums s (weighted by the sliced components of G), plus z for the softmax
        self.ns = self.w if self.weighted else 1
        # record form: the rescaled sums, in layout order (the softmax's normaliser first)
        self.nsums = sum(f.size for f in self.layout if f.combine == "add_rescaled")

    # record form
    def tile_buffers(self):
        return [("eb", "ACC", 1)]

    def record_fields(self, T, ACC):
        return [f"{ACC} m;", f"{ACC} s[{self.nsums}];"]

    def tile_reduce(self):
        two = len(self.fdims) > 1
        dg = self.fdims[1] if two else 1
        g = "gb" if two else "0"
        soft = 1 if self.softmax else 0
        return [f"{{ ACC tmp[{dg + 1}];",
                f"  pk_lse_tile(fb, {g}, n, TJ, {dg}, {soft}, &s->m, s->s, eb, tmp); }}"]

    def record_init(self):
        return ["    s->m = -(ACC)INFINITY;",
                "    for (size_t d = 0; d < sizeof(s->s) / sizeof(ACC); ++d) s->s[d] = 0;"]

    def record_combine(self):
        return ["    pk_lse_combine(&a->m, a->s, b->m, b->s, (int)(sizeof(a->s) / sizeof(ACC)));"]

    def record_finalize(self):
        dg = self.fdims[1] if len(self.fdims) > 1 else 1
        if self.softmax:
            return [f"    for (int d = 0; d < {dg}; ++d) o0[d] = (T)(s->s[1 + d] / s->s[0]);"]
        if self.log:
            return ["    const ACC ms = isfinite(s->m) ? s->m : 0;",
                    f"    for (int d = 0; d < {dg}; ++d) o0[d] = (T)(ms + PK_LOGACC(s->s[d]));"]
        return ["    o0[0] = (T)s->m;", f"    for (int d = 0; d < {dg}; ++d) o0[1 + d] = (T)s->s[d];"]

    # register form
    def field_types(self):
        return [self.ct.ACC] * self.nf

    def _sums(self, p):
        s = [f"{p}_s{d}" for d in range(self.ns)]
        if self.softmax:
            s.append(f"{p}_z")  # the softmax normaliser sum_j exp(F - m)
        return s

    def fields(self, p):
        return [f"{p}_m"] + self._sums(p), []

    def init(self, p):
        A = self.ct.ACC
        return [f"{A} {p}_m = -{self.dialect.inf(A)};"] + [f"{A} {s} = 0;" for s in self._sums(p)]

    def _weights(self, fv):
        A = self.ct.ACC
        if not self.weighted:
            return ["1"]
        ws = [f"({A}){g}" for g in fv[1]]
        if self.softmax:
            ws.append("1")
        return ws

    def update(self, p, fv, j):
        A = self.ct.ACC
        E = self.dialect.fn("exp", A)
        INF = self.dialect.inf(A)
        sums = self._sums(p)
        ws = self._weights(fv)
        new_max = " ".join(f"{s} = {s} * pk_c + pk_e * {w};" for s, w in zip(sums, ws))
        add = " ".join(f"{s} += pk_e * {w};" for s, w in zip(sums, ws))
        nan = " ".join(f"{s} = pk_f;" for s in sums)
        return [
            f"{{ const {A} pk_f = ({A}){fv[0][0]};",
            f"  if (pk_f > {p}_m) {{ const {A} pk_fs = pk_safe(pk_f); "
            f"const {A} pk_c = ({p}_m == -{INF}) ? ({A})0 : {E}({p}_m - pk_fs); "
            f"const {A} pk_e = {E}(pk_f - pk_fs); {new_max} {p}_m = pk_f; }}",
            f"  else if (pk_f == pk_f) {{ const {A} pk_e = {E}(pk_f - pk_safe({p}_m)); {add} }}",
            f"  else {{ {p}_m = pk_f; {nan} }} }}",
        ]

    def combine(self, pa, pb):
        A = self.ct.ACC
        E = self.dialect.fn("exp", A)
        INF = self.dialect.inf(A)
        lines = [
            f"{{ const {A} pk_M = pk_maxnan({pa}_m, {pb}_m); const {A} pk_ms = pk_safe(pk_M);",
            f"  const {A} pk_ca = ({pa}_m == -{INF}) ? (pk_M == -{INF} ? ({A})1 : ({A})0) "
            f": {E}(pk_safe({pa}_m) - pk_ms);",
            f"  const {A} pk_cb = ({pb}_m == -{INF}) ? (pk_M == -{INF} ? ({A})1 : ({A})0) "
            f": {E}(pk_safe({pb}_m) - pk_ms);",
        ]
        for sa, sb in zip(self._sums(pa), self._sums(pb)):
            lines.append(f"  {sa} = {sa} * pk_ca + {sb} * pk_cb;")
        lines.append(f"  {pa}_m = pk_M; }}")
        return lines

    def finalize(self, p, row):
        A = self.ct.ACC
        L = self.dialect.fn("log", A)
        lines = []
        if self.softmax:
            for d in range(self.w):
                lines.append(self.write(0, row, self.c0 + d, f"{p}_s{d} / {p}_z"))
        elif self.log:
            for d in range(self.ns):
                lines.append(self.write(0, row, self.c0 + d, f"pk_safe({p}_m) + {L}({p}_s{d})"))
        else:
            lines.append(self.write(0, row, 0, f"{p}_m"))
            for d in range(self.ns):
                lines.append(self.write(0, row, 1 + self.c0 + d, f"{p}_s{d}"))
        return lines


# ---------------------------------------------------------------------------


class _ValueIndexState(State):
    """Selections and K-min lists: value and index entries, one output per wanted kind."""

    uses_index = True

    def __init__(self, spec, ct=None, c0=0, w=None, dialect=Dialect):
        super().__init__(spec, ct, c0, w, dialect)
        red = self.red
        self.kind = red.selection_kind
        self.want_value = red.want_value
        self.want_index = red.want_index

    def _record_entries(self) -> int:
        return self.layout[0].size

    def record_init(self):
        n = self._record_entries()
        init = "(T)INFINITY" if self.kind == "min" else "-(T)INFINITY"
        return [f"    for (int q = 0; q < {n}; ++q) {{ s->v[q] = {init}; s->i[q] = -1; }}"]

    def record_finalize(self):
        n = self._record_entries()
        L, pos = [], 0
        if self.want_value:
            L.append(f"    for (int q = 0; q < {n}; ++q) o{pos}[q] = s->v[q];")
            pos += 1
        if self.want_index:
            L.append(f"    for (int q = 0; q < {n}; ++q) o{pos}[q] = s->i[q];")
        return L

    def field_types(self):
        return [self.ct.T] * self.nf


class SelectState(_ValueIndexState):
    """Min / Max / ArgMin / ArgMax / Min_ArgMin / Max_ArgMax, component-wise."""

    family = SELECT

    # record form
    def tile_reduce(self):
        kind = 0 if self.kind == "min" else 1
        return [f"pk_select_tile(fb + {d} * TJ, n, jt, {kind}, &s->v[{d}], &s->i[{d}]);"
                for d in range(self.fdims[0])]

    def block_reduce(self, buf):
        kind = 0 if self.kind == "min" else 1
        states = "st->v, st->i, sizeof(pk_state), thr"
        return ([f"pk_block_select_thr(BIP, (int)(i1 - i0), {kind}, 0, {states});"],
                [f"pk_select_block({buf}, n, BIP, jt, (int)(i1 - i0), {kind}, {states});"])

    def record_combine(self):
        kind = 0 if self.kind == "min" else 1
        return [f"    for (int d = 0; d < {self.fdims[0]}; ++d)",
                f"        pk_select_combine(&a->v[d], &a->i[d], b->v[d], b->i[d], {kind});"]

    # register form
    def fields(self, p):
        return [f"{p}_v{d}" for d in range(self.w)], [f"{p}_i{d}" for d in range(self.w)]

    def init(self, p):
        T, I = self.ct.T, self.ct.IDX
        inf = self.dialect.inf(T)
        start = inf if self.kind == "min" else f"-{inf}"
        lines = []
        for d in range(self.w):
            lines += [f"{T} {p}_v{d} = {start};", f"{I} {p}_i{d} = -1;"]
        return lines

    def _better(self, a, b):
        return f"{a} < {b}" if self.kind == "min" else f"{a} > {b}"

    def update(self, p, fv, j):
        lines = []
        for d, v in enumerate(fv[0]):
            cur = f"{p}_v{d}"
            cond = f"{p}_i{d} < 0 || {self._better(v, cur)} || ({v} != {v} && {cur} == {cur})"
            lines.append(f"if ({cond}) {{ {cur} = {v}; {p}_i{d} = {j}; }}")
        return lines

    def combine(self, pa, pb):
        lines = []
        for d in range(self.w):
            va, vb, ia, ib = f"{pa}_v{d}", f"{pb}_v{d}", f"{pa}_i{d}", f"{pb}_i{d}"
            cond = f"{ia} < 0 || ({ib} >= 0 && ({self._better(vb, va)} || ({vb} != {vb} && {va} == {va})))"
            lines.append(f"if ({cond}) {{ {va} = {vb}; {ia} = {ib}; }}")
        return lines

    def finalize(self, p, row):
        lines = []
        out = 0
        if self.want_value:
            lines += [self.write(out, row, self.c0 + d, f"{p}_v{d}") for d in range(self.w)]
            out += 1
        if self.want_index:
            lines += [self.write(out, row, self.c0 + d, f"(long long){p}_i{d}") for d in range(self.w)]
        return lines


class KMinState(_ValueIndexState):
    """KMin / ArgKMin / KMin_ArgKMin: K sorted (value, index) pairs per component."""

    family = KMIN

    def __init__(self, spec, ct=None, c0=0, w=None, dialect=Dialect):
        super().__init__(spec, ct, c0, w, dialect)
        self.K = spec.k
        self.D = self.fdims[0]

    # record form
    def record_scratch(self, prev):
        return [f"#define OFF_kt PK_ALIGN64({prev})",
                f"#define END_kt (OFF_kt + (size_t){self.K} * (sizeof(T) + sizeof(int64_t)))"], "END_kt"

    def record_prologue(self):
        return ["    T *kt_v = (T *)(scratch + OFF_kt);",
                f"    int64_t *kt_i = (int64_t *)(kt_v + {self.K});",
                "    (void)kt_v; (void)kt_i;"]

    def tile_reduce(self):
        D = self.D
        return [f"pk_kmin_tile(fb + {d} * TJ, n, jt, {self.K}, {D}, s->v + {d}, s->i + {d});"
                for d in range(D)]

    def block_reduce(self, buf):
        states = "st->v, st->i, sizeof(pk_state), thr"
        return ([f"pk_block_select_thr(BIP, (int)(i1 - i0), 0, {self.K}, {states});"],
                [f"pk_kmin_block({buf}, n, BIP, jt, (int)(i1 - i0), {self.K}, {states});"])

    def record_combine(self):
        return ["    T *tv = (T *)(scratch + OFF_kt);",
                f"    int64_t *ti = (int64_t *)(tv + {self.K});",
                f"    for (int d = 0; d < {self.D}; ++d)",
                f"        pk_kmin_merge(a->v + d, a->i + d, b->v + d, b->i + d, {self.K}, {self.D}, tv, ti);"]

    # register form
    def fields(self, p):
        fl = [f"{p}_v{k}_{d}" for k in range(self.K) for d in range(self.w)]
        ix = [f"{p}_i{k}_{d}" for k in range(self.K) for d in range(self.w)]
        return fl, ix

    def init(self, p):
        T, I = self.ct.T, self.ct.IDX
        lines = []
        for k in range(self.K):
            for d in range(self.w):
                lines += [f"{T} {p}_v{k}_{d} = {self.dialect.inf(T)};", f"{I} {p}_i{k}_{d} = -1;"]
        return lines

    def _insert(self, p, d, v, j) -> list[str]:
        """Insert (v, j) into the sorted list of component d (carry-and-swap, fully unrolled)."""
        T, I = self.ct.T, self.ct.IDX
        lines = [f"{T} pk_cv = {v}; {I} pk_ci = {j};"]
        for k in range(self.K):
            sv, si = f"{p}_v{k}_{d}", f"{p}_i{k}_{d}"
            lines.append(
                f"if (pk_before(pk_cv, pk_ci, {sv}, {si})) {{ const {T} pk_tv = {sv}; "
                f"const {I} pk_ti = {si}; {sv} = pk_cv; {si} = pk_ci; pk_cv = pk_tv; pk_ci = pk_ti; }}"
            )
        return lines

    def update(self, p, fv, j):
        lines = []
        last = self.K - 1
        for d, v in enumerate(fv[0]):
            # fast rejection: most values are not among the K smallest so far
            lines.append(f"if (pk_before({v}, {j}, {p}_v{last}_{d}, {p}_i{last}_{d})) {{")
            lines += ["  " + x for x in self._insert(p, d, v, j)]
            lines.append("}")
        return lines

    def combine(self, pa, pb):
        lines = []
        for d in range(self.w):
            for k in range(self.K):
                lines.append("{")
                lines += ["  " + x for x in self._insert(pa, d, f"{pb}_v{k}_{d}", f"{pb}_i{k}_{d}")]
                lines.append("}")
        return lines

    def finalize(self, p, row):
        lines = []
        out = 0
        cols = [(k, d, k * self.D + self.c0 + d) for k in range(self.K) for d in range(self.w)]
        if self.want_value:
            lines += [self.write(out, row, c, f"{p}_v{k}_{d}") for k, d, c in cols]
            out += 1
        if self.want_index:
            lines += [self.write(out, row, c, f"(long long){p}_i{k}_{d}") for k, d, c in cols]
        return lines


#: family -> renderer (the softmax-weighted sum shares the max-shifted renderer)
STATES: dict[str, type[State]] = {SUM: SumState, LSE: ShiftExpState, SOFTMAX: ShiftExpState,
                                  SELECT: SelectState, KMIN: KMinState}


def state_class(spec) -> type[State]:
    """The state renderer of a spec's reduction family."""
    cls = STATES.get(spec.red.family)
    if cls is None:
        raise NotImplementedError(f"no C state renderer for reduction {spec.reduction} "
                                  f"(family {spec.red.family!r})")
    return cls
