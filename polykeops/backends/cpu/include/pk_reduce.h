/* polykeops CPU runtime: per-tile reduction helpers, included once per (T, ACC) pair.
 *
 * Before including, define:
 *   PK_T       the formula's scalar type (float or double)
 *   PK_ACC     the accumulation type of sums (float or double)
 *   PK_FN(x)   a name-mangling macro (e.g. x##_f32_f64), or just x
 *   PK_EXPACC  the exp of PK_ACC (pk_expf or pk_exp)
 * The semantics are those of polykeops/formula/reductions.py: component-wise
 * selection with NaN winning and ties to the first index; K smallest values
 * ascending with NaNs first; max-shifted sums of exponentials combined with the
 * reference rule (a non-finite running max is replaced by 0 for the shift).
 */

#ifndef PK_W_FOR
#define PK_W_FOR(T) (sizeof(T) == 4 ? 16 : 8)
#endif
#if defined(__AVX__)
#include <immintrin.h>
#endif

/* sum of f[0..n) (lane-parallel; the order of additions is unspecified) */
static inline PK_ACC PK_FN(pk_sum_tile)(const PK_T *__restrict__ f, int n)
{
    PK_ACC s = 0;
#pragma omp simd reduction(+ : s)
    for (int j = 0; j < n; ++j)
        s += (PK_ACC)f[j];
    return s;
}

/* sum of a[0..n) * b[0..n) */
static inline PK_ACC PK_FN(pk_dot_tile)(const PK_T *__restrict__ a, const PK_T *__restrict__ b, int n)
{
    PK_ACC s = 0;
#pragma omp simd reduction(+ : s)
    for (int j = 0; j < n; ++j)
        s += (PK_ACC)(a[j] * b[j]);
    return s;
}

/* Kahan-Babuska (Neumaier) addition of b (with compensation cb) into (s, c) */
static inline void PK_FN(pk_neumaier_add)(PK_ACC *s, PK_ACC *c, PK_ACC b, PK_ACC cb)
{
    PK_ACC a = *s, t = a + b;
    PK_ACC big = (a >= 0 ? a : -a) >= (b >= 0 ? b : -b) ? (a - t) + b : (b - t) + a;
    *s = t;
    /* once the sum is infinite (or NaN) the compensation is meaningless: keep it finite */
    *c = isfinite(t) ? *c + big + cb : 0;
}

/* compensated sum of f[0..n): per-lane Kahan sums, lanes merged with Neumaier */
#define PK_KW 8
static inline void PK_FN(pk_kahan_tile)(const PK_T *__restrict__ f, int n, PK_ACC *s, PK_ACC *c)
{
    PK_ACC ls[PK_KW], lc[PK_KW];
    for (int l = 0; l < PK_KW; ++l)
        ls[l] = lc[l] = 0;
    int j = 0;
    for (; j + PK_KW <= n; j += PK_KW) {
#pragma omp simd
        for (int l = 0; l < PK_KW; ++l) {
            PK_ACC y = (PK_ACC)f[j + l] - lc[l];
            PK_ACC t = ls[l] + y;
            PK_ACC nc = (t - ls[l]) - y;
            lc[l] = nc == nc ? nc : 0; /* inf - inf: drop the compensation, keep the sum */
            ls[l] = t;
        }
    }
    for (int l = 0; j < n; ++j, ++l) {
        PK_ACC y = (PK_ACC)f[j] - lc[l];
        PK_ACC t = ls[l] + y;
        PK_ACC nc = (t - ls[l]) - y;
        lc[l] = nc == nc ? nc : 0;
        ls[l] = t;
    }
    for (int l = 0; l < PK_KW; ++l)
        PK_FN(pk_neumaier_add)(s, c, ls[l], -lc[l]);
}

