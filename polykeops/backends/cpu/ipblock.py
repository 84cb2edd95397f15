"""Inner-product blocks of the specialised CPU kernels (the input side of a GEMM).

When a formula reads inner products ``x_i . y_j`` or squared distances ``|x_i - y_j|^2``
of dimension ``D >= MIN_DIM`` between an i-variable and a j-variable (found by
:mod:`polykeops.formula.inner_products`), the kernel computes them for a whole block --
the ``BI`` rows of a work item x the ``TJ`` columns of a tile -- before its row loop, with
a register-blocked micro-kernel: ``RB`` columns x ``CB`` SIMD vectors of rows of
accumulators, ``CB`` vector loads of the rows' packed operands (``xt[k][r]``, transposed
once per work item) and ``RB`` broadcasts of ``y_j[k]`` (the columns are read row-major, as
stored: no transposition per tile) per ``RB * CB`` fused multiply-adds.  Squared distances
are formed as ``|x|^2 + |y|^2 - 2 x.y`` (row norms once per item, column norms once per
tile), finished on the micro-kernel's registers, clamped at 0, and recomputed in the difference
form where the expansion cancels (values below ``(|x|^2 + |y|^2) / 32``: close pairs) or a norm
is not finite (``include/pk_ipblock.h``); points far from the origin for their spread are
centred on the mean of the item's rows first.  The rest of the formula reads the block as the
value of the product's node, from a row-major copy (one contiguous row of lanes per row); a
selection of the block itself (kNN) reduces the column-major block directly
(``State.block_reduce``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...formula import inner_products
from ...formula.inner_products import SQDIST, InnerProduct, between_variables, find_inner_products

#: smallest dimension handled by a block: the formula layer's threshold, shared with the generic
#: engine (below, the pair-by-pair lane code is as fast)
MIN_DIM = inner_products.MIN_DIM

#: rows per work item of a kernel with blocks (a multiple of the register tiles' rows), by the
#: largest dimension of its products: each column of y read from memory serves BI rows, which
#: counts from D = 256 (+8% there at 384 rows); below, the smaller block stays in L1 for the
#: rest of the formula (-20% at D = 16 with 384 rows)
BLOCK_ROWS = ((256, 384), (0, 192))


def block_rows(dim: int) -> int:
    """Rows per work item for blocks of products of dimension ``dim`` at most."""
    return next(rows for least, rows in BLOCK_ROWS if dim >= least)

#: (columns, vectors of rows) per register tile: 32 vector registers (AVX-512) or 16
SHAPE_512 = (8, 3)
SHAPE_256 = (4, 3)


@dataclass(frozen=True)
class BlockProduct:
    """One inner product computed by blocks in a kernel: ``ipb<q>`` holds its [TJ][BIP] values."""

    q: int
    product: InnerProduct
    xvar: object  # the i-variable
    yvar: object  # the j-variable

    @property
    def buf(self) -> str:
        return f"ipb{self.q}"


def block_products(formulas, min_dim: int = MIN_DIM) -> list[BlockProduct]:
    """The inner products of ``formulas`` that the kernel computes by blocks: one scalar product
    or squared distance between an i-variable and a j-variable."""
    out = []
    for p in find_inner_products(formulas, min_dim=min_dim):
        if between_variables(p):
            out.append(BlockProduct(len(out), p, p.x, p.y))
    return out


def padded_rows(bi: int, dtype_size: int) -> int:
    """BIP: the rows of a block rounded up to whole 64-byte vectors."""
    lanes = 64 // dtype_size
    return -(-bi // lanes) * lanes


def _scale(p: InnerProduct) -> str:
    return f"(T)({float(p.scale)!r})"


def lane_value(bp: BlockProduct) -> str:
    """The value of the product for row i and lane j in the lane code: its block made row-major
    (``ipbt<q>``, [BIP][TJ], by :func:`tile_code`), one contiguous row of lanes per row."""
    return f"ipbt{bp.q}[(size_t)(i - i0) * TJ + j]"


def fused_finish(bp: BlockProduct) -> bool:
    """Whether the micro-kernel finishes the squared distances as it stores them (unscaled ones:
    a scale is applied by a pass of its own, after the checks of pk_ip_sqclose)."""
    return bp.product.kind == SQDIST and bp.product.scale == 1


def microkernel(bp: BlockProduct) -> list[str]:
    """``static void pk_ip<q>(xt, nr, yr, nc, out)``: out[j * BIP + r] = sum_k xt[k * BIP + r] yr[j * D + k]
    for r < nr (whole vectors) and j < nc.

    With :func:`fused_finish`, also ``(xn, yn, close)``: the stores are the squared distances
    ``max(xn[r] + yn[j] - 2 out, 0)`` (as pk_ip_sqfinish), and ``close[j]`` is set for the
    columns of a register tile where one may have cancelled (below PK_IP_TAU (xn + yn)), for
    pk_ip_sqclose to check."""
    D = bp.product.dim
    fin = fused_finish(bp)
    extra = ", const T *__restrict__ xn, const T *__restrict__ yn, int *__restrict__ close" if fin else ""
    L = [
        f"PK_CONTRACT static void pk_ip{bp.q}(const T *__restrict__ xt, int nr, const T *__restrict__ yr,"
        f" int nc, T *__restrict__ out{extra}, const char *pf, size_t pfbytes)",
        "{",
    ]

    def tile(rb, cb, indent, prefetch=False):
        s = " " * indent
        o = []
        if prefetch:
            o.append(f"{s}for (size_t q = 0; q < pfper && pfo < pfbytes; ++q, pfo += 64)")
            o.append(f"{s}    __builtin_prefetch(pf + pfo, 0, 2);")
        for c in range(rb):
            o.append(f"{s}const T *__restrict__ y{c} = yr + (size_t)(j + {c}) * {D};")
        o.append(s + " ".join(f"pk_vt a{c}_{v} = {{0}};" for c in range(rb) for v in range(cb)))
        o.append(f"{s}const T *__restrict__ xp = xt + r;")
        o.append(f"{s}for (int k = 0; k < {D}; ++k, xp += BIP) {{")
        for v in range(cb):
            o.append(f"{s}    const pk_vt x{v} = *(const pk_vt *)(xp + {v} * PK_VLB);")
        for c in range(rb):
            o.append(f"{s}    const T s{c} = y{c}[k];")
            for v in range(cb):
                o.append(f"{s}    a{c}_{v} += s{c} * x{v};")
        o.append(f"{s}}}")
        if fin:
            o.append(f"{s}pk_vi cl = {{0}};")
            for v in range(cb):
                o.append(f"{s}const pk_vt n{v} = *(const pk_vt *)(xn + r + {v} * PK_VLB);")
            for c in range(rb):
                for v in range(cb):
                    o.append(f"{s}a{c}_{v} = pk_ip_sqstore(a{c}_{v}, n{v}, yn[j + {c}], &cl);")
            o.append(f"{s}if (pk_ip_any(cl))")
            o.append(f"{s}    for (int c = 0; c < {rb}; ++c) close[j + c] = 1;")
        for c in range(rb):
            for v in range(cb):
                o.append(f"{s}*(pk_vt *)(out + (size_t)(j + {c}) * BIP + r + {v} * PK_VLB) = a{c}_{v};")
        return o

    def variant(rb, cb):
        # the next tile's columns are prefetched (to L2), a share in each register tile
        V = [f"const size_t pftiles = (size_t)(nr / ({cb} * PK_VLB)) * (size_t)(nc / {rb}) + 1;",
             "const size_t pfper = (pfbytes / 64 + pftiles) / pftiles;",
             "size_t pfo = 0;",
             "int r = 0;", f"for (; r + {cb} * PK_VLB <= nr; r += {cb} * PK_VLB) {{", "    int j = 0;"]
        V.append(f"    for (; j + {rb} <= nc; j += {rb}) {{")
        V.extend(tile(rb, cb, 8, prefetch=True))
        V.append("    }")
        V.append("    for (; j < nc; ++j) {")
        V.extend(tile(1, cb, 8))
        V.append("    }")
        V.append("}")
        V.append("for (; r < nr; r += PK_VLB) {")
        V.append("    int j = 0;")
        V.append(f"    for (; j + {rb} <= nc; j += {rb}) {{")
        V.extend(tile(rb, 1, 8))
        V.append("    }")
        V.append("    for (; j < nc; ++j) {")
        V.extend(tile(1, 1, 8))
        V.append("    }")
        V.append("}")
        return V

    if fin:
        L.append("    for (int j = 0; j < nc; ++j) close[j] = 0;")
    L.append("#if defined(__AVX512F__)")
    L.extend("    " + x for x in variant(*SHAPE_512))
    L.append("#else")
    L.extend("    " + x for x in variant(*SHAPE_256))
    L.append("#endif")
    L.append("}")
    return L


def item_code(bps) -> list[str]:
    """Run once per work item, before its tiles: the rows' operands packed (transposed), and
    their norms."""
    L = []
    for bp in bps:
        D, q = bp.product.dim, bp.q
        x = f"a{bp.xvar.params[0]} + i0 * {D}"
        L.append(f"T ipxn{q}[BIP];")
        if bp.product.kind == SQDIST:
            # squared distances are translation-invariant: far from the origin, the blocks work on
            # x - c and y - c (c: the mean of the item's rows), so that the expansion does not cancel
            L.append(f"const int ipcen{q} = pk_ip_centre({x}, {D}, (int)(i1 - i0), ipc{q}, ipxn{q});")
            L.append(f"pk_ip_packx({x}, {D}, (int)(i1 - i0), BIP, ipxt{q}, ipxn{q}, ipcen{q} ? ipc{q} : 0);")
        else:
            L.append(f"pk_ip_packx({x}, {D}, (int)(i1 - i0), BIP, ipxt{q}, ipxn{q}, 0);")
        L.append(f"const int ipnr{q} = (int)(((i1 - i0) + PK_VLB - 1) / PK_VLB * PK_VLB);")
    return L


def stage_code(yvars) -> list[str]:
    """In the tile's packing loop (``m`` columns from ``pos`` go to the tile's columns ``n``...):
    the columns' operands, row-major, copied only when the tile gathers several intervals
    (otherwise the blocks read the variable in place)."""
    return [
        f"if (PK_GATHER) memcpy(yr{v.params[0]} + (size_t)n * {v.dim}, a{v.params[0]} + pos * {v.dim},"
        f" (size_t)m * {v.dim} * sizeof(T));"
        for v in yvars
    ]


def pad_code(yvars) -> list[str]:
    """The row-major operands of the tile's columns: ``yp<v>``."""
    return [
        f"const T *__restrict__ yp{i} = PK_GATHER ? yr{i} : a{i} + jt * {v.dim};"
        for v in yvars
        for i in (v.params[0],)
    ]


