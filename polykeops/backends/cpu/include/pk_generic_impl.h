/* polykeops generic CPU engine: the interpreter, included once per (T, ACC) pair.
 *
 * Before including, define PK_T, PK_ACC, PK_FN(x) (name mangling), PK_EXPACC,
 * PK_LOGACC and PK_T_IS_FLOAT (1 for float, 0 for double).  See pk_generic.h
 * for the program format.  The cases of the elementwise ops without parameters
 * are the C renderer's rules (generated, PK_GENERIC_ELEMENTWISE_CASES); the others
 * are written here with the same semantics.
 */

#include "pk_reduce.h"
#include "pk_transpose8.h"

/* the PKM_* math functions of this instantiation and PK_GENERIC_ELEMENTWISE_CASES, the cases of
 * the elementwise ops, generated from the C renderer's rules (see pk_generic.h) */
#define PK_GENERIC_OPS_CASES
#include "pk_generic_ops.inc"
#undef PK_GENERIC_OPS_CASES

#ifndef PK_SIMD
#define PK_SIMD _Pragma("omp simd")
#endif

typedef PK_T PK_FN(pk_t);

/* the blocks of inner products (pk_gipblock): micro-kernel of this instruction set */
#include "pk_generic_ipblock.h"

/* x ** e for an integer e >= 1: the same product tree as the C renderer */
static PK_T PK_FN(pk_powi)(PK_T a, int e)
{
    if (e == 1)
        return a;
    PK_T h = PK_FN(pk_powi)(a, e / 2);
    PK_T sq = h * h;
    return (e % 2) ? sq * a : sq;
}

static inline PK_T PK_FN(pk_sign)(PK_T a) { return a > 0 ? (PK_T)1 : (a < 0 ? (PK_T)-1 : a); }

static inline PK_T PK_FN(pk_round)(PK_T a, PK_T s)
{
    return PK_FN(pk_sign)(a) * PKM_FLOOR(PKM_FABS(a) * s + (PK_T)0.5) / s;
}

/* views of the slots: base pointer, component stride, lane stride (0 or 1) */
typedef struct {
    PK_T **vb;
    int64_t *vcs;
    int32_t *vls;
    const pk_gslot *slots;
} PK_FN(pk_views);

#define PKV_ARGP(q, k)                                                                                      \
    (V->vb[in->arg[q]] + (V->slots[in->arg[q]].dim == 1 ? 0 : (int64_t)(k) * V->vcs[in->arg[q]]))
#define PKV_ARGL(q) (V->vls[in->arg[q]])
#define PKV_ADIM(q) (V->slots[in->arg[q]].dim)
#define PKV_OUTP(k) (V->vb[in->out] + (int64_t)(k) * V->vcs[in->out])

#define PK_UN_CASE(NAME, EXPR)                                                                              \
    case PKOP_##NAME:                                                                                       \
        for (int k = 0; k < in->dim; ++k) {                                                                 \
            const PK_T *__restrict__ A = PKV_ARGP(0, k);                                                    \
            PK_T *__restrict__ O = PKV_OUTP(k);                                                             \
            if (PKV_ARGL(0)) {                                                                              \
                PK_SIMD for (int l = 0; l < n; ++l)                                                         \
                {                                                                                           \
                    const PK_T a = A[l];                                                                    \
                    O[l] = (EXPR);                                                                          \
                }                                                                                           \
            } else {                                                                                        \
                const PK_T a = A[0];                                                                        \
                const PK_T v_ = (EXPR);                                                                     \
                for (int l = 0; l < n; ++l)                                                                 \
                    O[l] = v_;                                                                              \
            }                                                                                               \
        }                                                                                                   \
        break;

#define PK_BIN_CASE(NAME, EXPR)                                                                             \
    case PKOP_##NAME:                                                                                       \
        for (int k = 0; k < in->dim; ++k) {                                                                 \
            const PK_T *__restrict__ A = PKV_ARGP(0, k);                                                    \
            const PK_T *__restrict__ B = PKV_ARGP(1, k);                                                    \
            PK_T *__restrict__ O = PKV_OUTP(k);                                                             \
            const int la = PKV_ARGL(0), lb = PKV_ARGL(1);                                                   \
            if (la && lb) {                                                                                 \
                PK_SIMD for (int l = 0; l < n; ++l)                                                         \
                {                                                                                           \
                    const PK_T a = A[l], b = B[l];                                                          \
                    O[l] = (EXPR);                                                                          \
                }                                                                                           \
            } else if (la) {                                                                                \
                const PK_T b = B[0];                                                                        \
                PK_SIMD for (int l = 0; l < n; ++l)                                                         \
                {                                                                                           \
                    const PK_T a = A[l];                                                                    \
                    O[l] = (EXPR);                                                                          \
                }                                                                                           \
            } else if (lb) {                                                                                \
                const PK_T a = A[0];                                                                        \
                PK_SIMD for (int l = 0; l < n; ++l)                                                         \
                {                                                                                           \
                    const PK_T b = B[l];                                                                    \
                    O[l] = (EXPR);                                                                          \
                }                                                                                           \
            } else {                                                                                        \
                const PK_T a = A[0], b = B[0];                                                              \
                const PK_T v_ = (EXPR);                                                                     \
                for (int l = 0; l < n; ++l)                                                                 \
                    O[l] = v_;                                                                              \
            }                                                                                               \
        }                                                                                                   \
        break;

