/* polykeops CPU math: vectorisable IEEE-safe exp, log, expm1, log1p, tanh, sinh, cosh, erf.
 * Part of pk_runtime.h (include that one): written so that gcc vectorises them inside
 * `omp simd` loops without -ffast-math. */
#ifndef PK_MATH_H
#define PK_MATH_H

#include "pk_runtime.h"

/* ------------------------------------------------------------------------
 * exp: range reduction + polynomial, written so that gcc vectorises it inside
 * `omp simd` loops without -ffast-math.  +inf -> +inf, -inf -> 0, NaN -> NaN,
 * overflow -> +inf, gradual underflow to subnormals, < 2 ulp (checked against libm by
 * tests/test_cpu_codegen.py over the whole float range).
 * ---------------------------------------------------------------------- */
/* Clamping bounds of pk_expf / pk_exp.  They are read from memory (weak definitions, which the
 * compiler may not fold) so that `c < x ? c : x` stays one vminps/vminpd: with literal bounds, gcc
 * splits off the paths where the result is a constant (inf, 0) into extra compares and masked
 * moves, ~20% of the time of a Gaussian kernel. */
#if defined(__GNUC__)
#define PK_OPAQUE __attribute__((weak))
#else
#define PK_OPAQUE static
#endif
PK_OPAQUE const float pk_expf_bounds[2] = {88.8f, -104.0f};
PK_OPAQUE const double pk_exp_bounds[2] = {710.0, -746.0};

/* Multiply-adds written out: kernels are compiled with -ffp-contract=off, so that every
 * operation of a formula rounds as written, whatever surrounds it (the same value in a forward
 * kernel and in its gradient's kernel, as in the generic engine); the polynomials here keep
 * their fused multiply-adds explicitly where the CPU has them. */
#if defined(__FMA__) || defined(__aarch64__)
#define PK_FMAF(a, b, c) __builtin_fmaf((a), (b), (c))
#define PK_FMA(a, b, c) __builtin_fma((a), (b), (c))
#else
#define PK_FMAF(a, b, c) ((a) * (b) + (c))
#define PK_FMA(a, b, c) ((a) * (b) + (c))
#endif

PK_ALWAYS_INLINE float pk_expf(float x)
{
    const float log2e = 1.44269504088896341f;
    const float ln2hi = 0.693359375f, ln2lo = -2.12194440e-4f;
    const float magic = 12582912.0f; /* 1.5 * 2^23: round to nearest integer */
    /* clamp to [-104, 88.8]: `c < x ? c : x` is one vminps that passes a NaN x through (bounds read
     * from memory, see above) */
    float xc = pk_expf_bounds[0] < x ? pk_expf_bounds[0] : x;
    xc = pk_expf_bounds[1] > xc ? pk_expf_bounds[1] : xc;
    const float t = PK_FMAF(xc, log2e, magic);
    const float n = t - magic;
    float r = PK_FMAF(-n, ln2hi, xc);
    r = PK_FMAF(-n, ln2lo, r);
    float p = 1.9875691500E-4f;
    p = PK_FMAF(p, r, 1.3981999507E-3f);
    p = PK_FMAF(p, r, 8.3334519073E-3f);
    p = PK_FMAF(p, r, 4.1665795894E-2f);
    p = PK_FMAF(p, r, 1.6666665459E-1f);
    p = PK_FMAF(p, r, 5.0000001201E-1f);
    p = PK_FMAF(p, r * r, r) + 1.0f;
    /* 2^n = 2^n1 2^n2 from the bits of t, as in pk_exp below (no float -> int conversion) */
    uint32_t bt, bp;
    memcpy(&bt, &t, 4);
    memcpy(&bp, &p, 4);
    const uint32_t e1 = (bt >> 1) << 23;
    const uint32_t e2 = (bt << 23) - e1 + ((uint32_t)127 << 23);
    bp += e1;
    float ps, s2;
    memcpy(&ps, &bp, 4);
    memcpy(&s2, &e2, 4);
    return PK_FMAF(ps, s2, xc - xc); /* + 0, or NaN when x is NaN; +inf beyond 88.7228 */
}

