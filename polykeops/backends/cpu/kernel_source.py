"""C source of a specialised CPU kernel for one canonical reduction spec.

The kernel is a blocked map-reduce (see ``docs/cpu_engine.md``):

* work items are (batch, block of ``BI`` rows i, chunk of j); threads take
  items from an atomic counter (``pk_parallel_for`` in ``include/pk_runtime.h``);
* j is walked in tiles of ``TJ`` columns: each j-variable of the tile is
  transposed into a structure-of-arrays buffer, and sub-formulas that depend
  on j only are computed once per tile, shared by the ``BI`` rows;
* sub-formulas that depend on i only are computed once per row;
* the rest runs in an ``omp simd`` loop over the tile (one lane per j), either
  fused with the accumulation (Sum of a small formula: per-lane accumulators)
  or writing the formula values to a tile buffer that the reduction helpers of
  ``include/pk_reduce.h`` then reduce (LogSumExp family, Min/Max, K-min, Kahan);
* short and wide problems (few rows, large N) also split j across threads; the
  partial states are then merged in j order with the reduction's combine rule.

This module lays out the tile function ``pk_process`` of one spec (which
sub-formula runs in which loop, the lane staging of :meth:`KernelWriter._lane_code`).
The rest comes from shared pieces: the formula's C from
:class:`~polykeops.backends.codegen.CRenderer`, the i/j phases from
:mod:`~polykeops.backends.codegen.plan`, the reduction state (``pk_state`` and
its functions) from :mod:`~polykeops.backends.codegen.states`, the ``K @ b``
micro-kernel from :mod:`.gemm`; the call struct and the work decomposition are
C headers (``include/pk_call.h``, ``include/pk_driver.h``) that the kernel includes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...formula.nodes import CAT_I, CAT_J, CAT_P, walk
from ..codegen import CRenderer
from ..codegen.plan import LANE, TILE, computed_between, dependencies, frontier, phase
from ..codegen.states import SIZEOF, state_class
from .gemm import gemm_code, gemm_operands

C_TYPES = {"float32": "float", "float64": "double"}


@dataclass(frozen=True)
class KernelLayout:
    """Sizes chosen for one kernel (they are part of its source, hence of its cache key)."""

    bi: int  # rows per work item
    tj: int  # columns per tile


def choose_layout(spec, state_bytes: int, fbuf_dims: int) -> KernelLayout:
    size = SIZEOF[spec.dtype]
    jdims = sum(v.dim for v in spec.variables if v.cat == CAT_J)
    per_col = (jdims + fbuf_dims + 2) * size
    tj = 96 * 1024 // max(per_col, 1)
    tj = max(64, min(2048, tj // 64 * 64))
    bi = max(1, min(32, (128 * 1024) // max(state_bytes, 1)))
    return KernelLayout(bi=bi, tj=tj)


class KernelWriter:
    """Writes the C text of the kernel of one canonical spec (float32 or float64):
    ``KernelWriter(spec).source()``."""

    fused_sum_limit = 16  # Sum of a formula of dimension <= this: per-lane accumulators

    def __init__(self, spec, renderer_cls=CRenderer):
        if spec.axis != 1:
            raise ValueError("kernels are generated for canonical specs (axis == 1)")
        if spec.dtype not in C_TYPES:
            raise ValueError(f"no C kernel for dtype {spec.dtype}")
        self.spec = spec
        self.T = C_TYPES[spec.dtype]
        acc = spec.accumulation_dtype
        self.ACC = C_TYPES.get(acc, "float")  # float16 accumulation is done in float32
        self.renderer = renderer_cls(spec.dtype)
        self.state = state_class(spec)(spec)
        self.fdims = [f.dim for f in spec.formulas]
        self.fused = self.state.plain_sum and self.fdims[0] <= self.fused_sum_limit
        self.gemm = None  # set by _lane_code: (scalar buffer, b buffer, dim) for Sum_j s_ij b_j

    # ------------------------------------------------------------------
    def fbuf_dims(self) -> int:
        if self.fused:
            return 0
        return sum(self.fdims)

    # ------------------------------------------------------------------
    def source(self) -> str:
        spec = self.spec
        T, ACC = self.T, self.ACC
        variables = spec.variables
        formulas = spec.formulas
        deps = dependencies(formulas)
        roots = list(formulas)

        # -- classify nodes: lane (i and j), tile (j only), row (i only, or neither) ---------
        def is_lane(n):
            return phase(deps[n]) == LANE

        def is_tile(n):
            return n.op != "Var" and bool(n.args) and phase(deps[n]) == TILE

        def is_row(n):
            return n.op != "Var" and bool(n.args) and CAT_J not in deps[n]

        tile_front = frontier(formulas, is_lane, is_tile)
        row_front = frontier(formulas, is_lane, is_row)

        used = {v for f in formulas for v in walk(f) if v.op == "Var"}
        jvars = [v for v in variables if v.cat == CAT_J and v in used]
        ivars = [v for v in variables if v.cat == CAT_I and v in used]
        pvars = [v for v in variables if v.cat == CAT_P and v in used]

        R = self.renderer
        counter = [0]

        def leaf_lane(v, k):
            if v.cat == CAT_I:
                return f"xr{v.index}[{k}]"
            if v.cat == CAT_J:
                return f"yt{v.index}[({k}) * TJ + j]"
            return f"pr{v.index}[{k}]"

        # tile nodes: rendered in the tile loop (lane = j), stored in buffers
        tile_lines = []
        tile_known = {}
        if tile_front:
            rf = R.render(tile_front, leaf_lane, prefix="t", counter=counter)
            tile_lines = list(rf.lines)
            for n in tile_front:
                for k in range(n.dim):
                    tile_lines.append(f"tb{_id(n, tile_front)}[{k} * TJ + j] = {rf.value(n, k)};")
        for n in tile_front:
            name = f"tb{_id(n, tile_front)}"
            tile_known[n] = lambda k, name=name: f"{name}[({k}) * TJ + j]"

        # row nodes: rendered once per row, outside the j loop
        row_lines = []
        row_known = {}
        if row_front:
            rr = R.render(row_front, leaf_lane, prefix="r", counter=counter)
            row_lines = list(rr.lines)
            for n in row_front:
                row_known[n] = lambda k, n=n, rr=rr: rr.value(n, k)

        known = {**tile_known, **row_known}
        lane_lines, lane_bufs = self._lane_code(roots, known, leaf_lane, counter)
        layout = choose_layout(spec, self.state.record_bytes(), sum(d for _, _, d in lane_bufs))
        self.layout = layout
        BI, TJ = layout.bi, layout.tj

        # -- assemble --------------------------------------------------------
        out = []
        w = out.append
        w("/* polykeops specialised CPU kernel (generated; do not edit) */")
        w(f"/* spec: {_comment(str(spec))} */")
        w('#include "pk_runtime.h"')
        w(f"typedef {T} T;")
        w(f"typedef {ACC} ACC;")
        w(f"#define PK_T {T}")
        w(f"#define PK_ACC {ACC}")
        w("#define PK_FN(x) x")
        w(f"#define PK_EXPACC {'pk_expf' if ACC == 'float' else 'pk_exp'}")
        w(f"#define PK_LOGACC {'logf' if ACC == 'float' else 'log'}")
        w('#include "pk_reduce.h"')
        w(f"#define NV {len(variables)}")
        w(f"#define BI {BI}")
        # block-sparse items: up to BIR rows share each tile (clusters of ~100 points: one item);
        # the state area holds BIR states (the K @ b row buffer holds BI rows: BIR = BI there)
        state_bytes = self.state.record_bytes()
        bir = BI if self.gemm is not None else max(BI, min(128, (128 * 1024) // max(state_bytes, 1)))
        w(f"#define BIR {bir}")
        w(f"#define TJ {TJ}")
        w(f"#define PK_VL {64 // SIZEOF[spec.dtype]} /* lanes of a 64-byte vector; TJ is a multiple */")
        w('#include "pk_call.h"')
        w("typedef struct {")
        for fld in self.state.record_fields(T, ACC):
            w("    " + fld)
        w("} pk_state;")
        w("")
        # scratch layout
        offs = ["#define OFF_STATE 0", "#define END_STATE (OFF_STATE + BIR * sizeof(pk_state))"]
        prev = "END_STATE"
        bufs = []
        for v in jvars:
            bufs.append((f"yt{v.index}", T, v.dim))
        for n in tile_front:
            bufs.append((f"tb{_id(n, tile_front)}", T, n.dim))
        for name, ty, dim in lane_bufs:
            if self.gemm is not None and name == self.gemm[0]:
                name, dim = name + "_all", BI  # one row of TJ scalars per row of the item
            bufs.append((name, ty, dim))
        for name, ty, dim in bufs:
            offs.append(f"#define OFF_{name} PK_ALIGN64({prev})")
            offs.append(f"#define END_{name} (OFF_{name} + (size_t){dim} * TJ * sizeof({ty}))")
            prev = f"END_{name}"
        extra, prev = self.state.record_scratch(prev)
        offs.extend(extra)
        offs.append(f"#define SCRATCH_BYTES ({prev} + 64)")
        out.extend(offs)
        w("")
        out.extend(self.state.record_functions())
        w("")
        # the block routine
        # states that do not need the column index of a lane (sums): a tile may gather
        # the columns of several j intervals (block-sparse ranges: many short intervals)
        gather = 0 if self.state.uses_index else 1
        w(f"#define PK_GATHER {gather}")
        w(
            "static void pk_process(const pk_call *c, int64_t b, int64_t i0, int64_t i1, const int64_t *iv,"
            " int64_t niv, pk_state *st, char *scratch)"
        )
        w("{")
        w("    const int64_t *bo = c->boff + b * NV;")
        for v in jvars + ivars + pvars:
            w(f"    const T *__restrict__ a{v.index} = (const T *)c->args[{v.index}] + bo[{v.index}];")
        for v in pvars:
            w(f"    T pr{v.index}[{v.dim}];")
            w(f"    for (int k = 0; k < {v.dim}; ++k) pr{v.index}[k] = a{v.index}[k];")
        for name, ty, _dim in bufs:
            w(f"    {ty} *__restrict__ {name} = ({ty} *)(scratch + OFF_{name});")
        out.extend(self.state.record_prologue())
        # tiles of at most TJ columns, taken from the j intervals iv[2q], iv[2q + 1] (clipped to
        # [0, ny]) in order; with PK_GATHER == 0 a tile holds columns of one interval only, the
        # columns jt .. jt + n - 1
        w("    int64_t q = 0, pos = 0, end = 0;")
        w("    for (;;) {")
        w("        int n = 0;")
        w("        int64_t jt = pos;")
        w("        while (n < TJ) {")
        w("            if (pos >= end) {")
        w("                if ((!PK_GATHER && n > 0) || q >= niv)")
        w("                    break;")
        w("                pos = iv[2 * q] > 0 ? iv[2 * q] : 0;")
        w("                end = iv[2 * q + 1] < c->ny ? iv[2 * q + 1] : c->ny;")
        w("                ++q;")
        w("                continue;")
        w("            }")
        w("            const int m = (int)((end - pos) < (TJ - n) ? (end - pos) : (TJ - n));")
        w("            if (n == 0)")
        w("                jt = pos;")
        for v in jvars:
            d = v.dim
            w("            {")
            w(f"                const T *__restrict__ src = a{v.index} + pos * {d};")
            if d == 1:
                w(f"                memcpy(yt{v.index} + n, src, (size_t)m * sizeof(T));")
            elif d <= 16:
                w(f"                T *__restrict__ dst = yt{v.index} + n;")
                w("                for (int j = 0; j < m; ++j) {")
                for k in range(d):
                    w(f"                    dst[{k} * TJ + j] = src[j * {d} + {k}];")
                w("                }")
            else:
                w(f"                T *__restrict__ dst = yt{v.index} + n;")
                w("                for (int j = 0; j < m; ++j)")
                w(f"                    for (int k = 0; k < {d}; ++k)")
                w(f"                        dst[k * TJ + j] = src[j * {d} + k];")
            w("            }")
        w("            n += m;")
        w("            pos += m;")
        w("        }")
        w("        if (n == 0)")
        w("            break;")
        w("        (void)jt;")
        # whole SIMD vectors: columns n .. npad - 1 of the tile buffers are zeros
        w("        const int nfull = n & ~(PK_VL - 1), npad = (n + PK_VL - 1) & ~(PK_VL - 1);")
        w("        (void)nfull;")
        w("        for (int j = n; j < npad; ++j) {")
        for v in jvars:
            w(f"            for (int k = 0; k < {v.dim}; ++k) yt{v.index}[k * TJ + j] = 0;")
        w("        }")
        if tile_lines:
            w("        " + R.simd_pragma)
            w("        for (int j = 0; j < npad; ++j) {")
            for line in tile_lines:
                w("            " + line)
            w("        }")
        w("        for (int64_t i = i0; i < i1; ++i) {")
        w("            pk_state *__restrict__ s = st + (i - i0);")
        if self.gemm is not None:
            g = self.gemm[0]
            w(f"            T *__restrict__ {g} = {g}_all + (size_t)(i - i0) * TJ;")
            w("            (void)s;")
        for v in ivars:
            w(f"            T xr{v.index}[{v.dim}];")
            w(f"            for (int k = 0; k < {v.dim}; ++k) xr{v.index}[k] = a{v.index}[i * {v.dim} + k];")
        for line in row_lines:
            w("            " + line)
        out.extend("            " + line for line in lane_lines)
        w("        }")
        if self.gemm is not None:
            out.extend("        " + line for line in gemm_code(*self.gemm, R.simd_pragma))
        w("    }")
        w("}")
        w("")
        w('#include "pk_driver.h"')
        return "\n".join(out) + "\n"

    # ------------------------------------------------------------------
    def _lane_code(self, roots, known, leaf, counter) -> tuple[list[str], list]:
        """Code run for one row and one tile (lanes = the tile's columns j), and its buffers.

        The sub-formulas that depend on i and j are computed in *stages*: fused
        ``omp simd`` loops over j for values of small dimension (one scalar or a
        small array per lane), and, for large elementwise vectors (dimension above
        the renderer's unroll limit, e.g. ``x_i - y_j`` in 64-D), loops over the
        components with an ``omp simd`` loop over j inside, where each component
        is a scalar and a ``Sum`` of the vector is accumulated in place.  Values
        crossing stages go through [dim][TJ] tile buffers.  The last stage feeds
        the reduction: per-lane accumulators (Sum of a small formula), or formula
        buffers reduced by the helpers of pk_reduce.h.
        """
        R = self.renderer
        T = self.T
        lane_nodes = computed_between(roots, known)
        lane_set = set(lane_nodes)
        pos = {n: q for q, n in enumerate(lane_nodes)}
        big = {n for n in lane_nodes if n.dim > R.unroll_limit and R.is_elementwise(n)}
        region = _regions(big, lane_nodes)
        absorbed = {n: region[n.args[0]] for n in lane_nodes if n.op == "Sum" and n.args[0] in big}
        unit_of = {}
        for n in lane_nodes:
            if n in big:
                unit_of[n] = ("R", region[n])
            elif n in absorbed:
                unit_of[n] = ("R", absorbed[n])
            else:
                unit_of[n] = ("S", pos[n])
        sink = ("S", len(lane_nodes))
        deps = {u: set() for u in set(unit_of.values()) | {sink}}
        for n in lane_nodes:
            for a in n.args:
                if a in lane_set and unit_of[a] != unit_of[n]:
                    deps[unit_of[n]].add(unit_of[a])
        for r in roots:
            if r in lane_set:
                deps[sink].add(unit_of[r])
        first = {}
        for n in lane_nodes:
            first.setdefault(unit_of[n], pos[n])
        first[sink] = len(lane_nodes)
        remaining = sorted(deps, key=lambda u: first[u])
        stages, done = [], set()
        while remaining:
            group = []
            grew = True
            while grew:
                grew = False
                for u in remaining:
                    if u[0] == "S" and u not in group and deps[u] <= done | set(group):
                        group.append(u)
                        grew = True
            if group:
                stages.append(("fused", group))
            else:
                group = [next(u for u in remaining if u[0] == "R" and deps[u] <= done)]
                stages.append(("region", group))
            done |= set(group)
            remaining = [u for u in remaining if u not in done]
        stage_of = {u: q for q, (_, units) in enumerate(stages) for u in units}

        # which values cross stages (-> tile buffers)
        crossing = set()
        for n in lane_nodes:
            for a in n.args:
                if a in lane_set and stage_of[unit_of[a]] != stage_of[unit_of[n]]:
                    crossing.add(a)
        for r in roots:
            if r in lane_set and stage_of[unit_of[r]] != stage_of[sink]:
                crossing.add(r)
        root0 = roots[0]
        # Sum of a large vector computed in a component loop: reduce it there, per component
        region_reduce = self.state.plain_sum and root0 in big and len(roots) == 1
        if region_reduce:
            crossing.discard(root0)

        bufs = []
        buf_known = {}  # filled stage after stage: values of earlier stages, read from their buffers
        names = {}
        for n in lane_nodes:
            if n in crossing:
                name = f"lb{len(names)}"
                names[n] = name
                dim = 1 if n in absorbed else n.dim
                bufs.append((name, T, dim))
        buffered = not self.fused and not region_reduce
        if buffered:
            bufs.append(("fb", T, self.fdims[0]))
            if len(self.fdims) > 1:
                bufs.append(("gb", T, self.fdims[1]))
            bufs.extend((name, self.ACC if ty == "ACC" else T, dim)
                        for name, ty, dim in self.state.tile_buffers())

        lines: list[str] = []
        D = self.fdims[0]
        for kind, units in stages:
            nodes = [n for n in lane_nodes if unit_of[n] in units]
            scope = {**known, **buf_known}
            for n in nodes:
                if n in names:
                    buf_known[n] = lambda k, name=names[n]: f"{name}[({k}) * TJ + j]"
            if kind == "fused":
                rf = R.render(nodes, leaf, known=scope, prefix="v", counter=counter)
                body = list(rf.lines)
                for n in nodes:
                    if n in names:
                        body.extend(f"{names[n]}[{k} * TJ + j] = {rf.value(n, k)};" for k in range(n.dim))
                pragma = R.simd_pragma
                if sink in units:
                    if self.fused:
                        accs = [f"acc{d}" for d in range(D)]
                        lines.append("ACC " + ", ".join(f"{a} = 0" for a in accs) + ";")
                        pragma += f" reduction(+ : {', '.join(accs)})"
                        body.extend(f"acc{d} += (ACC)({rf.value(root0, d)});" for d in range(D))
                    elif buffered:
                        for buf, f in zip(("fb", "gb"), roots):
                            body.extend(f"{buf}[{d} * TJ + j] = {rf.value(f, d)};" for d in range(f.dim))
                if body and sink in units and self.fused:
                    # whole vectors, then one masked vector for the last columns (short tiles of
                    # block-sparse ranges: no scalar remainder loop)
                    lines.append(pragma)
                    lines.append("for (int j = 0; j < nfull; ++j) {")
                    lines.extend("    " + x for x in body)
                    lines.append("}")
                    lines.append("if (nfull < n) {")
                    lines.append("    " + pragma)
                    lines.append("    for (int l = 0; l < PK_VL; ++l) {")
                    masked = ["const int j = nfull + l;"] + body[: len(body) - D]  # (no accumulation)
                    masked.extend(
                        f"acc{d} += j < n ? (ACC)({rf.value(root0, d)}) : (ACC)0;" for d in range(D)
                    )
                    lines.extend("        " + x for x in masked)
                    lines.append("    }")
                    lines.append("}")
                elif body:
                    # values of the columns n .. npad - 1 (zero padding) are computed and never used
                    lines.append(pragma)
                    lines.append("for (int j = 0; j < npad; ++j) {")
                    lines.extend("    " + x for x in body)
                    lines.append("}")
                if sink in units and self.fused:
                    lines.extend(f"s->s[{d}] += acc{d};" for d in range(D))
                continue
            # a component loop
            vec = [n for n in nodes if n in big]
            sums = [n for n in nodes if n in absorbed]
            dim = vec[0].dim
            clines, cnames = R.render_component(vec, "k", dim, leaf, known=scope, prefix="c", counter=counter)
            reduce_here = region_reduce and root0 in vec
            gemm = gemm_operands(root0, vec, names) if reduce_here and not sums else None
            if gemm is not None:
                # Sum_j s_ij b_j (K @ b): the scalars s_ij of every row of the item are kept (a
                # [BI][TJ] buffer) and reduced after the row loop, several rows and components at
                # a time (pk_process), so that each load of b_j serves several rows
                self.gemm = gemm
                continue
            if sums and not reduce_here:
                # register blocking: JB columns at a time, the Sums of the components stay in
                # registers across the loop over components (tile buffers hold TJ >= n columns,
                # a multiple of JB, so the last block may compute a few unused columns)
                jb = 32 if T == "float" else 16
                lines.append(f"for (int j0 = 0; j0 < n; j0 += {jb}) {{")
                for sm in sums:
                    lines.append(f"    {T} sa_{names[sm]}[{jb}];")
                    lines.append(f"    for (int l = 0; l < {jb}; ++l) sa_{names[sm]}[l] = 0;")
                lines.append(f"    for (int k = 0; k < {dim}; ++k) {{")
                lines.append(f"        {R.simd_pragma}")
                lines.append(f"        for (int l = 0; l < {jb}; ++l) {{")
                body = ["const int j = j0 + l;"] + list(clines)
                for n in vec:
                    if n in names:
                        body.append(f"{names[n]}[k * TJ + j] = {cnames[n]};")
                for sm in sums:
                    body.append(f"sa_{names[sm]}[l] += {cnames[sm.args[0]]};")
                lines.extend("            " + x for x in body)
                lines.append("        }")
                lines.append("    }")
                for sm in sums:
                    nm = names[sm]
                    lines.append(f"    for (int l = 0; l < {jb}; ++l) {nm}[j0 + l] = sa_{nm}[l];")
                lines.append("}")
                continue
            for sm in sums:
                lines.append(R.simd_pragma)
                lines.append(f"for (int j = 0; j < n; ++j) {names[sm]}[j] = 0;")
            if reduce_here and dim >= 8:
                # reduced per component: 4 components per pass over j, so that the values shared
                # by the components (the scalar factor of K_ij * b_j) are loaded once for 4 sums
                u = 4
                top = dim - dim % u
                ks = [f"kq + {q}" for q in range(u)]
                body = []
                for q in range(u):
                    cl, cn = R.render_component(
                        vec, ks[q], dim, leaf, known=scope, prefix=f"u{q}_", counter=counter
                    )
                    body.extend(cl)
                    body.append(f"acc{q} += (ACC)({cn[root0]});")
                    for n in vec:
                        if n in names:
                            body.append(f"{names[n]}[({ks[q]}) * TJ + j] = {cn[n]};")
                lines.append(f"for (int kq = 0; kq < {top}; kq += {u}) {{")
                lines.append("    " + " ".join(f"ACC acc{q} = 0;" for q in range(u)))
                accs = ", ".join(f"acc{q}" for q in range(u))
                lines.append(f"    {R.simd_pragma} reduction(+ : {accs})")
                lines.append("    for (int j = 0; j < n; ++j) {")
                lines.extend("        " + x for x in body)
                lines.append("    }")
                lines.extend(f"    s->s[kq + {q}] += acc{q};" for q in range(u))
                lines.append("}")
                if top == dim:
                    continue
                lines.append(f"for (int k = {top}; k < {dim}; ++k) {{")
            else:
                lines.append(f"for (int k = 0; k < {dim}; ++k) {{")
            if reduce_here:
                lines.append("    ACC acc = 0;")
                lines.append(f"    {R.simd_pragma} reduction(+ : acc)")
            else:
                lines.append(f"    {R.simd_pragma}")
            lines.append("    for (int j = 0; j < n; ++j) {")
            body = list(clines)
            for n in vec:
                if n in names:
                    body.append(f"{names[n]}[k * TJ + j] = {cnames[n]};")
            for sm in sums:
                body.append(f"{names[sm]}[j] += {cnames[sm.args[0]]};")
            if reduce_here:
                body.append(f"acc += (ACC)({cnames[root0]});")
            lines.extend("        " + x for x in body)
            lines.append("    }")
            if reduce_here:
                lines.append("    s->s[k] += acc;")
            lines.append("}")
        if buffered:
            lines.extend(self.state.tile_reduce())
        return lines, bufs

def _regions(big: set, order: list) -> dict:
    """Group large elementwise nodes that feed each other (same dimension) into component loops."""
    parent = {n: n for n in big}

    def find(n):
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for n in big:
        for a in n.args:
            if a in big and a.dim == n.dim:
                parent[find(a)] = find(n)
    reps: dict = {}
    return {n: reps.setdefault(find(n), len(reps)) for n in order if n in big}


def _id(node, seq) -> int:
    return seq.index(node)


def _comment(text: str) -> str:
    return text.replace("*/", "* /")



#: the name this builder had before (kept for existing callers)
KernelSource = KernelWriter
