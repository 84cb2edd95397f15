/* polykeops generic CPU engine: blocks of inner products (a register-blocked micro-kernel).
 *
 * Included by pk_generic_impl.h once per (T, ACC) instantiation (PK_T, PK_FN), inside the
 * target region of the module's instruction set (_generic_*.inc), so that the vectors below are
 * those of that set: 64 bytes and 32 registers with AVX-512, 32 bytes and 16 registers with
 * AVX2, 16 bytes otherwise.
 *
 * A block (pk_gipblock, built by generic.py from polykeops.formula.inner_products) is the value of
 * an inner product `sum_k x[k] y[k]` or a squared distance `sum_k (x[k] - y[k])^2` of dimension
 * D >= 16 for the rows of a work item x the columns of a tile, computed before the lane phase.
 * The operands are the slots of the interpreter as they already are: x a row slot (an
 * i-variable or an i-only expression), transposed [dim][BI] once per item; y a column slot (a
 * j-variable or a j-only expression), transposed [dim][TJ] once per tile.  The micro-kernel keeps
 * an RB rows x CB vectors of columns tile of accumulators in registers: per k, CB vector loads of
 * y[k][j...] and RB broadcasts of x[k][r...] feed RB * CB fused multiply-adds.  The result,
 * G[r][j] (a row of TJ lanes per row), is what the lane phase reads as the product's slot.
 *
 * Squared distances are formed as |x|^2 + |y|^2 - 2 G (row norms once per item, column norms
 * once per tile), clamped at 0, and recomputed in the difference form where the expansion cancels
 * (values below (|x|^2 + |y|^2) / 32: close pairs, near duplicates) and wherever a row or column
 * norm is not below PKG_IP_BIG (inf, NaN, or so large that the expansion could overflow), so that
 * NaN propagates and infinities stay infinite, as in the pair-by-pair code.  The same rules as the
 * specialised kernels' blocks (pk_ipblock.h); only the order of the D-sum differs from the
 * pair-by-pair form.
 */

#ifndef PK_GENERIC_IPBLOCK_SHAPES
#define PK_GENERIC_IPBLOCK_SHAPES
/* X-lists for the unrolled register tiles: PKG_ROWS(n, M, a) expands M(0, a) ... M(n - 1, a);
 * PKG_COLS(n, M, r) expands M(r, 0) ... M(r, n - 1) */
#define PKG_ROWS_1(M, a) M(0, a)
#define PKG_ROWS_2(M, a) PKG_ROWS_1(M, a) M(1, a)
#define PKG_ROWS_3(M, a) PKG_ROWS_2(M, a) M(2, a)
#define PKG_ROWS_4(M, a) PKG_ROWS_3(M, a) M(3, a)
#define PKG_ROWS_5(M, a) PKG_ROWS_4(M, a) M(4, a)
#define PKG_ROWS_6(M, a) PKG_ROWS_5(M, a) M(5, a)
#define PKG_ROWS_7(M, a) PKG_ROWS_6(M, a) M(6, a)
#define PKG_ROWS_8(M, a) PKG_ROWS_7(M, a) M(7, a)
#define PKG_ROWS__(n, M, a) PKG_ROWS_##n(M, a)
#define PKG_ROWS(n, M, a) PKG_ROWS__(n, M, a)
#define PKG_COLS_1(M, r) M(r, 0)
#define PKG_COLS_2(M, r) PKG_COLS_1(M, r) M(r, 1)
#define PKG_COLS_3(M, r) PKG_COLS_2(M, r) M(r, 2)
#define PKG_COLS_4(M, r) PKG_COLS_3(M, r) M(r, 3)
#define PKG_COLS__(n, M, r) PKG_COLS_##n(M, r)
#define PKG_COLS(n, M, r) PKG_COLS__(n, M, r)

#define PKG_DECL(r, c) PKG_V a##r##_##c = PKG_ZERO;
#define PKG_ROW_DECL(r, cb) PKG_COLS(cb, PKG_DECL, r)
#define PKG_YLOAD(r, c) const PKG_V y##c = PKG_LOAD(yp + (c) * PKG_VL);
#define PKG_FMA(r, c) a##r##_##c += x##r * y##c;
#define PKG_ROW_FMA(r, cb)                                                                                 \
    {                                                                                                      \
        const PK_T x##r = xp[r];                                                                           \
        PKG_COLS(cb, PKG_FMA, r)                                                                           \
    }
#define PKG_STORE(r, c) PKG_STOREV(o + (size_t)(r) * os + (c) * PKG_VL, a##r##_##c);
#define PKG_ROW_STORE(r, cb) PKG_COLS(cb, PKG_STORE, r)