/* ternary ops are rare: one loop with general lane strides */
#define PK_TER_CASE(NAME, EXPR)                                                                             \
    case PKOP_##NAME:                                                                                       \
        for (int k = 0; k < in->dim; ++k) {                                                                 \
            const PK_T *__restrict__ A = PKV_ARGP(0, k);                                                    \
            const PK_T *__restrict__ B = PKV_ARGP(1, k);                                                    \
            const PK_T *__restrict__ C = PKV_ARGP(2, k);                                                    \
            PK_T *__restrict__ O = PKV_OUTP(k);                                                             \
            const int la = PKV_ARGL(0), lb = PKV_ARGL(1), lc = PKV_ARGL(2);                                 \
            for (int l = 0; l < n; ++l) {                                                                   \
                const PK_T a = A[l * la], b = B[l * lb], c = C[l * lc];                                     \
                O[l] = (EXPR);                                                                              \
            }                                                                                               \
        }                                                                                                   \
        break;

static void PK_FN(pk_exec)(const pk_ginstr *in, const PK_FN(pk_views) * V, int n)
{
    const PK_T zero = 0, one = 1;
    (void)zero;
    (void)one;
    switch (in->op) {
        PK_UN_CASE(COPY, a)
        PK_GENERIC_ELEMENTWISE_CASES
    case PKOP_ROUND: {
        const PK_T s = (PK_T)in->dp;
        for (int k = 0; k < in->dim; ++k) {
            const PK_T *__restrict__ A = PKV_ARGP(0, k);
            PK_T *__restrict__ O = PKV_OUTP(k);
            const int la = PKV_ARGL(0);
            for (int l = 0; l < n; ++l)
                O[l] = PK_FN(pk_round)(A[l * la], s);
        }
        break;
    }
    case PKOP_POW: {
        const int e = in->ip0, m = e < 0 ? -e : e;
        for (int k = 0; k < in->dim; ++k) {
            const PK_T *__restrict__ A = PKV_ARGP(0, k);
            PK_T *__restrict__ O = PKV_OUTP(k);
            const int la = PKV_ARGL(0);
            if (m == 2 && e > 0 && la) {
                PK_SIMD for (int l = 0; l < n; ++l) O[l] = A[l] * A[l];
                continue;
            }
            for (int l = 0; l < n; ++l) {
                const PK_T a = A[l * la];
                PK_T p = e == 0 ? one : (m > 16 ? PKM_POW(a, (PK_T)m) : PK_FN(pk_powi)(a, m));
                O[l] = e < 0 ? (m > 16 ? PKM_POW(a, (PK_T)e) : one / p) : p;
            }
        }
        break;
    }
    case PKOP_CLAMPINT: {
        const PK_T lo = (PK_T)in->ip0, hi = (PK_T)in->ip1;
        for (int k = 0; k < in->dim; ++k) {
            const PK_T *__restrict__ A = PKV_ARGP(0, k);
            PK_T *__restrict__ O = PKV_OUTP(k);
            const int la = PKV_ARGL(0);
            for (int l = 0; l < n; ++l) {
                const PK_T a = A[l * la];
                O[l] = a < lo ? lo : (a > hi ? hi : a);  // a selection: +-inf give the bounds
            }
        }
        break;
    }
    case PKOP_SUM: {
        const int da = PKV_ADIM(0), la = PKV_ARGL(0);
        PK_T *__restrict__ O = PKV_OUTP(0);
        const PK_T *__restrict__ A0 = PKV_ARGP(0, 0);
        for (int l = 0; l < n; ++l)
            O[l] = A0[l * la];
        for (int k = 1; k < da; ++k) {
            const PK_T *__restrict__ A = PKV_ARGP(0, k);
            if (la) {
                PK_SIMD for (int l = 0; l < n; ++l) O[l] += A[l];
            } else {
                for (int l = 0; l < n; ++l)
                    O[l] += A[0];
            }
        }
        break;
    }
    case PKOP_SUMT:
        for (int k = 0; k < in->dim; ++k) {
            const PK_T *__restrict__ A = PKV_ARGP(0, 0);
            PK_T *__restrict__ O = PKV_OUTP(k);
            const int la = PKV_ARGL(0);
            for (int l = 0; l < n; ++l)
                O[l] = A[l * la];
        }
        break;
    case PKOP_MAX:
    case PKOP_MIN: {
        const int da = PKV_ADIM(0), la = PKV_ARGL(0), mx = in->op == PKOP_MAX;
        PK_T *__restrict__ O = PKV_OUTP(0);
        const PK_T *__restrict__ A0 = PKV_ARGP(0, 0);
        for (int l = 0; l < n; ++l)
            O[l] = A0[l * la];
        for (int k = 1; k < da; ++k) {
            const PK_T *__restrict__ A = PKV_ARGP(0, k);
            for (int l = 0; l < n; ++l) {
                const PK_T x = A[l * la], o = O[l];
                O[l] = ((mx ? x > o : x < o) || x != x) ? x : o;
            }
        }
        break;
    }
    case PKOP_ARGMAX:
    case PKOP_ARGMIN: {
        const int da = PKV_ADIM(0), la = PKV_ARGL(0), mx = in->op == PKOP_ARGMAX;
        PK_T *__restrict__ O = PKV_OUTP(0);
        for (int l = 0; l < n; ++l) {
            PK_T best = PKV_ARGP(0, 0)[l * la];
            PK_T idx = 0;
            for (int k = 1; k < da; ++k) {
                const PK_T x = PKV_ARGP(0, k)[l * la];
                if ((mx ? x > best : x < best) || (x != x && best == best)) {
                    best = x;
                    idx = (PK_T)k;
                }
            }
            O[l] = idx;
        }
        break;
    }
    case PKOP_ONEHOT: {
        const PK_T *__restrict__ A = PKV_ARGP(0, 0);
        const int la = PKV_ARGL(0);
        for (int k = 0; k < in->dim; ++k) {
            PK_T *__restrict__ O = PKV_OUTP(k);
            for (int l = 0; l < n; ++l)
                O[l] = PK_FN(pk_round)(A[l * la], one) == (PK_T)k ? one : zero;
        }
        break;
    }
    case PKOP_TAKE: { /* a (rows x d), k (scalar): row round(k) of a, zeros outside [0, rows) */
        const int d = in->dim, rows = PKV_ADIM(0) / in->dim, la = PKV_ARGL(0), lk = PKV_ARGL(1);
        const PK_T *__restrict__ K = PKV_ARGP(1, 0);
        for (int l = 0; l < n; ++l) {
            const PK_T r = PK_FN(pk_round)(K[l * lk], one);
            const int ok = r >= zero && r < (PK_T)rows; /* NaN: no row */
            const int base = ok ? (int)r * d : 0;
            for (int c = 0; c < d; ++c)
                PKV_OUTP(c)[l] = ok ? PKV_ARGP(0, base + c)[l * la] : zero;
        }
        break;
    }
    case PKOP_ELEM: {
        const PK_T *__restrict__ A = PKV_ARGP(0, in->ip0);
        PK_T *__restrict__ O = PKV_OUTP(0);
        const int la = PKV_ARGL(0);
        for (int l = 0; l < n; ++l)
            O[l] = A[l * la];
        break;
    }
    case PKOP_ELEMT: {
        const PK_T *__restrict__ A = PKV_ARGP(0, 0);
        const int la = PKV_ARGL(0);
        for (int k = 0; k < in->dim; ++k) {
            PK_T *__restrict__ O = PKV_OUTP(k);
            for (int l = 0; l < n; ++l)
                O[l] = k == in->ip0 ? A[l * la] : A[l * la] * zero;
        }
        break;
    }
    case PKOP_EXTRACT: {
        const int la = PKV_ARGL(0);
        for (int k = 0; k < in->dim; ++k) {
            const PK_T *__restrict__ A = PKV_ARGP(0, in->ip0 + k);
            PK_T *__restrict__ O = PKV_OUTP(k);
            for (int l = 0; l < n; ++l)
                O[l] = A[l * la];
        }
        break;
    }
    case PKOP_EXTRACTT: {
        const int la = PKV_ARGL(0), da = PKV_ADIM(0), start = in->ip0;
        const PK_T *__restrict__ A0 = PKV_ARGP(0, 0);
        for (int k = 0; k < in->dim; ++k) {
            PK_T *__restrict__ O = PKV_OUTP(k);
            if (k >= start && k < start + da) {
                const PK_T *__restrict__ A = PKV_ARGP(0, k - start);
                for (int l = 0; l < n; ++l)
                    O[l] = A[l * la];
            } else {
                for (int l = 0; l < n; ++l)
                    O[l] = A0[l * la] * zero;
            }
        }
        break;
    }
    case PKOP_CONCAT: {
        const int da = PKV_ADIM(0);
        for (int k = 0; k < in->dim; ++k) {
            const int q = k < da ? 0 : 1;
            const PK_T *__restrict__ A = PKV_ARGP(q, q ? k - da : k);
            const int la = PKV_ARGL(q);
            PK_T *__restrict__ O = PKV_OUTP(k);
            for (int l = 0; l < n; ++l)
                O[l] = A[l * la];
        }
        break;
    }
    case PKOP_MATVECMULT: { /* a (rows x cols), x (cols) */
        const int cols = PKV_ADIM(1), la = PKV_ARGL(0), lx = PKV_ARGL(1);
        for (int r = 0; r < in->dim; ++r) {
            PK_T *__restrict__ O = PKV_OUTP(r);
            for (int l = 0; l < n; ++l) {
                PK_T s = PKV_ARGP(0, r * cols)[l * la] * PKV_ARGP(1, 0)[l * lx];
                for (int c = 1; c < cols; ++c)
                    s += PKV_ARGP(0, r * cols + c)[l * la] * PKV_ARGP(1, c)[l * lx];
                O[l] = s;
            }
        }
        break;
    }
    case PKOP_VECMATMULT: { /* x (rows), a (rows x cols) */
        const int rows = PKV_ADIM(0), cols = in->dim, lx = PKV_ARGL(0), la = PKV_ARGL(1);
        for (int c = 0; c < cols; ++c) {
            PK_T *__restrict__ O = PKV_OUTP(c);
            for (int l = 0; l < n; ++l) {
                PK_T s = PKV_ARGP(0, 0)[l * lx] * PKV_ARGP(1, c)[l * la];
                for (int r = 1; r < rows; ++r)
                    s += PKV_ARGP(0, r)[l * lx] * PKV_ARGP(1, r * cols + c)[l * la];
                O[l] = s;
            }
        }
        break;
    }
    case PKOP_TENSORPROD: {
        const int m = PKV_ADIM(0), nn = PKV_ADIM(1), la = PKV_ARGL(0), lb = PKV_ARGL(1);
        for (int r = 0; r < m; ++r)
            for (int c = 0; c < nn; ++c) {
                const PK_T *__restrict__ A = PKV_ARGP(0, r);
                const PK_T *__restrict__ B = PKV_ARGP(1, c);
                PK_T *__restrict__ O = PKV_OUTP(r * nn + c);
                for (int l = 0; l < n; ++l)
                    O[l] = A[l * la] * B[l * lb];
            }
        break;
    }
    case PKOP_SQDIST: { /* Sum(Square(a - b)), fused */
        const int dm = in->ip0;
        PK_T *__restrict__ O = PKV_OUTP(0);
        const int la = PKV_ARGL(0), lb = PKV_ARGL(1);
        for (int k = 0; k < dm; ++k) {
            const PK_T *__restrict__ A = PKV_ARGP(0, k);
            const PK_T *__restrict__ B = PKV_ARGP(1, k);
            if (la && lb) {
                if (k == 0) {
                    PK_SIMD for (int l = 0; l < n; ++l) { const PK_T d = A[l] - B[l]; O[l] = d * d; }
                } else {
                    PK_SIMD for (int l = 0; l < n; ++l) { const PK_T d = A[l] - B[l]; O[l] += d * d; }
                }
            } else if (la) {
                const PK_T b = B[0];
                if (k == 0) {
                    PK_SIMD for (int l = 0; l < n; ++l) { const PK_T d = A[l] - b; O[l] = d * d; }
                } else {
                    PK_SIMD for (int l = 0; l < n; ++l) { const PK_T d = A[l] - b; O[l] += d * d; }
                }
            } else if (lb) {
                const PK_T a = A[0];
                if (k == 0) {
                    PK_SIMD for (int l = 0; l < n; ++l) { const PK_T d = a - B[l]; O[l] = d * d; }
                } else {
                    PK_SIMD for (int l = 0; l < n; ++l) { const PK_T d = a - B[l]; O[l] += d * d; }
                }
            } else {
                for (int l = 0; l < n; ++l) {
                    const PK_T d = A[l * la] - B[l * lb];
                    O[l] = k == 0 ? d * d : O[l] + d * d;
                }
            }
        }
        break;
    }
    default:
        break;
    }
}

