/* polykeops CPU runtime: helpers of the inner-product block micro-kernels (ipblock.py).
 *
 * Included by a specialised kernel after `typedef ... T;` and `#define TJ`.  A block holds the
 * products of the BI rows of a work item and the TJ columns of a tile, column-major:
 * out[j * BIP + r] (BIP: BI rounded up to whole vectors).  The rows' operands are packed once
 * per item, transposed (xt[k * BIP + r]); the columns' operands are read as they are stored
 * (row-major, yr[j * D + k]).  The micro-kernel (pk_ipN, generated for each product, its
 * dimension D a constant) broadcasts y_j[k] and multiplies vectors of rows of xt.
 *
 * Squared distances are formed as |x|^2 + |y|^2 - 2 x.y, clamped at 0, and recomputed in the
 * difference form sum_k (x_k - y_k)^2 where the expansion cancels (pk_ip_sqfinish: close pairs,
 * whose value is small against |x|^2 + |y|^2) and wherever a row or column norm is not below
 * PK_IP_BIG (pk_ip_sqfix): NaN propagates, infinities stay infinite, and values so large that
 * the expansion would overflow keep the exact form.
 */
#ifndef PK_IPBLOCK_H
#define PK_IPBLOCK_H

#include "pk_transpose8.h"

#if defined(__AVX512F__)
#define PK_VB 64 /* bytes of the micro-kernel's vectors */
#else
#define PK_VB 32
#endif
#define PK_VLB ((int)(PK_VB / sizeof(T))) /* lanes of a micro-kernel vector */

typedef T pk_vt __attribute__((vector_size(PK_VB)));

#define PK_IP_BIG ((T)(sizeof(T) == 4 ? 4.0e37 : 2.0e307))

/* xt[k * bip + r] = x[r * D + k] - c[k] for r < nrows, 0 for nrows <= r < bip; xn[r] = |x_r - c|^2
 * (0 for the padding rows); c: a centre (pk_ip_centre), or 0 for none */
/* The blocks are one op each (a dot product, a squared distance): their multiply-adds are fused
 * (kernels are otherwise compiled with -ffp-contract=off, see pk_math.h) */
#if defined(__GNUC__) && !defined(__clang__)
#define PK_CONTRACT __attribute__((optimize("fp-contract=fast")))
#else
#define PK_CONTRACT
#endif

PK_CONTRACT static void pk_ip_packx(const T *__restrict__ x, int D, int nrows, int bip, T *__restrict__ xt,
                        T *__restrict__ xn, const T *__restrict__ c)
{
    for (int r = 0; r < nrows; ++r) {
        const T *xr = x + (size_t)r * D;
        T s = 0;
        for (int k = 0; k < D; ++k) {
            const T v = c ? xr[k] - c[k] : xr[k];
            xt[(size_t)k * bip + r] = v;
            s += v * v;
        }
        xn[r] = s;
    }
    for (int r = nrows; r < bip; ++r) {
        for (int k = 0; k < D; ++k)
            xt[(size_t)k * bip + r] = 0;
        xn[r] = 0;
    }
}

/* c = the mean of the rows of x (those with a finite norm below PK_IP_BIG); returns whether the
 * blocks should be centred on it: when the rows are far from the origin for their spread
 * (|c|^2 > 4 mean |x - c|^2), where |x|^2 + |y|^2 - 2 x.y cancels for most pairs.  xn: scratch of
 * nrows values (the rows' norms) */
PK_CONTRACT static int pk_ip_centre(const T *__restrict__ x, int D, int nrows, T *__restrict__ c,
                                    T *__restrict__ xn)
{
    int m = 0;
    for (int k = 0; k < D; ++k)
        c[k] = 0;
    for (int r = 0; r < nrows; ++r) {
        const T *xr = x + (size_t)r * D;
        T s = 0;
        for (int k = 0; k < D; ++k)
            s += xr[k] * xr[k];
        xn[r] = s;
        if (!(s <= PK_IP_BIG))
            continue;
        for (int k = 0; k < D; ++k)
            c[k] += xr[k];
        ++m;
    }
    if (m == 0)
        return 0;
    T cn = 0;
    for (int k = 0; k < D; ++k) {
        c[k] /= (T)m;
        cn += c[k] * c[k];
    }
    T spread = 0;
    for (int r = 0; r < nrows; ++r) {
        if (!(xn[r] <= PK_IP_BIG))
            continue;
        const T *xr = x + (size_t)r * D;
        for (int k = 0; k < D; ++k)
            spread += (xr[k] - c[k]) * (xr[k] - c[k]);
    }
    return cn > 4 * spread / (T)m;
}