PK_ALWAYS_INLINE double pk_exp(double x)
{
    const double log2e = 1.4426950408889634074;
    const double ln2hi = 6.93147180369123816490e-01, ln2lo = 1.90821492927058770002e-10;
    const double magic = 6755399441055744.0; /* 1.5 * 2^52: t = v + magic holds round(v) in its low bits */
    /* clamp to [-746, 710]; `c < x ? c : x` passes a NaN x through (vminpd returns its second
     * operand when unordered) */
    double xc = pk_exp_bounds[0] < x ? pk_exp_bounds[0] : x;
    xc = pk_exp_bounds[1] > xc ? pk_exp_bounds[1] : xc;
    const double t = PK_FMA(xc, log2e, magic);
    const double n = t - magic; /* round(x / ln 2), in [-1076, 1024] */
    double r = PK_FMA(-n, ln2hi, xc);
    r = PK_FMA(-n, ln2lo, r); /* |r| <= 0.3466 */
    /* exp(r) = 1 + r + r^2 q(r), q of degree 9 fitted on Chebyshev nodes (near-minimax):
     * relative error < 2e-17 with these rounded coefficients (2 multiply-adds fewer than the
     * Taylor polynomial of the same accuracy) */
    double q = 2.510065503606659e-08;
    q = PK_FMA(q, r, 2.762043894863442e-07);
    q = PK_FMA(q, r, 2.755726789174553e-06);
    q = PK_FMA(q, r, 2.480152055701783e-05);
    q = PK_FMA(q, r, 1.984126986342035e-04);
    q = PK_FMA(q, r, 1.3888888917690603e-03);
    q = PK_FMA(q, r, 8.333333333329989e-03);
    q = PK_FMA(q, r, 4.166666666662317e-02);
    q = PK_FMA(q, r, 1.6666666666666669e-01);
    q = PK_FMA(q, r, 5.000000000000001e-01);
    const double p = PK_FMA(q, r * r, r) + 1.0;
    /* 2^n = 2^n1 2^n2, n1 = floor(n / 2), n2 = n - n1, in 64-bit integer lanes (no conversion
     * between lane widths): the low 12 bits of t are n (mod 4096) and t >> 1 holds n1 the same
     * way (the bits of magic are even, and zero in the low 13 bits).  p 2^n1 is a normal number,
     * made by adding n1 to the exponent field of p; the product by 2^n2 (normal too) rounds a
     * subnormal result once, and overflows to +inf beyond 709.78. */
    uint64_t bt, bp;
    memcpy(&bt, &t, 8);
    memcpy(&bp, &p, 8);
    const uint64_t e1 = (bt >> 1) << 52;
    const uint64_t e2 = (bt << 52) - e1 + ((uint64_t)1023 << 52);
    bp += e1;
    double ps, s2;
    memcpy(&ps, &bp, 8);
    memcpy(&s2, &e2, 8);
    /* + (xc - xc): + 0 (one rounding with the product: an fma), or NaN when x is NaN (then ps and
     * s2 are meaningless) */
    return PK_FMA(ps, s2, xc - xc);
}

/* ------------------------------------------------------------------------
 * log: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1),
 * |s| < 0.1716, an odd series in s; vectorisable like pk_exp.  log(+inf) = +inf,
 * log(0) = -inf, log(x < 0) = NaN, NaN propagates, subnormal arguments are exact.
 * ---------------------------------------------------------------------- */
PK_ALWAYS_INLINE float pk_logf(float x)
{
    const int sub = x < 1.17549435e-38f; /* subnormal (or <= 0: fixed at the end) */
    const float xs = sub ? x * 8388608.0f : x;
    uint32_t u;
    memcpy(&u, &xs, 4);
    int32_t e = (int32_t)((u >> 23) & 0xffu) - 127 - (sub ? 23 : 0);
    uint32_t mu = (u & 0x007fffffu) | 0x3f800000u; /* m in [1, 2) */
    float m;
    memcpy(&m, &mu, 4);
    const int big = m > 1.41421356f;
    m = big ? m * 0.5f : m;
    e = big ? e + 1 : e;
    const float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float p = 1.0f / 11.0f;
    p = PK_FMAF(p, s2, 1.0f / 9.0f);
    p = PK_FMAF(p, s2, 1.0f / 7.0f);
    p = PK_FMAF(p, s2, 1.0f / 5.0f);
    p = PK_FMAF(p, s2, 1.0f / 3.0f);
    const float fe = (float)e;
    float r = PK_FMAF(2.0f * s, p * s2, fe * -2.12194440e-4f); /* ln 2 = 0.693359375 - 2.12194440e-4 */
    r = r + 2.0f * s;
    r = PK_FMAF(fe, 0.693359375f, r);
    r = x == 0.0f ? -(float)INFINITY : r;
    r = x < 0.0f ? (float)NAN : r;
    r = x == (float)INFINITY ? x : r;
    return x == x ? r : x;
}