/* ---------------------------------------------------------------------------
 * the driver
 * ------------------------------------------------------------------------- */

typedef struct {
    const pk_gprogram *p;
    int nacc, nval, nidx, nconsts;
    size_t *soff; /* scratch offset of each slot's buffer (0: none) */
    size_t off_views, off_consts, off_eb, off_tmp, off_kt, bytes;
    size_t rec, off_val, off_idx; /* a row's state: sums at 0, values at off_val, indices at off_idx */
} PK_FN(pk_gctx);

static void PK_FN(pk_gstate_init)(const pk_gprogram *p, PK_ACC *acc, PK_T *val, int64_t *idx, int nacc,
                                  int nval)
{
    switch (p->family) {
    case PKF_SUM:
        for (int q = 0; q < nacc; ++q)
            acc[q] = 0;
        break;
    case PKF_LSE:
    case PKF_SOFTMAX:
        acc[0] = -(PK_ACC)INFINITY;
        for (int q = 1; q < nacc; ++q)
            acc[q] = 0;
        break;
    default:
        for (int q = 0; q < nval; ++q) {
            val[q] = p->kind ? -(PK_T)INFINITY : (PK_T)INFINITY;
            idx[q] = -1;
        }
    }
}

/* (acc1, val1, idx1) <- combine with the record 2 (larger j) */
static void PK_FN(pk_gstate_combine)(const pk_gprogram *p, PK_ACC *acc1, PK_T *val1, int64_t *idx1,
                                     const PK_ACC *acc2, const PK_T *val2, const int64_t *idx2, int nacc,
                                     char *kt)
{
    const int D = p->fdim;
    switch (p->family) {
    case PKF_SUM:
        if (p->kahan) {
            for (int d = 0; d < D; ++d)
                PK_FN(pk_neumaier_add)(&acc1[d], &acc1[D + d], acc2[d], acc2[D + d]);
        } else {
            for (int d = 0; d < D; ++d)
                acc1[d] += acc2[d];
        }
        break;
    case PKF_LSE:
    case PKF_SOFTMAX:
        PK_FN(pk_lse_combine)(&acc1[0], acc1 + 1, acc2[0], acc2 + 1, nacc - 1);
        break;
    case PKF_SELECT:
        for (int d = 0; d < D; ++d)
            PK_FN(pk_select_combine)(&val1[d], &idx1[d], val2[d], idx2[d], p->kind);
        break;
    default: {
        PK_T *tv = (PK_T *)kt;
        int64_t *ti = (int64_t *)(kt + PK_ALIGN64((size_t)p->K * sizeof(PK_T)));
        for (int d = 0; d < D; ++d)
            PK_FN(pk_kmin_merge)(val1 + d, idx1 + d, val2 + d, idx2 + d, p->K, D, tv, ti);
    }
    }
}