/* (m, s[0..L)) <- combination of itself (smaller j) and (m2, s2): the online max-shift rule */
static inline void PK_FN(pk_lse_combine)(PK_ACC *m, PK_ACC *s, PK_ACC m2, const PK_ACC *s2, int L)
{
    PK_ACC m1 = *m;
    PK_ACC mm = (m1 != m1 || m2 != m2) ? (PK_ACC)NAN : (m1 > m2 ? m1 : m2);
    PK_ACC ms = isfinite(mm) ? mm : 0;
    PK_ACC f1 = isfinite(m1) ? m1 : 0, f2 = isfinite(m2) ? m2 : 0;
    /* an empty (or all -inf) side has sums 0: its factor is irrelevant, avoid 0 * inf */
    PK_ACC c1 = m1 == -(PK_ACC)INFINITY ? 0 : PK_EXPACC(f1 - ms);
    PK_ACC c2 = m2 == -(PK_ACC)INFINITY ? 0 : PK_EXPACC(f2 - ms);
    for (int l = 0; l < L; ++l)
        s[l] = s[l] * c1 + s2[l] * c2;
    *m = mm;
}

/* tile of a scalar formula f (and optional weights g, dg x tj): combine into (m, s[dg])
 * with s = sum exp(f - m) g; with softmax != 0, s has 1 + dg entries: sum exp(f - m), then
 * sum exp(f - m) g.  e is scratch of n PK_ACC. */
static inline void PK_FN(pk_lse_tile)(const PK_T *__restrict__ f, const PK_T *__restrict__ g, int n, int tj,
                                      int dg, int softmax, PK_ACC *m, PK_ACC *s, PK_ACC *__restrict__ e,
                                      PK_ACC *tmp)
{
    if (n <= 0)
        return;
    PK_ACC mt = -(PK_ACC)INFINITY;
    int has_nan = 0;
#pragma omp simd reduction(max : mt) reduction(| : has_nan)
    for (int j = 0; j < n; ++j) {
        PK_ACC v = (PK_ACC)f[j];
        mt = v > mt ? v : mt;
        has_nan |= v != v;
    }
    if (has_nan)
        mt = (PK_ACC)NAN;
    PK_ACC ms = isfinite(mt) ? mt : 0;
    int L = softmax ? 1 + dg : dg;
    if (g == 0 || softmax) {
        PK_ACC acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < n; ++j) {
            PK_ACC v = PK_EXPACC((PK_ACC)f[j] - ms);
            e[j] = v;
            acc += v;
        }
        tmp[0] = acc;
    } else {
#pragma omp simd
        for (int j = 0; j < n; ++j)
            e[j] = PK_EXPACC((PK_ACC)f[j] - ms);
    }
    if (g) {
        PK_ACC *t = softmax ? tmp + 1 : tmp;
        for (int d = 0; d < dg; ++d) {
            const PK_T *__restrict__ gd = g + (size_t)d * tj;
            PK_ACC acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int j = 0; j < n; ++j)
                acc += e[j] * (PK_ACC)gd[j];
            t[d] = acc;
        }
    }
    PK_FN(pk_lse_combine)(m, s, mt, tmp, L);
}

/* NaN-first "less than" used by KMin ordering */
#define PK_LT_NANFIRST(a, b) (((a) != (a)) ? ((b) == (b)) : ((a) < (b)))

/* is (v2, i2) strictly preferable to (v1, i1) (min when kind == 0, max when 1)?  Used to
 * merge candidates whose indices are in any order: NaN first, then value, then index. */
static inline int PK_FN(pk_select_better)(PK_T v2, int64_t i2, PK_T v1, int64_t i1, int kind)
{
    if (i2 < 0)
        return 0;
    if (i1 < 0)
        return 1;
    int n1 = v1 != v1, n2 = v2 != v2;
    if (n1 || n2)
        return n2 && (!n1 || i2 < i1);
    if (v2 == v1)
        return i2 < i1;
    return kind ? v2 > v1 : v2 < v1;
}