PK_ALWAYS_INLINE double pk_log(double x)
{
    const int sub = x < 2.2250738585072014e-308;
    const double xs = sub ? x * 4503599627370496.0 : x; /* 2^52 */
    uint64_t u;
    memcpy(&u, &xs, 8);
    int32_t e = (int32_t)((u >> 52) & 0x7ffu) - 1023 - (sub ? 52 : 0);
    uint64_t mu = (u & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
    double m;
    memcpy(&m, &mu, 8);
    const int big = m > 1.4142135623730951;
    m = big ? m * 0.5 : m;
    e = big ? e + 1 : e;
    const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
    double p = 1.0 / 23.0;
    p = PK_FMA(p, s2, 1.0 / 21.0);
    p = PK_FMA(p, s2, 1.0 / 19.0);
    p = PK_FMA(p, s2, 1.0 / 17.0);
    p = PK_FMA(p, s2, 1.0 / 15.0);
    p = PK_FMA(p, s2, 1.0 / 13.0);
    p = PK_FMA(p, s2, 1.0 / 11.0);
    p = PK_FMA(p, s2, 1.0 / 9.0);
    p = PK_FMA(p, s2, 1.0 / 7.0);
    p = PK_FMA(p, s2, 1.0 / 5.0);
    p = PK_FMA(p, s2, 1.0 / 3.0);
    const double fe = (double)e;
    const double ln2hi = 6.93147180369123816490e-01, ln2lo = 1.90821492927058770002e-10;
    double r = PK_FMA(2.0 * s, p * s2, fe * ln2lo);
    r = r + 2.0 * s;
    r = PK_FMA(fe, ln2hi, r);
    r = x == 0.0 ? -(double)INFINITY : r;
    r = x < 0.0 ? (double)NAN : r;
    r = x == (double)INFINITY ? x : r;
    return x == x ? r : x;
}

/* ------------------------------------------------------------------------
 * expm1, log1p, tanh, sinh, cosh, erf: vectorisable like pk_exp (no branch, no libm call),
 * built on pk_exp / pk_log in double; the float versions round the double result (one
 * rounding: within 1 ulp, nearly always correctly rounded).  Accurate for tiny arguments
 * (expm1(x) = x, log1p(x) = x, tanh(x) = x...), IEEE at 0, -0, +-inf and NaN, overflow to
 * inf where the function overflows.  Checked against float64 NumPy/SciPy by tests/test_new_ops.py.
 * ---------------------------------------------------------------------- */

/* exp(x) - 1 by Kahan's method: with u = exp(x) rounded, (u - 1) x / log(u) is accurate to a
 * few ulp (the errors of u cancel to first order), and x itself where u rounds to 1 */
PK_ALWAYS_INLINE double pk_expm1(double x)
{
    const double u = pk_exp(x);
    const double um1 = u - 1.0;
    double y = um1 * (x / pk_log(u));
    y = u == 1.0 ? x : y;        /* |x| below half an ulp of 1 (and +-0) */
    y = um1 == -1.0 ? -1.0 : y;  /* exp(x) underflows to 0 (and -inf) */
    return x > 40.0 ? um1 : y;   /* u - 1 rounds like u: +inf beyond 709.78 (and +inf) */
}

/* log(1 + x) by Goldberg's method: with u = 1 + x rounded, log(u) x / (u - 1) */
PK_ALWAYS_INLINE double pk_log1p(double x)
{
    const double u = 1.0 + x;
    const double um1 = u - 1.0;
    double y = pk_log(u) * (x / um1); /* x = -1: -inf; x < -1: NaN */
    y = um1 == 0.0 ? x : y;           /* |x| below half an ulp of 1 (and +-0) */
    return x == (double)INFINITY ? x : y;
}

/* tanh(x) = sign(x) e / (e + 2), e = expm1(2 |x|); |x| >= 22 gives +-1 (NaN passes the clamp) */
PK_ALWAYS_INLINE double pk_tanh(double x)
{
    double a = fabs(x);
    a = 22.0 < a ? 22.0 : a;
    const double e = pk_expm1(2.0 * a);
    return copysign(e / (e + 2.0), x);
}

/* exp(a) / 2 for a >= 36 (where exp(-a) no longer counts): exp(a - ln2hi) (1 - ln2lo), with
 * a - ln2hi exact (ln2hi has 32 significant bits), which overflows exactly when sinh does */
PK_ALWAYS_INLINE double pk_exp_half(double a)
{
    return pk_exp(a - 6.93147180369123816490e-01) * (1.0 - 1.90821492927058770002e-10);
}

PK_ALWAYS_INLINE double pk_sinh(double x)
{
    const double a = fabs(x);
    const double as = 36.0 < a ? 36.0 : a;
    const double e = pk_expm1(as);
    const double mid = 0.5 * (e + e / (e + 1.0)); /* (e^a - e^-a) / 2, accurate for tiny a */
    const double big = pk_exp_half(a); /* computed before the select: gcc's masked version of a
                                          pk_exp inside a conditional is some 15 times slower */
    return copysign(a > 36.0 ? big : mid, x);
}

PK_ALWAYS_INLINE double pk_cosh(double x)
{
    const double a = fabs(x);
    const double u = pk_exp(36.0 < a ? 36.0 : a);
    const double mid = 0.5 * u + 0.5 / u;
    const double big = pk_exp_half(a); /* (before the select, as in pk_sinh) */
    return a > 36.0 ? big : mid;
}

/* erf: |x| < 1: x P(2x^2 - 1); 1 <= |x| < 3: 1 - exp(-x^2) Q(|x| - 2); 3 <= |x| < 6:
 * 1 - exp(-x^2) R(12/|x| - 3) / |x|; |x| >= 6: +-1.  P, Q, R: least-squares fits on Chebyshev
 * nodes (relative errors 2e-16, 2e-16, 6e-15 of erf(x)/x, exp(x^2) erfc(x), x exp(x^2) erfc(x)) */
PK_ALWAYS_INLINE double pk_erf(double x)
{
    const double a = fabs(x);
    const double s1 = 2.0 * (a * a) - 1.0;
    double p = 1.4510518149369586e-14;
    p = p * s1 - 3.807862587996353e-13;
    p = p * s1 + 9.167719617238742e-12;
    p = p * s1 - 2.0352284602846056e-10;
    p = p * s1 + 4.1158004708039526e-09;
    p = p * s1 - 7.511569286047433e-08;
    p = p * s1 + 1.2233827384181036e-06;
    p = p * s1 - 1.7537169441127245e-05;
    p = p * s1 + 0.00021751715604158568;
    p = p * s1 - 0.002285485561144113;
    p = p * s1 + 0.019852496688983708;
    p = p * s1 - 0.1405360890227171;
    p = p * s1 + 0.9654687386698673;
    const double s2 = a - 2.0;
    double q = 5.575317474034297e-12;
    q = q * s2 - 2.543013760190843e-11;
    q = q * s2 + 8.098824990292055e-11;
    q = q * s2 - 3.3609781070066827e-10;
    q = q * s2 + 1.4505930157631175e-09;
    q = q * s2 - 5.8930296502939806e-09;
    q = q * s2 + 2.333866281434921e-08;
    q = q * s2 - 9.072602675464589e-08;
    q = q * s2 + 3.448551406215422e-07;
    q = q * s2 - 1.2795284275976318e-06;
    q = q * s2 + 4.62817565016264e-06;
    q = q * s2 - 1.6293717168531445e-05;
    q = q * s2 + 5.572831513130041e-05;
    q = q * s2 - 0.000184778367545166;
    q = q * s2 + 0.0005924699953543918;
    q = q * s2 - 0.0018316642757005646;
    q = q * s2 + 0.005440738537470245;
    q = q * s2 - 0.015460637764292738;
    q = q * s2 + 0.041802752603526616;
    q = q * s2 - 0.10679646185348958;
    q = q * s2 + 0.25539567631050575;
    const double ac = a < 3.0 ? 3.0 : (a > 6.0 ? 6.0 : a);
    const double s3 = 12.0 / ac - 3.0;
    double r = -1.4169257981838402e-11;
    r = r * s3 + 2.790676491710993e-10;
    r = r * s3 - 1.649471055005678e-09;
    r = r * s3 - 2.724475178715676e-09;
    r = r * s3 + 1.376781726661443e-07;
    r = r * s3 - 1.0961792663557258e-06;
    r = r * s3 - 1.3544675467982635e-06;
    r = r * s3 + 0.0001270329884778462;
    r = r * s3 - 0.001165181873531225;
    r = r * s3 - 0.009953910993331285;
    r = r * s3 + 0.5479978305002452;
    const double tail = pk_exp(-(a * a)) * (a < 3.0 ? q : r / ac); /* erfc(|x|) */
    double y = a < 1.0 ? a * p : 1.0 - tail;
    y = a >= 6.0 ? 1.0 : y;
    return copysign(y, x);
}

PK_ALWAYS_INLINE float pk_expm1f(float x) { return (float)pk_expm1((double)x); }
PK_ALWAYS_INLINE float pk_log1pf(float x) { return (float)pk_log1p((double)x); }
PK_ALWAYS_INLINE float pk_tanhf(float x) { return (float)pk_tanh((double)x); }
PK_ALWAYS_INLINE float pk_sinhf(float x) { return (float)pk_sinh((double)x); }
PK_ALWAYS_INLINE float pk_coshf(float x) { return (float)pk_cosh((double)x); }
PK_ALWAYS_INLINE float pk_erff(float x) { return (float)pk_erf((double)x); }

#endif /* PK_MATH_H */
