"""C source of a specialised CPU kernel for one canonical reduction spec.

The kernel is a blocked map-reduce (see ``docs/cpu_engine.md``):

* work items are (batch, block of ``BI`` rows i, chunk of j); threads take
  items from an atomic counter (``pk_parallel_for`` in ``include/pk_pool.h``);
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
sub-formula runs in which loop, the lane stages of :mod:`.lanes`).
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
from ..codegen.plan import LANE, TILE, dependencies, frontier, phase
from ..codegen.states import SIZEOF, state_class
from . import ipblock
from .gemm import gemm_code
from .lanes import lane_code

C_TYPES = {"float32": "float", "float64": "double"}


@dataclass(frozen=True)
class KernelLayout:
    """Sizes chosen for one kernel (they are part of its source, hence of its cache key)."""

    bi: int  # rows per work item
    tj: int  # columns per tile


def choose_layout(spec, state_bytes: int, fbuf_dims: int, blocks: int = 0,
                  block_dim: int = 0, block_selection: bool = False) -> KernelLayout:
    """Rows per item and columns per tile; ``blocks``: the number of inner products computed by
    blocks (ipblock.py), each a [BI][TJ] buffer, of dimension ``block_dim`` at most;
    ``block_selection``: the reduction takes the block directly (no lane code)."""
    size = SIZEOF[spec.dtype]
    jdims = sum(v.dim for v in spec.variables if v.cat == CAT_J)
    per_col = (jdims + fbuf_dims + 2) * size
    tj = 96 * 1024 // max(per_col, 1)
    tj = max(64, min(2048, tj // 64 * 64))
    bi = max(1, min(32, (128 * 1024) // max(state_bytes, 1)))
    if blocks:
        # more rows per item, so that packing a tile of y serves more rows (as in a GEMM), and
        # blocks of products of at most about 64 KB for a selection of the block, 256 KB when the
        # lane code runs on them: each row's lanes end in a reduction across the SIMD lanes (a
        # fused Sum) or a K @ b product, whose cost per row needs longer tiles (D = 16, K @ b of
        # width 32: 1.7x faster with 256 columns than with 64)
        bi = max(1, min(ipblock.block_rows(block_dim), (256 * 1024) // max(state_bytes, 1)))
        cap = (64 if block_selection else 256) * 1024 // (blocks * bi * size)
        tj = max(64, min(tj, cap // 64 * 64))
    return KernelLayout(bi=bi, tj=tj)


class KernelWriter:
    """Writes the C text of the kernel of one canonical spec (float32 or float64):
    ``KernelWriter(spec).source()``."""

    fused_sum_limit = 16  # Sum of a formula of dimension <= this: per-lane accumulators
    ip_min_dim = ipblock.MIN_DIM  # inner products of this dimension and more: by blocks (ipblock.py)

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
        self.gemm = None  # set by source(): (scalar buffer, b buffer, dim) for Sum_j s_ij b_j
        self.blocks = []  # set by source(): the inner products computed by blocks (ipblock.py)

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

        # inner products of dimension >= ipblock.MIN_DIM: computed by blocks (rows of the item x
        # columns of the tile) before the row loop, read by the lanes from their [TJ][BIP] buffers
        self.blocks = ipblock.block_products(formulas, self.ip_min_dim)
        block_known = {bp.product.node: (lambda k, bp=bp: ipblock.lane_value(bp)) for bp in self.blocks}
        known = {**tile_known, **row_known, **block_known}
        # a formula that is one of the blocks (kNN on distances...), reduced by a selection: the
        # rows' states take the block directly (pk_reduce.h: pk_block_select)
        root_block = [bp for bp in self.blocks if len(roots) == 1 and bp.product.node == roots[0]]
        self.block_reduce = self.state.block_reduce(root_block[0].buf) if root_block else None
        if self.block_reduce:
            lane_lines, lane_bufs, self.gemm = [], [], None
        else:
            lane_lines, lane_bufs, self.gemm = lane_code(roots, known, leaf_lane, counter, renderer=R, T=T,
                                                         ACC=ACC, state=self.state, fused=self.fused)
        # variables still read in the tile, row and lane code (not only through blocks)
        rendered = "\n".join(tile_lines + row_lines + lane_lines)
        if self.gemm is not None:
            rendered += f" {self.gemm[1]}["
        jvars_t = [v for v in jvars if f"yt{v.index}[" in rendered]
        ivars_r = [v for v in ivars if f"xr{v.index}[" in rendered]
        layout = choose_layout(spec, self.state.record_bytes(), sum(d for _, _, d in lane_bufs),
                               len(self.blocks), max((bp.product.dim for bp in self.blocks), default=0),
                               bool(self.block_reduce))
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
        # c + a * b in ACC (a, b of type T): one fused multiply-add when T is ACC, else the
        # product rounded in T, as the op it stands for (kernels are compiled without contraction)
        fma = CRenderer.fma_funcs.get(ACC)
        w(f"#define PK_MADD(a, b, c) {fma}((a), (b), (c))" if T == ACC and fma
          else "#define PK_MADD(a, b, c) ((c) + (ACC)((a) * (b)))")
        w('#include "pk_reduce.h"')
        w(f"#define NV {len(variables)}")
        w(f"#define BI {BI}")
        # block-sparse items: up to BIR rows share each tile (clusters of ~100 points: one item);
        # the state area holds BIR states (the K @ b row buffer holds BI rows: BIR = BI there)
        state_bytes = self.state.record_bytes()
        one_block = self.gemm is not None or bool(self.blocks)
        bir = BI if one_block else max(BI, min(128, (128 * 1024) // max(state_bytes, 1)))
        w(f"#define BIR {bir}")
        w(f"#define TJ {TJ}")
        w(f"#define BIP {ipblock.padded_rows(BI, SIZEOF[spec.dtype])} /* BI rounded up to whole vectors */")
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
        for v in jvars_t:
            bufs.append((f"yt{v.index}", T, v.dim))
        for n in tile_front:
            bufs.append((f"tb{_id(n, tile_front)}", T, n.dim))
        bufs.extend(ipblock.buffers(self.blocks, T, rowmajor=not self.block_reduce))
        for name, ty, dim in lane_bufs:
            if self.gemm is not None and name == self.gemm[0]:
                name, dim = name + "_all", BI  # one row of TJ scalars per row of the item
            bufs.append((name, ty, dim))
        for name, ty, dim in bufs:
            size = f"(size_t)({dim})" if isinstance(dim, str) else f"(size_t){dim} * TJ"
            offs.append(f"#define OFF_{name} PK_ALIGN64({prev})")
            offs.append(f"#define END_{name} (OFF_{name} + {size} * sizeof({ty}))")
            prev = f"END_{name}"
        extra, prev = self.state.record_scratch(prev)
        offs.extend(extra)
        offs.append(f"#define SCRATCH_BYTES ({prev} + 64)")
        out.extend(offs)
        w("")
        out.extend(self.state.record_functions())
        w("")
        if self.blocks:
            w('#include "pk_ipblock.h"')
            for bp in self.blocks:
                out.extend(ipblock.microkernel(bp))
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
        out.extend("    " + line for line in ipblock.item_code(self.blocks))
        if self.block_reduce:
            w("    T thr[BIP];")
            out.extend("    " + line for line in self.block_reduce[0])
        yrows = ipblock.yvars_of(self.blocks)
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
        out.extend("            " + line for line in ipblock.stage_code(yrows))
        for v in jvars_t:
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
                # 16 columns at a time: whole 64-byte lines of each component row are written
                # (one column at a time, the D stores of a column, TJ apart, hit few cache sets)
                w(f"                T *__restrict__ dst = yt{v.index} + n;")
                w("                int j = 0;")
                w("                for (; j + 16 <= m; j += 16)")
                w(f"                    for (int k = 0; k < {d}; ++k)")
                w("                        for (int l = 0; l < 16; ++l)")
                w(f"                            dst[k * TJ + j + l] = src[(j + l) * {d} + k];")
                w("                for (; j < m; ++j)")
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
        out.extend("        " + line for line in ipblock.pad_code(yrows))
        w("        for (int j = n; j < npad; ++j) {")
        for v in jvars_t:
            w(f"            for (int k = 0; k < {v.dim}; ++k) yt{v.index}[k * TJ + j] = 0;")
        w("        }")
        if tile_lines:
            w("        " + R.simd_pragma)
            w("        for (int j = 0; j < npad; ++j) {")
            for line in tile_lines:
                w("            " + line)
            w("        }")
        rowmajor = not self.block_reduce  # the lane code reads the blocks row by row
        out.extend("        " + line for line in ipblock.tile_code(self.blocks, rowmajor=rowmajor))
        if self.block_reduce:
            out.extend("        " + line for line in self.block_reduce[1])
        else:
            out.extend("        " + line for line in self._row_loop(ivars_r, row_lines, lane_lines))
        w("    }")
        w("}")
        w("")
        w('#include "pk_kernel.h"')
        return "\n".join(out) + "\n"

    def _row_loop(self, ivars_r, row_lines, lane_lines) -> list[str]:
        """The rows of the work item, for one tile: their i-only values, then the lane code (and
        the tile's ``K @ b`` product, after the loop)."""
        L = ["for (int64_t i = i0; i < i1; ++i) {",
             "    pk_state *__restrict__ s = st + (i - i0);"]
        if self.gemm is not None:
            g = self.gemm[0]
            L.append(f"    T *__restrict__ {g} = {g}_all + (size_t)(i - i0) * TJ;")
            L.append("    (void)s;")
        for v in ivars_r:
            L.append(f"    T xr{v.index}[{v.dim}];")
            L.append(f"    for (int k = 0; k < {v.dim}; ++k) xr{v.index}[k] = a{v.index}[i * {v.dim} + k];")
        L.extend("    " + line for line in row_lines)
        L.extend("    " + line for line in lane_lines)
        L.append("}")
        if self.gemm is not None:
            L.extend(gemm_code(*self.gemm, self.renderer.simd_pragma))
        return L

    # ------------------------------------------------------------------


def _id(node, seq) -> int:
    return seq.index(node)


def _comment(text: str) -> str:
    return text.replace("*/", "* /")