static void PK_FN(pk_gstate_finalize)(const pk_gprogram *p, const pk_call *c, int64_t row, const PK_ACC *acc,
                                      const PK_T *val, const int64_t *idx, int nval)
{
    const int D = p->fdim;
    PK_T *o0 = (PK_T *)c->outs[0];
    switch (p->family) {
    case PKF_SUM:
        o0 += row * D;
        for (int d = 0; d < D; ++d) {
            PK_ACC s = acc[d];
            o0[d] = (PK_T)(p->kahan && isfinite(s) ? s + acc[D + d] : s);
        }
        break;
    case PKF_LSE: {
        const int dg = p->gslot >= 0 ? p->gdim : 1;
        const PK_ACC m = acc[0];
        if (p->log) {
            const PK_ACC ms = isfinite(m) ? m : 0;
            o0 += row * dg;
            for (int d = 0; d < dg; ++d)
                o0[d] = (PK_T)(ms + PK_LOGACC(acc[1 + d]));
        } else {
            o0 += row * (1 + dg);
            o0[0] = (PK_T)m;
            for (int d = 0; d < dg; ++d)
                o0[1 + d] = (PK_T)acc[1 + d];
        }
        break;
    }
    case PKF_SOFTMAX: {
        const int dg = p->gdim;
        o0 += row * dg;
        for (int d = 0; d < dg; ++d)
            o0[d] = (PK_T)(acc[2 + d] / acc[1]);
        break;
    }
    default: {
        int q = 0;
        if (p->want_value) {
            PK_T *o = (PK_T *)c->outs[q++] + row * nval;
            for (int r = 0; r < nval; ++r)
                o[r] = val[r];
        }
        if (p->want_index) {
            int64_t *o = (int64_t *)c->outs[q] + row * nval;
            for (int r = 0; r < nval; ++r)
                o[r] = idx[r];
        }
    }
    }
}