/* best of f[0..n) into (v, i) (state: smaller j), indices offset by j0 */
static inline void PK_FN(pk_select_tile)(const PK_T *__restrict__ f, int n, int64_t j0, int kind, PK_T *v,
                                         int64_t *i)
{
    if (n <= 0)
        return;
    PK_T bv;
    int64_t bi;
    int j;
    if (n >= 2 * PK_W_FOR(PK_T)) {
        enum { W = PK_W_FOR(PK_T) };
        PK_T lv[W];
        int32_t li[W];
        for (int l = 0; l < W; ++l) {
            lv[l] = f[l];
            li[l] = l;
        }
        for (j = W; j + W <= n; j += W) {
            if (kind == 0) {
#pragma omp simd
                for (int l = 0; l < W; ++l) {
                    PK_T x = f[j + l];
                    int take = (x < lv[l]) | ((x != x) & (lv[l] == lv[l]));
                    lv[l] = take ? x : lv[l];
                    li[l] = take ? j + l : li[l];
                }
            } else {
#pragma omp simd
                for (int l = 0; l < W; ++l) {
                    PK_T x = f[j + l];
                    int take = (x > lv[l]) | ((x != x) & (lv[l] == lv[l]));
                    lv[l] = take ? x : lv[l];
                    li[l] = take ? j + l : li[l];
                }
            }
        }
        bv = lv[0];
        bi = li[0];
        for (int l = 1; l < W; ++l)
            if (PK_FN(pk_select_better)(lv[l], li[l], bv, bi, kind)) {
                bv = lv[l];
                bi = li[l];
            }
    } else {
        bv = f[0];
        bi = 0;
        j = 1;
    }
    for (; j < n; ++j) {
        PK_T x = f[j];
        int take = kind ? (x > bv) : (x < bv);
        if (take || (x != x && bv == bv)) {
            bv = x;
            bi = j;
        }
    }
    /* the state covers smaller j: it wins ties */
    int64_t gi = bi + j0;
    int64_t si = *i;
    int take2 = si < 0 || (kind ? (bv > *v) : (bv < *v)) || (bv != bv && *v == *v);
    if (take2) {
        *v = bv;
        *i = gi;
    }
}

/* combine the state (v1, i1) (smaller j) with (v2, i2) */
static inline void PK_FN(pk_select_combine)(PK_T *v1, int64_t *i1, PK_T v2, int64_t i2, int kind)
{
    if (i2 < 0)
        return;
    int take2 = *i1 < 0 || (kind ? (v2 > *v1) : (v2 < *v1)) || (v2 != v2 && *v1 == *v1);
    if (take2) {
        *v1 = v2;
        *i1 = i2;
    }
}

/* may any of the 16 values f[0..16) go into a K-min list whose worst kept value is thr, i.e. is
 * any !(f[l] >= thr) (below it, or NaN)?  One mask test per vector (f: any alignment). */
static inline int PK_FN(pk_any_below16)(const PK_T *__restrict__ f, PK_T thr)
{
#if defined(__AVX512F__)
    if (sizeof(PK_T) == 4)
        return _mm512_cmp_ps_mask(_mm512_loadu_ps((const float *)f), _mm512_set1_ps((float)thr), _CMP_NGE_UQ) != 0;
    const __m512d t = _mm512_set1_pd((double)thr);
    return (_mm512_cmp_pd_mask(_mm512_loadu_pd((const double *)f), t, _CMP_NGE_UQ) |
            _mm512_cmp_pd_mask(_mm512_loadu_pd((const double *)f + 8), t, _CMP_NGE_UQ)) != 0;
#elif defined(__AVX__)
    int m = 0;
    for (int h = 0; h < 16 * (int)sizeof(PK_T); h += 32) {
        const char *fh = (const char *)f + h;
        if (sizeof(PK_T) == 4)
            m |= _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps((const float *)fh), _mm256_set1_ps((float)thr),
                                                  _CMP_NGE_UQ));
        else
            m |= _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd((const double *)fh), _mm256_set1_pd((double)thr),
                                                  _CMP_NGE_UQ));
    }
    return m != 0;
#else
    int any = 0;
#pragma omp simd reduction(| : any)
    for (int l = 0; l < 16; ++l)
        any |= !(f[l] >= thr);
    return any;
#endif
}

/* insert the values f[0..n) (indices j0 + j) into the sorted K-list (v, i) of stride D */
static inline void PK_FN(pk_kmin_tile)(const PK_T *__restrict__ f, int n, int64_t j0, int K, int D, PK_T *v,
                                       int64_t *i)
{
    const size_t last = (size_t)(K - 1) * D;
    enum { CH = 16 };
    for (int j = 0; j < n; ++j) {
        if ((j & (CH - 1)) == 0 && i[last] >= 0) {
            /* skip the chunks of CH values that cannot enter the full list (a vector test
             * against its current worst value: a superset of the values to insert, since the
             * worst only improves); the values of the first other chunk go one by one */
            const PK_T thr = v[last];
            while (j + CH <= n && !PK_FN(pk_any_below16)(f + j, thr))
                j += CH;
            if (j >= n)
                break;
        }
        PK_T x = f[j];
        if (i[last] >= 0 && !PK_LT_NANFIRST(x, v[last]))
            continue;
        int p = K - 1;
        while (p > 0 && (i[(size_t)(p - 1) * D] < 0 || PK_LT_NANFIRST(x, v[(size_t)(p - 1) * D]))) {
            v[(size_t)p * D] = v[(size_t)(p - 1) * D];
            i[(size_t)p * D] = i[(size_t)(p - 1) * D];
            --p;
        }
        v[(size_t)p * D] = x;
        i[(size_t)p * D] = j0 + j;
    }
}