/* yc[j * D + k] = y[j * D + k] - c[k] for j < n; returns yc */
static const T *pk_ip_centre_cols(const T *__restrict__ y, int D, int n, const T *__restrict__ c, T *__restrict__ yc)
{
    for (int j = 0; j < n; ++j) {
#pragma omp simd
        for (int k = 0; k < D; ++k)
            yc[(size_t)j * D + k] = y[(size_t)j * D + k] - c[k];
    }
    return yc;
}

/* yn[j] = |y_j|^2 for the rows j < n of yr; returns the number of them whose norm is not below
 * PK_IP_BIG */
PK_CONTRACT static int pk_ip_colnorms(const T *__restrict__ yr, int D, int n, T *__restrict__ yn)
{
    int bad = 0;
    for (int j = 0; j < n; ++j) {
        const T *y = yr + (size_t)j * D;
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (int k = 0; k < D; ++k)
            s += y[k] * y[k];
        yn[j] = s;
        bad += !(s <= PK_IP_BIG);
    }
    return bad;
}

PK_CONTRACT static T pk_ip_sqdiff(const T *__restrict__ x, const T *__restrict__ y, int D)
{
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int k = 0; k < D; ++k) {
        const T d = x[k] - y[k];
        s += d * d;
    }
    return s;
}

/* out[j][r] = max(|x_r|^2 + |y_j|^2 - 2 out[j][r], 0) * scale, and the difference form where the
 * expansion is not accurate: its error is a few eps * (|x|^2 + |y|^2), so entries below
 * PK_IP_TAU * (|x|^2 + |y|^2) (close pairs far from the origin, near duplicates) are recomputed;
 * the others keep a relative error of at most about eps / PK_IP_TAU */
#define PK_IP_TAU ((T)(1.0 / 32))
PK_CONTRACT static void pk_ip_sqfinish(T *__restrict__ out, int n, int bip, int nrows, const T *__restrict__ x, int D,
                           const T *__restrict__ yr, const T *__restrict__ xn, const T *__restrict__ yn, T scale)
{
    for (int j = 0; j < n; ++j) {
        T *o = out + (size_t)j * bip;
        const T b = yn[j];
        int close = 0;
#pragma omp simd reduction(+ : close)
        for (int r = 0; r < bip; ++r) {
            const T v = xn[r] + b - 2 * o[r];
            close += v < PK_IP_TAU * (xn[r] + b);
            o[r] = v > 0 ? v : 0;
        }
        if (close) {
            const T *y = yr + (size_t)j * D;
            for (int r = 0; r < nrows; ++r)
                if (o[r] < PK_IP_TAU * (xn[r] + b))
                    o[r] = pk_ip_sqdiff(x + (size_t)r * D, y, D);
        }
        if (scale != 1) {
#pragma omp simd
            for (int r = 0; r < bip; ++r)
                o[r] *= scale;
        }
    }
}

/* The finishing of pk_ip_sqfinish done by the micro-kernel on its registers (unscaled squared
 * distances): a = the vector of x.y of rows r.., returns max(xn + yn - 2 a, 0) and flags in cl the
 * lanes where the expansion may have cancelled; pk_ip_sqclose then checks the flagged columns. */
typedef __typeof__(__builtin_choose_expr(sizeof(T) == 4, (int32_t)0, (int64_t)0)) pk_ii;
typedef pk_ii pk_vi __attribute__((vector_size(PK_VB))); /* the lanes of a comparison of pk_vt */