/* buf[k * TJ + j] = src[j * d + k] for j < n, k < d: the columns of a tile, transposed 8 x 8 at a time
 * in registers (8 loads of 8 consecutive values, 24 shuffles, 8 stores) */
typedef PK_T PK_FN(pk_v8) __attribute__((vector_size(8 * sizeof(PK_T))));
#if PK_T_IS_FLOAT
typedef int32_t PK_FN(pk_m8) __attribute__((vector_size(32)));
#else
typedef int64_t PK_FN(pk_m8) __attribute__((vector_size(64)));
#endif
static void PK_FN(pk_transpose_cols)(const PK_T *__restrict__ src, int d, int n, PK_T *__restrict__ buf, int TJ)
{
    typedef PK_FN(pk_v8) v8;
    typedef PK_FN(pk_m8) m8;
    int j = 0;
    if (d >= 8) {
        for (; j + 8 <= n; j += 8) {
            int k = 0;
            for (; k + 8 <= d; k += 8) {
                v8 r[8], t[8];
                for (int q = 0; q < 8; ++q)
                    memcpy(&r[q], src + (size_t)(j + q) * d + k, sizeof(v8));
                PK_TRANSPOSE8(v8, m8, r, t); /* t[q]: component k + q of columns j..j+7 */
                for (int q = 0; q < 8; ++q)
                    memcpy(buf + (size_t)(k + q) * TJ + j, &t[q], sizeof(v8));
            }
            for (; k < d; ++k)
                for (int q = 0; q < 8; ++q)
                    buf[(size_t)k * TJ + j + q] = src[(size_t)(j + q) * d + k];
        }
    }
    for (; j < n; ++j)
        for (int k = 0; k < d; ++k)
            buf[(size_t)k * TJ + j] = src[(size_t)j * d + k];
}