/* Blocks of values out[j * bip + r] (rows r < nrows of a work item, columns j < n of a tile,
 * indices j0 + j; bip a multiple of the vector width): reduced into the rows' states directly,
 * without copying each row's values out.  Row r's entries are at v + r * stride, i + r * stride
 * (stride in bytes: the states' record size).  For each column, one vector test of a group of
 * rows against their thresholds (thr[bip], scratch) finds the rows it may change: a superset,
 * each then updated exactly by the row-wise helpers (so the results are those of the tile
 * helpers, ties and NaNs included).  The thresholds (set once per work item by
 * pk_block_select_thr, then kept up to date) of a row: its current value to beat, NaN (every
 * value a candidate) while its state is not full, -inf (min) or +inf (max) once its
 * state holds NaNs that nothing can displace (only NaNs stay candidates, never taken). */
#define PK_BLOCK_ROW(p, r, stride, ty) ((ty *)((const char *)(p) + (size_t)(r) * (stride)))
static inline PK_T PK_FN(pk_block_thr)(PK_T v, int64_t i, int kind)
{
    if (i < 0)
        return (PK_T)NAN;
    if (v != v)
        return kind ? (PK_T)INFINITY : -(PK_T)INFINITY;
    return v;
}

/* does any of the W values o[l] possibly beat thr[l] (kind 0: !(o >= thr), 1: !(o <= thr))?
 * (o: 64-byte aligned) */
static inline int PK_FN(pk_block_any)(const PK_T *__restrict__ o, const PK_T *__restrict__ thr, int kind)
{
#if defined(__AVX512F__)
    if (sizeof(PK_T) == 4) {
        const __m512 x = _mm512_load_ps((const float *)o), t = _mm512_loadu_ps((const float *)thr);
        return kind ? _mm512_cmp_ps_mask(x, t, _CMP_NLE_UQ) != 0 : _mm512_cmp_ps_mask(x, t, _CMP_NGE_UQ) != 0;
    } else {
        const __m512d x = _mm512_load_pd((const double *)o), t = _mm512_loadu_pd((const double *)thr);
        return kind ? _mm512_cmp_pd_mask(x, t, _CMP_NLE_UQ) != 0 : _mm512_cmp_pd_mask(x, t, _CMP_NGE_UQ) != 0;
    }
#elif defined(__AVX__)
    int m = 0;
    for (int h = 0; h < 64; h += 32) {
        const char *oh = (const char *)o + h, *th = (const char *)thr + h;
        if (sizeof(PK_T) == 4) {
            const __m256 x = _mm256_load_ps((const float *)oh), t = _mm256_loadu_ps((const float *)th);
            m |= _mm256_movemask_ps(kind ? _mm256_cmp_ps(x, t, _CMP_NLE_UQ) : _mm256_cmp_ps(x, t, _CMP_NGE_UQ));
        } else {
            const __m256d x = _mm256_load_pd((const double *)oh), t = _mm256_loadu_pd((const double *)th);
            m |= _mm256_movemask_pd(kind ? _mm256_cmp_pd(x, t, _CMP_NLE_UQ) : _mm256_cmp_pd(x, t, _CMP_NGE_UQ));
        }
    }
    return m != 0;
#else
    enum { W = PK_W_FOR(PK_T) };
    int any = 0;
    if (kind == 0) {
#pragma omp simd reduction(| : any)
        for (int l = 0; l < W; ++l)
            any |= !(o[l] >= thr[l]);
    } else {
#pragma omp simd reduction(| : any)
        for (int l = 0; l < W; ++l)
            any |= !(o[l] <= thr[l]);
    }
    return any;
#endif
}