static inline pk_vt pk_ip_sqstore(pk_vt a, pk_vt xn, T yn, pk_vi *cl)
{
    const pk_vt s = xn + yn;
    const pk_vt v = s - (T)2 * a;
    *cl |= v < PK_IP_TAU * s;
    return (pk_vt)((pk_vi)v & (v > 0)); /* max(v, 0), NaN to 0 as in pk_ip_sqfinish */
}

static inline int pk_ip_any(pk_vi m)
{
    int any = 0;
    for (int l = 0; l < PK_VLB; ++l)
        any |= m[l] != 0;
    return any;
}

PK_CONTRACT static void pk_ip_sqclose(T *__restrict__ out, int n, int bip, int nrows, const T *__restrict__ x, int D,
                          const T *__restrict__ yr, const T *__restrict__ xn, const T *__restrict__ yn,
                          const int *__restrict__ close)
{
    for (int j = 0; j < n; ++j) {
        if (!close[j])
            continue;
        T *o = out + (size_t)j * bip;
        const T *y = yr + (size_t)j * D;
        for (int r = 0; r < nrows; ++r)
            if (o[r] < PK_IP_TAU * (xn[r] + yn[j]))
                o[r] = pk_ip_sqdiff(x + (size_t)r * D, y, D);
    }
}

/* t[r * tj + j] = o[j * bip + r] for r < nr and j < n (n a multiple of 8): the block row-major,
 * for the lane code (one row of lanes at a time, contiguous), by 8 x 8 transpositions in registers */
typedef T pk_ip_v8 __attribute__((vector_size(8 * sizeof(T))));
typedef pk_ii pk_ip_m8 __attribute__((vector_size(8 * sizeof(pk_ii))));
static void pk_ip_rowmajor(const T *__restrict__ o, int n, int bip, int nr, T *__restrict__ t, int tj)
{
    const int nr8 = nr & ~7;
    for (int j = 0; j < n; j += 8) {
        for (int r = 0; r < nr8; r += 8) {
            pk_ip_v8 a[8], c[8];
            for (int q = 0; q < 8; ++q) /* a[q]: rows r..r+7 of column j+q */
                memcpy(&a[q], o + (size_t)(j + q) * bip + r, sizeof(pk_ip_v8));
            PK_TRANSPOSE8(pk_ip_v8, pk_ip_m8, a, c); /* c[q]: columns j..j+7 of row r+q */
            for (int q = 0; q < 8; ++q)
                memcpy(t + (size_t)(r + q) * tj + j, &c[q], sizeof(pk_ip_v8));
        }
        for (int r = nr8; r < nr; ++r)
            for (int q = 0; q < 8; ++q)
                t[(size_t)r * tj + j + q] = o[(size_t)(j + q) * bip + r];
    }
}

/* the difference form where a norm is not finite (or too large for the expansion) */
PK_CONTRACT static void pk_ip_sqfix(T *__restrict__ out, const T *__restrict__ x, int D, int nrows, int bip,
                        const T *__restrict__ yr, int n, const T *__restrict__ xn, const T *__restrict__ yn,
                        int badcols, T scale)
{
    for (int r = 0; r < nrows; ++r) {
        if (xn[r] <= PK_IP_BIG)
            continue;
        for (int j = 0; j < n; ++j)
            out[(size_t)j * bip + r] = pk_ip_sqdiff(x + (size_t)r * D, yr + (size_t)j * D, D) * scale;
    }
    if (!badcols)
        return;
    for (int j = 0; j < n; ++j) {
        if (yn[j] <= PK_IP_BIG)
            continue;
        for (int r = 0; r < nrows; ++r)
            out[(size_t)j * bip + r] = pk_ip_sqdiff(x + (size_t)r * D, yr + (size_t)j * D, D) * scale;
    }
}

/* out[j][r] *= scale */
static void pk_ip_scale(T *__restrict__ out, int n, int bip, T scale)
{
    for (int j = 0; j < n; ++j) {
#pragma omp simd
        for (int r = 0; r < bip; ++r)
            out[(size_t)j * bip + r] *= scale;
    }
}

#endif /* PK_IPBLOCK_H */