/* rows [i0, i1) (at most BI) of batch b, reduced over the niv j intervals iv[2s], iv[2s+1];
 * into the state records st (initialised by the caller: the driver) */
static void PK_FN(pk_grows)(const PK_FN(pk_gctx) * ctx, const pk_call *c, int64_t b, int64_t i0, int64_t i1,
                            const int64_t *iv, int64_t niv, char *st, char *scratch)
{
    const pk_gprogram *p = ctx->p;
    const int BI = p->BI, TJ = p->TJ, ns = p->nslots;
    const int nrows = (int)(i1 - i0);
    const int64_t *bo = c->boff + b * p->nvars;

    PK_FN(pk_views) V;
    V.vb = (PK_T **)(scratch + ctx->off_views);
    V.vcs = (int64_t *)(scratch + ctx->off_views + PK_ALIGN64(sizeof(PK_T *) * ns));
    V.vls = (int32_t *)((char *)V.vcs + PK_ALIGN64(sizeof(int64_t) * ns));
    V.slots = p->slots;
    PK_T *consts = (PK_T *)(scratch + ctx->off_consts);
    for (int q = 0; q < ctx->nconsts; ++q)
        consts[q] = (PK_T)p->consts[q];

    /* views for the whole item */
    for (int s = 0; s < ns; ++s) {
        const pk_gslot *sl = &p->slots[s];
        PK_T *buf = (PK_T *)(scratch + ctx->soff[s]);
        switch (sl->kind) {
        case PKS_CONST:
            V.vb[s] = consts + sl->index;
            V.vcs[s] = 1;
            V.vls[s] = 0;
            break;
        case PKS_PARAM:
            V.vb[s] = (PK_T *)c->args[sl->index] + bo[sl->index];
            V.vcs[s] = 1;
            V.vls[s] = 0;
            break;
        case PKS_UNIFORM:
            V.vb[s] = buf;
            V.vcs[s] = 1;
            V.vls[s] = 0;
            break;
        case PKS_IVAR:
        case PKS_ROW:
            V.vb[s] = buf;
            V.vcs[s] = BI;
            V.vls[s] = 1;
            break;
        case PKS_BLOCK: /* [count][BI][TJ]: row r's lanes at r * TJ */
            V.vb[s] = buf;
            V.vcs[s] = (int64_t)BI * TJ;
            V.vls[s] = 1;
            break;
        default: /* JVAR, TILE, LANE */
            V.vb[s] = buf;
            V.vcs[s] = TJ;
            V.vls[s] = 1;
        }
    }
    const pk_ginstr *code = p->code;
    const pk_ginstr *c_row = code + p->n_uniform;
    const pk_ginstr *c_tile = c_row + p->n_row;
    const pk_ginstr *c_lane = c_tile + p->n_tile;

    for (int q = 0; q < p->n_uniform; ++q)
        PK_FN(pk_exec)(&code[q], &V, 1);
    /* rows of the block, transposed */
    for (int s = 0; s < ns; ++s) {
        const pk_gslot *sl = &p->slots[s];
        if (sl->kind != PKS_IVAR)
            continue;
        const PK_T *src = (const PK_T *)c->args[sl->index] + bo[sl->index] + i0 * sl->dim;
        PK_T *buf = V.vb[s];
        for (int r = 0; r < nrows; ++r)
            for (int k = 0; k < sl->dim; ++k)
                buf[(size_t)k * BI + r] = src[(size_t)r * sl->dim + k];
    }
    for (int q = 0; q < p->n_row; ++q)
        PK_FN(pk_exec)(&c_row[q], &V, nrows);
    for (int q = 0; q < p->nblocks; ++q) /* the row norms of the squared distances' blocks */
        PK_FN(pkg_block_rows)(&p->blocks[q], V.vb[p->blocks[q].x], V.vb[p->blocks[q].out], nrows, BI, TJ);
    /* from now on, i-slots are read one row at a time (lane stride 0) */
    PK_T *row_base[ns > 0 ? ns : 1];
    for (int s = 0; s < ns; ++s) {
        row_base[s] = V.vb[s];
        if (p->slots[s].kind == PKS_IVAR || p->slots[s].kind == PKS_ROW)
            V.vls[s] = 0;
    }

    PK_ACC *eb = (PK_ACC *)(scratch + ctx->off_eb);
    PK_ACC *tmp = (PK_ACC *)(scratch + ctx->off_tmp);

    const int D = p->fdim;
    for (int64_t q = 0; q < niv; ++q) {
    const int64_t ja = iv[2 * q] > 0 ? iv[2 * q] : 0;
    const int64_t jb = iv[2 * q + 1] < c->ny ? iv[2 * q + 1] : c->ny;
    for (int64_t jt = ja; jt < jb; jt += TJ) {
        const int n = (int)((jb - jt) < TJ ? (jb - jt) : TJ);
        for (int s = 0; s < ns; ++s) {
            const pk_gslot *sl = &p->slots[s];
            if (sl->kind != PKS_JVAR)
                continue;
            const PK_T *src = (const PK_T *)c->args[sl->index] + bo[sl->index] + jt * sl->dim;
            PK_T *buf = V.vb[s];
            if (sl->dim == 1) {
                memcpy(buf, src, sizeof(PK_T) * (size_t)n);
            } else {
                PK_FN(pk_transpose_cols)(src, sl->dim, n, buf, TJ);
            }
        }
        for (int q = 0; q < p->n_tile; ++q)
            PK_FN(pk_exec)(&c_tile[q], &V, n);
        for (int q = 0; q < p->nblocks; ++q) { /* the blocks: rows of the item x columns of the tile */
            const pk_gipblock *bk = &p->blocks[q];
            PK_FN(pkg_block)(bk, row_base[bk->x], V.vb[bk->y], row_base[bk->out], nrows, n, BI, TJ);
        }
        for (int r = 0; r < nrows; ++r) {
            for (int s = 0; s < ns; ++s) {
                const int kd = p->slots[s].kind;
                if (kd == PKS_IVAR || kd == PKS_ROW)
                    V.vb[s] = row_base[s] + r;
                else if (kd == PKS_BLOCK)
                    V.vb[s] = row_base[s] + (size_t)r * TJ;
            }
            for (int q = 0; q < p->n_lane; ++q)
                PK_FN(pk_exec)(&c_lane[q], &V, n);
            const PK_T *F = V.vb[p->fslot];
            char *rec = st + (size_t)r * ctx->rec;
            PK_ACC *acc = (PK_ACC *)rec;
            PK_T *val = (PK_T *)(rec + ctx->off_val);
            int64_t *idx = (int64_t *)(rec + ctx->off_idx);
            switch (p->family) {
            case PKF_SUM:
                if (p->gslot >= 0) { /* Sum of F * G */
                    const PK_T *G = V.vb[p->gslot];
                    for (int d = 0; d < D; ++d)
                        acc[d] += PK_FN(pk_dot_tile)(F + (size_t)(p->dot_adim == 1 ? 0 : d) * TJ,
                                                     G + (size_t)(p->dot_bdim == 1 ? 0 : d) * TJ, n);
                    break;
                }
                for (int d = 0; d < D; ++d) {
                    if (p->kahan)
                        PK_FN(pk_kahan_tile)(F + (size_t)d * TJ, n, &acc[d], &acc[D + d]);
                    else
                        acc[d] += PK_FN(pk_sum_tile)(F + (size_t)d * TJ, n);
                }
                break;
            case PKF_LSE:
            case PKF_SOFTMAX: {
                const PK_T *G = p->gslot >= 0 ? V.vb[p->gslot] : 0;
                const int dg = p->gslot >= 0 ? p->gdim : 1;
                PK_FN(pk_lse_tile)(F, G, n, TJ, dg, p->family == PKF_SOFTMAX, &acc[0], acc + 1, eb, tmp);
                break;
            }
            case PKF_SELECT:
                for (int d = 0; d < D; ++d)
                    PK_FN(pk_select_tile)(F + (size_t)d * TJ, n, jt, p->kind, &val[d], &idx[d]);
                break;
            default:
                for (int d = 0; d < D; ++d)
                    PK_FN(pk_kmin_tile)(F + (size_t)d * TJ, n, jt, p->K, D, val + d, idx + d);
            }
        }
    }
    } /* intervals */
}