/* The selection of the rows: K == 0 for one value (Min, Max...: pk_select_tile, kind 0 for min, 1
 * for max), K >= 1 for a K-min list (pk_kmin_tile, kind 0); the threshold reads the last entry. */

/* the thresholds of the rows (once per work item: pk_block_select keeps them up to date) */
static inline void PK_FN(pk_block_select_thr)(int bip, int nrows, int kind, int K, const PK_T *v, const int64_t *i,
                                              size_t stride, PK_T *__restrict__ thr)
{
    const int e = K > 0 ? K - 1 : 0;
    for (int r = 0; r < bip; ++r)
        thr[r] = r < nrows ? PK_FN(pk_block_thr)(PK_BLOCK_ROW(v, r, stride, const PK_T)[e],
                                                 PK_BLOCK_ROW(i, r, stride, const int64_t)[e], kind)
                           : (kind ? (PK_T)INFINITY : -(PK_T)INFINITY);
}

static inline void PK_FN(pk_block_select)(const PK_T *__restrict__ out, int n, int bip, int64_t j0, int nrows,
                                          int kind, int K, PK_T *v, int64_t *i, size_t stride,
                                          PK_T *__restrict__ thr)
{
    enum { W = PK_W_FOR(PK_T) };
    const int e = K > 0 ? K - 1 : 0;
    for (int j = 0; j < n; ++j) {
        const PK_T *o = out + (size_t)j * bip;
        for (int r0 = 0; r0 < nrows; r0 += W) {
            if (!PK_FN(pk_block_any)(o + r0, thr + r0, kind))
                continue;
            const int r1 = r0 + W < nrows ? r0 + W : nrows;
            for (int r = r0; r < r1; ++r) {
                if (kind ? o[r] <= thr[r] : o[r] >= thr[r])
                    continue;
                PK_T *vr = PK_BLOCK_ROW(v, r, stride, PK_T);
                int64_t *ir = PK_BLOCK_ROW(i, r, stride, int64_t);
                if (K > 0)
                    PK_FN(pk_kmin_tile)(o + r, 1, j0 + j, K, 1, vr, ir);
                else
                    PK_FN(pk_select_tile)(o + r, 1, j0 + j, kind, vr, ir);
                thr[r] = PK_FN(pk_block_thr)(vr[e], ir[e], kind);
            }
        }
    }
}

/* the two selections, as the kernels call them */
static inline void PK_FN(pk_select_block)(const PK_T *__restrict__ out, int n, int bip, int64_t j0, int nrows,
                                          int kind, PK_T *v, int64_t *i, size_t stride, PK_T *__restrict__ thr)
{
    PK_FN(pk_block_select)(out, n, bip, j0, nrows, kind, 0, v, i, stride, thr);
}

static inline void PK_FN(pk_kmin_block)(const PK_T *__restrict__ out, int n, int bip, int64_t j0, int nrows, int K,
                                        PK_T *v, int64_t *i, size_t stride, PK_T *__restrict__ thr)
{
    PK_FN(pk_block_select)(out, n, bip, j0, nrows, 0, K, v, i, stride, thr);
}

/* merge the K-list (v2, i2) (larger j) into (v1, i1): stable, keeps the K first; tv, ti scratch of K */
static inline void PK_FN(pk_kmin_merge)(PK_T *v1, int64_t *i1, const PK_T *v2, const int64_t *i2, int K,
                                        int D, PK_T *tv, int64_t *ti)
{
    int a = 0, b = 0;
    for (int q = 0; q < K; ++q) {
        int a_ok = a < K && i1[(size_t)a * D] >= 0;
        int b_ok = b < K && i2[(size_t)b * D] >= 0;
        if (b_ok && (!a_ok || PK_LT_NANFIRST(v2[(size_t)b * D], v1[(size_t)a * D]))) {
            tv[q] = v2[(size_t)b * D];
            ti[q] = i2[(size_t)b * D];
            ++b;
        } else if (a_ok) {
            tv[q] = v1[(size_t)a * D];
            ti[q] = i1[(size_t)a * D];
            ++a;
        } else {
            tv[q] = (PK_T)INFINITY;
            ti[q] = -1;
        }
    }
    for (int q = 0; q < K; ++q) {
        v1[(size_t)q * D] = tv[q];
        i1[(size_t)q * D] = ti[q];
    }
}
