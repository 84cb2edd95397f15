"""Reduction states in CUDA C: init / update / combine / finalize, per reduction family.

Each class renders, for one *output slice* (components ``[c0, c0 + w)`` of the
sliced formula), the code of the rules defined in
:mod:`polykeops.formula.reductions`, with exactly their semantics:

* Sum: ``direct_sum`` (one accumulator), ``block_sum`` (a fresh accumulator per
  j tile added to the total after the tile), ``kahan_scheme`` (Neumaier
  compensated sum); accumulation in ``dtype_acc`` (float16 accumulation is
  emulated by rounding to half after every addition);
* LogSumExp / Max_SumShiftExp (weighted or not) and SumSoftMaxWeight: an online
  max-shifted sum whose shift is 0 for an infinite or NaN maximum, so that an
  all ``-inf`` row gives ``-inf`` and a ``+inf`` value gives ``+inf``;
* Min / Max / ArgMin / ArgMax (+ Min_ArgMin, Max_ArgMax): component-wise, a NaN
  wins, ties go to the smallest j;
* KMin / ArgKMin / KMin_ArgKMin: a sorted list of K (value, index) pairs per
  component, kept in registers by an unrolled insertion; order: NaN first,
  then ascending, ties by index; output entry ``k * D + d``; missing entries
  (fewer than K values) are ``+inf`` with index ``-1``.

A state is a set of scalar C variables named ``<prefix>_<field><n>``, so the
combine kernel can hold two states (``A`` and ``B``) at once.  Partial states
(2D scheme) are stored in a ``double`` workspace for the float fields and a
``long long`` workspace for the indices.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...formula.reductions import KMin, MaxSumShiftExp, Select, Sum, SumSoftMaxWeight


@dataclass(frozen=True)
class CTypes:
    """The C types of one kernel."""

    T: str  # compute type of formula values ("float" or "double")
    ACC: str  # accumulation type of sums ("float" or "double")
    acc_half: bool  # accumulate in float16 (rounding after each addition)
    IDX: str  # index type in registers ("int" or "long long")
    out: tuple[str, ...]  # C element type of each output array


def inf(ctype: str) -> str:
    return "pk_inf_f()" if ctype == "float" else "pk_inf_d()"


def fn(name: str, ctype: str) -> str:
    return {"exp": "expf", "log": "logf"}[name] if ctype == "float" else name


class State:
    """Base class; see the module docstring."""

    nf = 0  # float fields stored in a partial state
    ni = 0  # index fields stored in a partial state
    uses_index = False  # whether the update needs the column index j

    def __init__(self, ct: CTypes, spec, c0: int, w: int):
        self.ct = ct
        self.spec = spec
        self.c0 = c0
        self.w = w
        self.out_dims = tuple(o.dim for o in spec.outputs())

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

    def finalize(self, p: str, row: str) -> list[str]:
        raise NotImplementedError

    # partial states -----------------------------------------------------
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

    def field_types(self) -> list[str]:
        raise NotImplementedError

    def write(self, out: int, row: str, col: int, value: str) -> str:
        return f"pk_st(o{out} + {row} * {self.out_dims[out]}LL + {col}, {value});"

    def round_acc(self, expr: str) -> str:
        return f"pk_round_h({expr})" if self.ct.acc_half else expr


# ---------------------------------------------------------------------------


class SumState(State):
    def __init__(self, ct, spec, c0, w):
        super().__init__(ct, spec, c0, w)
        self.scheme = spec.sum_scheme
        self.kahan = self.scheme == "kahan_scheme"
        self.nf = w * (2 if self.kahan else 1)


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
    """LogSumExp, Max_SumShiftExp (weighted or not) and SumSoftMaxWeight."""

    def __init__(self, ct, spec, c0, w):
        super().__init__(ct, spec, c0, w)
        red = spec.red
        self.softmax = isinstance(red, SumSoftMaxWeight)
        self.weighted = self.softmax or red.weighted
        self.log = (not self.softmax) and red.log
        # sums: s (weighted by the sliced components of G), plus t for the softmax
        self.ns = w if self.weighted else 1
        self.nf = 1 + self.ns + (1 if self.softmax else 0)


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
        return [f"{A} {p}_m = -{inf(A)};"] + [f"{A} {s} = 0;" for s in self._sums(p)]

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
        E = fn("exp", A)
        sums = self._sums(p)
        ws = self._weights(fv)
        new_max = " ".join(f"{s} = {s} * pk_c + pk_e * {w};" for s, w in zip(sums, ws))
        add = " ".join(f"{s} += pk_e * {w};" for s, w in zip(sums, ws))
        nan = " ".join(f"{s} = pk_f;" for s in sums)
        return [
            f"{{ const {A} pk_f = ({A}){fv[0][0]};",
            f"  if (pk_f > {p}_m) {{ const {A} pk_fs = pk_safe(pk_f); "
            f"const {A} pk_c = ({p}_m == -{inf(A)}) ? ({A})0 : {E}({p}_m - pk_fs); "
            f"const {A} pk_e = {E}(pk_f - pk_fs); {new_max} {p}_m = pk_f; }}",
            f"  else if (pk_f == pk_f) {{ const {A} pk_e = {E}(pk_f - pk_safe({p}_m)); {add} }}",
            f"  else {{ {p}_m = pk_f; {nan} }} }}",
        ]

    def combine(self, pa, pb):
        A = self.ct.ACC
        E = fn("exp", A)
        INF = inf(A)
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
        L = fn("log", A)
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


class SelectState(State):
    """Min / Max / ArgMin / ArgMax / Min_ArgMin / Max_ArgMax, component-wise."""

    uses_index = True

    def __init__(self, ct, spec, c0, w):
        super().__init__(ct, spec, c0, w)
        red = spec.red
        self.kind = red.selection_kind
        self.want_value = red.want_value
        self.want_index = red.want_index
        self.nf = w
        self.ni = w


    def field_types(self):
        return [self.ct.T] * self.w

    def fields(self, p):
        return [f"{p}_v{d}" for d in range(self.w)], [f"{p}_i{d}" for d in range(self.w)]

    def init(self, p):
        T, I = self.ct.T, self.ct.IDX
        start = inf(T) if self.kind == "min" else f"-{inf(T)}"
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


# ---------------------------------------------------------------------------


class KMinState(State):
    """KMin / ArgKMin / KMin_ArgKMin: K sorted (value, index) pairs per component."""

    uses_index = True

    def __init__(self, ct, spec, c0, w):
        super().__init__(ct, spec, c0, w)
        red = spec.red
        self.K = spec.k
        self.D = spec.formulas[0].dim
        self.want_value = red.want_value
        self.want_index = red.want_index
        self.nf = self.ni = self.K * w


    def field_types(self):
        return [self.ct.T] * self.nf

    def fields(self, p):
        fl = [f"{p}_v{k}_{d}" for k in range(self.K) for d in range(self.w)]
        ix = [f"{p}_i{k}_{d}" for k in range(self.K) for d in range(self.w)]
        return fl, ix

    def init(self, p):
        T, I = self.ct.T, self.ct.IDX
        lines = []
        for k in range(self.K):
            for d in range(self.w):
                lines += [f"{T} {p}_v{k}_{d} = {inf(T)};", f"{I} {p}_i{k}_{d} = -1;"]
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


# ---------------------------------------------------------------------------

#: registers a slice's state may use (per thread) before the output is split into slices
STATE_REGISTERS = 64


def sliced_formulas(spec, c0: int, w: int) -> list:
    """The formulas a slice's kernel computes: the sliced formula (or weight) and the rest whole."""
    from .render import slice_formula

    red = spec.red
    forms = list(spec.formulas)
    if isinstance(red, (Sum, Select, KMin)):
        forms[0] = slice_formula(forms[0], c0, w)
    elif len(forms) == 2:  # weighted: the weight G is sliced
        forms[1] = slice_formula(forms[1], c0, w)
    return forms