/* ---- the engine (pk_engine.h) ---- */
static void PK_FN(pk_geng_init)(void *self, char *st, int64_t n)
{
    const PK_FN(pk_gctx) *ctx = (const PK_FN(pk_gctx) *)self;
    for (int64_t r = 0; r < n; ++r) {
        char *rec = st + (size_t)r * ctx->rec;
        PK_FN(pk_gstate_init)(ctx->p, (PK_ACC *)rec, (PK_T *)(rec + ctx->off_val), (int64_t *)(rec + ctx->off_idx),
                              ctx->nacc, ctx->nval);
    }
}

static void PK_FN(pk_geng_process)(void *self, const pk_call *c, int64_t b, int64_t i0, int64_t i1,
                                   const int64_t *iv, int64_t niv, char *st, char *scratch)
{
    PK_FN(pk_grows)((const PK_FN(pk_gctx) *)self, c, b, i0, i1, iv, niv, st, scratch);
}

static void PK_FN(pk_geng_combine)(void *self, char *a, const char *b, char *scratch)
{
    const PK_FN(pk_gctx) *ctx = (const PK_FN(pk_gctx) *)self;
    PK_FN(pk_gstate_combine)(ctx->p, (PK_ACC *)a, (PK_T *)(a + ctx->off_val), (int64_t *)(a + ctx->off_idx),
                             (const PK_ACC *)b, (const PK_T *)(b + ctx->off_val),
                             (const int64_t *)(b + ctx->off_idx), ctx->nacc, scratch + ctx->off_kt);
}