/* o[r * os + j] = sum_k x[k * xs + r] * y[k * ys + j] for r < RB, j < CB * PKG_VL */
#define PKG_TILE_FN(NAME, RB, CB)                                                                          \
    static inline __attribute__((always_inline)) void NAME(const PK_T *__restrict__ x, int64_t xs,        \
                                                           const PK_T *__restrict__ y, int64_t ys, int D,  \
                                                           PK_T *__restrict__ o, int64_t os)               \
    {                                                                                                      \
        PKG_ROWS(RB, PKG_ROW_DECL, CB)                                                                     \
        const PK_T *xp = x, *yp = y;                                                                       \
        for (int k = 0; k < D; ++k, xp += xs, yp += ys) {                                                  \
            PKG_COLS(CB, PKG_YLOAD, 0)                                                                     \
            PKG_ROWS(RB, PKG_ROW_FMA, CB)                                                                  \
        }                                                                                                  \
        PKG_ROWS(RB, PKG_ROW_STORE, CB)                                                                    \
    }

/* register tiles: rows x vectors of columns (accumulators + CB loads + a broadcast <= registers) */
#if defined(__AVX512F__)
#define PKG_VB 64
#define PKG_RB 8 /* 24 accumulators of 32 registers */
#define PKG_CB 3
#define PKG_RB2 4
#elif defined(__AVX2__)
#define PKG_VB 32
#define PKG_RB 4 /* 12 accumulators of 16 registers */
#define PKG_CB 3
#define PKG_RB2 2
#else
#define PKG_VB 16
#define PKG_RB 4 /* 8 accumulators (no fused multiply-add: a product register too) */
#define PKG_CB 2
#define PKG_RB2 2
#endif

#define PKG_IP_TAU (1.0 / 32)
/* the centring area of a squared-distance block, after its column norms: the flag (1 value), the
 * centre (D), the centred rows [D][BI] and the centred columns [D][TJ] */
#define PKG_CENTRE_LEN(D, BI, TJ) ((size_t)1 + (D) + (size_t)(D) * (BI) + (size_t)(D) * (TJ))
#endif /* PK_GENERIC_IPBLOCK_SHAPES */

/* ---- per (T, ACC) instantiation ---- */

typedef PK_T PK_FN(pkg_v) __attribute__((vector_size(PKG_VB)));
#define PKG_V PK_FN(pkg_v)
#define PKG_VL ((int)(PKG_VB / sizeof(PK_T)))
#define PKG_ZERO ((PKG_V){0})
#define PKG_LOAD(p) PK_FN(pkg_load)(p)
#define PKG_STOREV(p, v) PK_FN(pkg_store)(p, v)
#define PKG_IP_BIG ((PK_T)(PK_T_IS_FLOAT ? 4.0e37 : 2.0e307))