def state_class(spec):
    red = spec.red
    if isinstance(red, Sum):
        return SumState
    if isinstance(red, (MaxSumShiftExp, SumSoftMaxWeight)):
        return ShiftExpState
    if isinstance(red, Select):
        return SelectState
    if isinstance(red, KMin):
        return KMinState
    raise NotImplementedError(f"no CUDA state for reduction {spec.reduction}")


def slices(spec) -> list[tuple[int, int]]:
    """The output slices ``(c0, w)``: wide states are split so that one slice fits in registers."""
    red = spec.red
    if isinstance(red, Sum):
        dim, per = spec.formulas[0].dim, (1 if spec.sum_scheme == "direct_sum" else 2)
    elif isinstance(red, SumSoftMaxWeight):
        dim, per = spec.formulas[1].dim, 1
    elif isinstance(red, MaxSumShiftExp):
        if not red.weighted:
            return [(0, 1)]
        dim, per = spec.formulas[1].dim, 1
    elif isinstance(red, Select):
        dim, per = spec.formulas[0].dim, 2
    else:  # KMin
        dim, per = spec.formulas[0].dim, 2 * spec.k
    width = max(1, STATE_REGISTERS // per)
    n = -(-dim // width)
    base, extra = divmod(dim, n)
    out, c0 = [], 0
    for s in range(n):
        w = base + (1 if s < extra else 0)
        out.append((c0, w))
        c0 += w
    return out