def tile_code(bps, rowmajor: bool = True) -> list[str]:
    """Run once per tile, before the row loop: the blocks of products of the item's rows, and
    with ``rowmajor`` (the lane code reads them) their row-major copies."""
    L = []
    for bp in bps:
        L.extend(_block_code(bp))
        if rowmajor:
            L.append(f"pk_ip_rowmajor({bp.buf}, npad, BIP, ipnr{bp.q}, ipbt{bp.q}, TJ);")
    return L


def _block_code(bp: BlockProduct) -> list[str]:
    """The block of one product for the tile: products, finishing (squared distances), padding."""
    L = []
    p = bp.product
    D = p.dim
    y = f"yp{bp.yvar.params[0]}"
    q = bp.q
    # the columns of the next tile, if it continues this interval (as in dense reductions)
    v = bp.yvar.params[0]
    pf = (f"(const char *)(a{v} + pos * {D}), pos < end ? (size_t)((end - pos) < TJ ? (end - pos) : TJ)"
          f" * {D} * sizeof(T) : 0")
    if p.kind == SQDIST:
        x = f"a{bp.xvar.params[0]} + i0 * {D}"
        L.append("{")
        L.append(f"    const T *__restrict__ yc = ipcen{q} ?"
                 f" pk_ip_centre_cols({y}, {D}, n, ipc{q}, ipyc{q}) : {y};")
        L.append(f"    const int bad = pk_ip_colnorms(yc, {D}, n, ipyn{q});")
        if fused_finish(bp):
            L.append(f"    pk_ip{q}(ipxt{q}, ipnr{q}, yc, n, {bp.buf}, ipxn{q}, ipyn{q}, ipcl{q}, {pf});")
            L.append(f"    pk_ip_sqclose({bp.buf}, n, BIP, (int)(i1 - i0), {x}, {D}, {y}, ipxn{q},"
                     f" ipyn{q}, ipcl{q});")
        else:
            L.append(f"    pk_ip{q}(ipxt{q}, ipnr{q}, yc, n, {bp.buf}, {pf});")
            L.append(f"    pk_ip_sqfinish({bp.buf}, n, BIP, (int)(i1 - i0), {x}, {D}, {y}, ipxn{q},"
                     f" ipyn{q}, {_scale(p)});")
        L.append(f"    pk_ip_sqfix({bp.buf}, {x}, {D}, (int)(i1 - i0), BIP, {y}, n, ipxn{q},"
                 f" ipyn{q}, bad, {_scale(p)});")
        L.append("}")
        L.append(f"memset({bp.buf} + (size_t)n * BIP, 0, (size_t)(npad - n) * BIP * sizeof(T));")
        return L
    L.append(f"pk_ip{q}(ipxt{q}, ipnr{q}, {y}, n, {bp.buf}, {pf});")
    L.append(f"memset({bp.buf} + (size_t)n * BIP, 0, (size_t)(npad - n) * BIP * sizeof(T));")
    if p.scale != 1:
        L.append(f"pk_ip_scale({bp.buf}, n, BIP, {_scale(p)});")
    return L


def yvars_of(bps) -> list:
    """The j-variables read row-major by the blocks (each once)."""
    out = []
    for bp in bps:
        if bp.yvar not in out:
            out.append(bp.yvar)
    return out


def buffers(bps, T: str, rowmajor: bool = True) -> list[tuple[str, str, int | str]]:
    """(name, C type, size) of the scratch buffers: an int size counts rows of TJ values, a str
    is a number of values."""
    out = []
    for v in yvars_of(bps):
        out.append((f"yr{v.params[0]}", T, v.dim))
    for bp in bps:
        out.append((bp.buf, T, "BIP * TJ"))
        if rowmajor:
            out.append((f"ipbt{bp.q}", T, "BIP * TJ"))
        out.append((f"ipxt{bp.q}", T, f"{bp.product.dim} * BIP"))
        out.append((f"ipyn{bp.q}", T, 1))
        if fused_finish(bp):
            out.append((f"ipcl{bp.q}", "int", 1))
        if bp.product.kind == SQDIST:
            out.append((f"ipc{bp.q}", T, str(bp.product.dim)))
            out.append((f"ipyc{bp.q}", T, bp.product.dim))
    return out