static inline __attribute__((always_inline)) PKG_V PK_FN(pkg_load)(const PK_T *p)
{
    PKG_V v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline __attribute__((always_inline)) void PK_FN(pkg_store)(PK_T *p, PKG_V v) { memcpy(p, &v, sizeof(v)); }

PKG_TILE_FN(PK_FN(pkg_tile_main), PKG_RB, PKG_CB)
PKG_TILE_FN(PK_FN(pkg_tile_r1), PKG_RB, 1)
PKG_TILE_FN(PK_FN(pkg_tile_mid), PKG_RB2, PKG_CB)
PKG_TILE_FN(PK_FN(pkg_tile_mid1), PKG_RB2, 1)
PKG_TILE_FN(PK_FN(pkg_tile_1c), 1, PKG_CB)
PKG_TILE_FN(PK_FN(pkg_tile_11), 1, 1)

/* the rows [r0, r0 + rb) (rb one of the tile heights) x nv vectors of columns */
#define PKG_ROWSTRIP(MAIN, ONE)                                                                             \
    {                                                                                                       \
        int v = 0;                                                                                          \
        for (; v + PKG_CB <= nv; v += PKG_CB)                                                               \
            MAIN(x + r, xs, y + (size_t)v * PKG_VL, ys, D, o + (size_t)r * os + (size_t)v * PKG_VL, os);   \
        for (; v < nv; ++v)                                                                                 \
            ONE(x + r, xs, y + (size_t)v * PKG_VL, ys, D, o + (size_t)r * os + (size_t)v * PKG_VL, os);    \
    }

/* o[r * os + j] = sum_{k < D} x[k * xs + r] * y[k * ys + j] for r < nrows and j < n rounded up to
 * whole vectors (the caller's buffers have room for them: TJ is a multiple of 32 lanes) */
static void PK_FN(pkg_gemm)(const PK_T *__restrict__ x, int64_t xs, int nrows, const PK_T *__restrict__ y,
                             int64_t ys, int n, int D, PK_T *__restrict__ o, int64_t os)
{
    const int nv = (n + PKG_VL - 1) / PKG_VL;
    int r = 0;
    for (; r + PKG_RB <= nrows; r += PKG_RB)
        PKG_ROWSTRIP(PK_FN(pkg_tile_main), PK_FN(pkg_tile_r1))
    for (; r + PKG_RB2 <= nrows; r += PKG_RB2)
        PKG_ROWSTRIP(PK_FN(pkg_tile_mid), PK_FN(pkg_tile_mid1))
    for (; r < nrows; ++r)
        PKG_ROWSTRIP(PK_FN(pkg_tile_1c), PK_FN(pkg_tile_11))
}

/* sum_k (x[k * xs] - y[k * ys])^2: the difference form of one pair, in the order of k */
static PK_T PK_FN(pkg_sqdiff1)(const PK_T *x, int64_t xs, const PK_T *y, int64_t ys, int D)
{
    PK_T s = 0;
    for (int k = 0; k < D; ++k) {
        const PK_T d = x[(size_t)k * xs] - y[(size_t)k * ys];
        s += d * d;
    }
    return s;
}

/* nrm[l] = sum_k v[k * vs + l]^2 for l < n (lanes of rows or of columns) */
static void PK_FN(pkg_norms)(const PK_T *__restrict__ v, int64_t vs, int n, int D, PK_T *__restrict__ nrm)
{
    for (int l = 0; l < n; ++l)
        nrm[l] = 0;
    for (int k = 0; k < D; ++k) {
        const PK_T *__restrict__ a = v + (size_t)k * vs;
        PK_SIMD for (int l = 0; l < n; ++l) nrm[l] += a[l] * a[l];
    }
}

/* the block b for the rows [0, nrows) of the item and the n columns of the tile:
 * xb: base of the x slot's [dim][BI] buffer; yb: base of the y slot's [dim][TJ] buffer;
 * out: the block slot's buffer ([count][BI][TJ], then BI row norms and TJ column norms, and the
 * centring area of a squared distance) */
static void PK_FN(pkg_block)(const pk_gipblock *bk, const PK_T *xb, const PK_T *yb, PK_T *out, int nrows, int n,
                              int BI, int TJ)
{
    const int D = bk->dim;
    const int64_t xs = (int64_t)bk->xk * BI, ys = (int64_t)bk->yk * TJ;
    const PK_T scale = (PK_T)bk->scale;
    /* squared distances: the centring area after the row and column norms (pkg_block_rows) */
    const PK_T *cen = out + (size_t)BI * TJ + BI + TJ, *centre = cen + 1;
    const int centred = bk->kind != 0 && *cen != 0;
    for (int c = 0; c < bk->count; ++c) {
        const PK_T *x = xb + (size_t)c * bk->xc * BI, *y = yb + (size_t)c * bk->yc * TJ;
        PK_T *o = out + (size_t)c * BI * TJ;
        if (!centred) /* else on the centred operands, below */
            PK_FN(pkg_gemm)(x, xs, nrows, y, ys, n, D, o, TJ);
        if (bk->kind == 0) {
            if (scale != 1)
                for (int r = 0; r < nrows; ++r) {
                    PK_T *__restrict__ g = o + (size_t)r * TJ;
                    PK_SIMD for (int j = 0; j < n; ++j) g[j] *= scale;
                }
            continue;
        }
        /* squared distance (count is 1): the row norms were computed for the item, centred
         * (pkg_block_rows) when the points are far from the origin: the columns are centred too */
        const PK_T *__restrict__ xn = out + (size_t)BI * TJ;
        PK_T *__restrict__ yn = out + (size_t)BI * TJ + BI;
        if (centred) {
            const PK_T *xc = centre + D;
            PK_T *yc = (PK_T *)xc + (size_t)D * BI;
            for (int k = 0; k < D; ++k) {
                const PK_T *__restrict__ yk = y + (size_t)k * ys;
                PK_T *__restrict__ ck = yc + (size_t)k * TJ;
                const PK_T ct = centre[k];
                PK_SIMD for (int j = 0; j < n; ++j) ck[j] = yk[j] - ct;
            }
            PK_FN(pkg_gemm)(xc, BI, nrows, yc, TJ, n, D, o, TJ);
            PK_FN(pkg_norms)(yc, TJ, n, D, yn);
        } else {
            PK_FN(pkg_norms)(y, ys, n, D, yn);
        }
        int badcols = 0;
        for (int j = 0; j < n; ++j)
            badcols += !(yn[j] <= PKG_IP_BIG);
        const PK_T tau = (PK_T)PKG_IP_TAU;
        for (int r = 0; r < nrows; ++r) {
            PK_T *__restrict__ g = o + (size_t)r * TJ;
            const PK_T a = xn[r];
            if (!(a <= PKG_IP_BIG)) { /* the whole row in the difference form, vectorised over j */
                for (int k = 0; k < D; ++k) {
                    const PK_T xk = x[(size_t)k * xs + r];
                    const PK_T *__restrict__ yk = y + (size_t)k * ys;
                    if (k == 0) {
                        PK_SIMD for (int j = 0; j < n; ++j) { const PK_T d = xk - yk[j]; g[j] = d * d; }
                    } else {
                        PK_SIMD for (int j = 0; j < n; ++j) { const PK_T d = xk - yk[j]; g[j] += d * d; }
                    }
                }
                if (scale != 1) {
                    PK_SIMD for (int j = 0; j < n; ++j) g[j] *= scale;
                }
                continue;
            }
            int close = 0;
            PK_SIMD for (int j = 0; j < n; ++j) {
                const PK_T s = a + yn[j];
                const PK_T v = s - 2 * g[j];
                close += v < tau * s;
                g[j] = v > 0 ? v : 0;
            }
            if (close) {
                for (int j = 0; j < n; ++j)
                    if (g[j] < tau * (a + yn[j]))
                        g[j] = PK_FN(pkg_sqdiff1)(x + r, xs, y + j, ys, D);
            }
            if (scale != 1) {
                PK_SIMD for (int j = 0; j < n; ++j) g[j] *= scale;
            }
        }
        if (badcols) { /* columns with a norm that is not finite (or too large): the difference form */
            for (int j = 0; j < n; ++j) {
                if (yn[j] <= PKG_IP_BIG)
                    continue;
                for (int r = 0; r < nrows; ++r)
                    o[(size_t)r * TJ + j] = PK_FN(pkg_sqdiff1)(x + r, xs, y + j, ys, D) * scale;
            }
        }
    }
}

/* the row norms of the squared distance block bk for the item (once per work item).  Squared
 * distances are translation-invariant: when the rows lie far from the origin for their spread
 * (|c|^2 > 4 mean |x - c|^2, c the mean of the rows with a finite norm below PKG_IP_BIG), where the
 * expansion would cancel for most pairs, the block works on x - c and y - c (as the specialised
 * kernels do, pk_ipblock.h) */
static void PK_FN(pkg_block_rows)(const pk_gipblock *bk, const PK_T *xb, PK_T *out, int nrows, int BI, int TJ)
{
    if (bk->kind == 0)
        return;
    const int D = bk->dim;
    const int64_t xs = (int64_t)bk->xk * BI;
    PK_T *xn = out + (size_t)BI * TJ;
    PK_T *cen = xn + BI + TJ, *centre = cen + 1, *xc = centre + D;
    PK_FN(pkg_norms)(xb, xs, nrows, D, xn);
    int m = 0;
    for (int r = 0; r < nrows; ++r)
        m += xn[r] <= PKG_IP_BIG;
    *cen = 0;
    if (m == 0)
        return;
    PK_T cn = 0;
    for (int k = 0; k < D; ++k) {
        const PK_T *xk = xb + (size_t)k * xs;
        PK_T sum = 0;
        for (int r = 0; r < nrows; ++r)
            sum += xn[r] <= PKG_IP_BIG ? xk[r] : 0;
        centre[k] = sum / (PK_T)m;
        cn += centre[k] * centre[k];
    }
    PK_T spread = 0;
    for (int k = 0; k < D; ++k) {
        const PK_T *xk = xb + (size_t)k * xs;
        for (int r = 0; r < nrows; ++r) {
            const PK_T d = xk[r] - centre[k];
            spread += xn[r] <= PKG_IP_BIG ? d * d : 0;
        }
    }
    if (!(cn > 4 * spread / (PK_T)m))
        return;
    *cen = 1;
    for (int k = 0; k < D; ++k) {
        const PK_T *__restrict__ xk = xb + (size_t)k * xs;
        PK_T *__restrict__ ck = xc + (size_t)k * BI;
        const PK_T ct = centre[k];
        PK_SIMD for (int r = 0; r < nrows; ++r) ck[r] = xk[r] - ct;
    }
    PK_FN(pkg_norms)(xc, BI, nrows, D, xn);
}

#undef PKG_V
#undef PKG_VL
#undef PKG_ZERO
#undef PKG_LOAD
#undef PKG_STOREV
#undef PKG_IP_BIG