static void PK_FN(pk_geng_finalize)(void *self, const pk_call *c, const char *st, int64_t row, int64_t n)
{
    const PK_FN(pk_gctx) *ctx = (const PK_FN(pk_gctx) *)self;
    for (int64_t r = 0; r < n; ++r) {
        const char *rec = st + (size_t)r * ctx->rec;
        PK_FN(pk_gstate_finalize)(ctx->p, c, row + r, (const PK_ACC *)rec, (const PK_T *)(rec + ctx->off_val),
                                  (const int64_t *)(rec + ctx->off_idx), ctx->nval);
    }
}

static void PK_FN(pk_gteardown)(pk_engine *e)
{
    PK_FN(pk_gctx) *ctx = (PK_FN(pk_gctx) *)e->self;
    if (ctx) {
        free(ctx->soff);
        free(ctx);
    }
    e->self = NULL;
}

/* the engine of program p (its scratch layout); 0: done, 1: out of memory */
static int PK_FN(pk_gsetup)(pk_engine *e, const pk_gprogram *p)
{
    PK_FN(pk_gctx) *ctx = (PK_FN(pk_gctx) *)calloc(1, sizeof(PK_FN(pk_gctx)));
    if (!ctx)
        return 1;
    ctx->p = p;
    const int BI = p->BI, TJ = p->TJ, ns = p->nslots;
    const int dg = p->gslot >= 0 ? p->gdim : 1;
    ctx->nacc = p->nacc; /* the state layout of the reduction (polykeops/formula/reductions.py) */
    ctx->nval = ctx->nidx = p->nval;
    ctx->nconsts = 0;
    ctx->soff = (size_t *)malloc(sizeof(size_t) * (ns > 0 ? ns : 1));
    if (!ctx->soff) {
        free(ctx);
        return 1;
    }
    size_t off = 0;
    ctx->off_views = off;
    off += PK_ALIGN64(sizeof(PK_T *) * ns) + PK_ALIGN64(sizeof(int64_t) * ns) + PK_ALIGN64(sizeof(int32_t) * ns);
    for (int s = 0; s < ns; ++s) {
        const pk_gslot *sl = &p->slots[s];
        size_t len = 0;
        switch (sl->kind) {
        case PKS_CONST:
            if (sl->index + sl->dim > ctx->nconsts)
                ctx->nconsts = sl->index + sl->dim;
            break;
        case PKS_UNIFORM:
            len = (size_t)sl->dim;
            break;
        case PKS_IVAR:
        case PKS_ROW:
            len = (size_t)sl->dim * BI;
            break;
        case PKS_JVAR:
        case PKS_TILE:
        case PKS_LANE:
            len = (size_t)sl->dim * TJ;
            break;
        case PKS_BLOCK: /* the products, then the row norms and the column norms, and for squared
                           distances the centring area (pkg_block_rows) */
            len = (size_t)sl->dim * BI * TJ + BI + TJ;
            for (int q = 0; q < p->nblocks; ++q)
                if (p->blocks[q].out == s && p->blocks[q].kind != 0)
                    len += PKG_CENTRE_LEN(p->blocks[q].dim, BI, TJ);
            break;
        default:
            break;
        }
        ctx->soff[s] = off;
        off += PK_ALIGN64(len * sizeof(PK_T));
    }
    ctx->off_consts = off;
    off += PK_ALIGN64(sizeof(PK_T) * (size_t)(ctx->nconsts + 1));
    ctx->off_eb = off;
    off += PK_ALIGN64(sizeof(PK_ACC) * (size_t)TJ);
    ctx->off_tmp = off;
    off += PK_ALIGN64(sizeof(PK_ACC) * (size_t)(dg + 2));
    ctx->off_kt = off;
    off += PK_ALIGN64(sizeof(PK_T) * (size_t)(p->K + 1)) + PK_ALIGN64(sizeof(int64_t) * (size_t)(p->K + 1));
    ctx->bytes = off + 64;
    /* a row's state record, 8-byte aligned parts */
    ctx->off_val = ((sizeof(PK_ACC) * (size_t)ctx->nacc) + 7u) & ~(size_t)7u;
    ctx->off_idx = ctx->off_val + (((sizeof(PK_T) * (size_t)ctx->nval) + 7u) & ~(size_t)7u);
    ctx->rec = ctx->off_idx + sizeof(int64_t) * (size_t)ctx->nidx;
    if (ctx->rec < 8)
        ctx->rec = 8;
    e->self = ctx;
    e->bi = e->bir = BI;
    e->tj = TJ;
    e->scratch_bytes = (int64_t)ctx->bytes;
    e->state_bytes = (int64_t)ctx->rec;
    e->init = PK_FN(pk_geng_init);
    e->process = PK_FN(pk_geng_process);
    e->combine = PK_FN(pk_geng_combine);
    e->finalize = PK_FN(pk_geng_finalize);
    return 0;
}
