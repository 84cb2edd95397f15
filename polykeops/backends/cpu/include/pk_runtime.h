/* polykeops CPU runtime: vectorisable IEEE-safe exp, a fork-safe parallel-for.
 *
 * Included by every specialised kernel and by the generic engine.  Everything is
 * static (each shared library has its own copy): no global state, no OpenMP
 * runtime.  `#pragma omp simd` needs only -fopenmp-simd.  Threads are created
 * per call with pthreads, so the engine works in processes forked after use
 * (GNU OpenMP's thread pool deadlocks there).
 */
#ifndef PK_RUNTIME_H
#define PK_RUNTIME_H

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#define PK_EXPORT __attribute__((visibility("default")))
#define PK_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define PK_EXPORT
#define PK_ALWAYS_INLINE static inline
#endif

#define PK_ALIGN64(x) ((((size_t)(x)) + 63u) & ~((size_t)63u))
#define PK_MAX_THREADS 256

/* ------------------------------------------------------------------------
 * exp: range reduction + polynomial, written so that gcc vectorises it inside
 * `omp simd` loops without -ffast-math.  +inf -> +inf, -inf -> 0, NaN -> NaN,
 * overflow -> +inf, gradual underflow to subnormals, < 2 ulp (checked against libm by
 * tests/test_cpu_codegen.py over the whole float range).
 * ---------------------------------------------------------------------- */
PK_ALWAYS_INLINE float pk_expf(float x)
{
    const float log2e = 1.44269504088896341f;
    const float ln2hi = 0.693359375f, ln2lo = -2.12194440e-4f;
    const float magic = 12582912.0f; /* 1.5 * 2^23: round to nearest integer */
    /* clamp; written as SSE min/max (`a < b ? a : b`): a NaN becomes 88.8 here, and NaN again
     * at the end */
    float xc = x < 88.8f ? x : 88.8f;
    xc = xc > -104.0f ? xc : -104.0f;
    float n = (xc * log2e + magic) - magic;
    float r = xc - n * ln2hi;
    r = r - n * ln2lo;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t ni = (int32_t)n;
    int32_t n1 = ni >> 1, n2 = ni - n1; /* two factors: subnormal results are rounded once */
    uint32_t u1 = (uint32_t)(n1 + 127) << 23, u2 = (uint32_t)(n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &u1, 4);
    memcpy(&s2, &u2, 4);
    float res = (p * s1) * s2; /* overflows to +inf by itself beyond 88.7228 */
    return x == x ? res : x;
}

PK_ALWAYS_INLINE double pk_exp(double x)
{
    const double log2e = 1.4426950408889634074;
    const double ln2hi = 6.93147180369123816490e-01, ln2lo = 1.90821492927058770002e-10;
    const double magic = 6755399441055744.0; /* 1.5 * 2^52 */
    double xc = x < 710.0 ? x : 710.0;
    xc = xc > -746.0 ? xc : -746.0;
    double n = (xc * log2e + magic) - magic;
    double r = xc - n * ln2hi;
    r = r - n * ln2lo;
    /* Taylor polynomial of degree 13 on |r| <= 0.35: error < 1e-17 */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * (r * r) + r + 1.0;
    int32_t ni = (int32_t)n;
    int32_t n1 = ni >> 1, n2 = ni - n1;
    uint64_t u1 = (uint64_t)(int64_t)(n1 + 1023) << 52, u2 = (uint64_t)(int64_t)(n2 + 1023) << 52;
    double s1, s2;
    memcpy(&s1, &u1, 8);
    memcpy(&s2, &u2, 8);
    double res = (p * s1) * s2; /* overflows to +inf by itself beyond 709.78 */
    return x == x ? res : x;
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
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    const float fe = (float)e;
    float r = (2.0f * s) * (p * s2) + fe * -2.12194440e-4f; /* ln 2 = 0.693359375 - 2.12194440e-4 */
    r = r + 2.0f * s;
    r = r + fe * 0.693359375f;
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
    p = p * s2 + 1.0 / 21.0;
    p = p * s2 + 1.0 / 19.0;
    p = p * s2 + 1.0 / 17.0;
    p = p * s2 + 1.0 / 15.0;
    p = p * s2 + 1.0 / 13.0;
    p = p * s2 + 1.0 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
    const double fe = (double)e;
    const double ln2hi = 6.93147180369123816490e-01, ln2lo = 1.90821492927058770002e-10;
    double r = (2.0 * s) * (p * s2) + fe * ln2lo;
    r = r + 2.0 * s;
    r = r + fe * ln2hi;
    r = x == 0.0 ? -(double)INFINITY : r;
    r = x < 0.0 ? (double)NAN : r;
    r = x == (double)INFINITY ? x : r;
    return x == x ? r : x;
}

/* ------------------------------------------------------------------------
 * parallel for: items handed out with an atomic counter (dynamic schedule);
 * threads are created for the call and joined before it returns.
 * ---------------------------------------------------------------------- */
typedef void (*pk_task_fn)(void *ctx, int64_t item, void *scratch);

typedef struct {
    pk_task_fn fn;
    void *ctx;
    int64_t nitems;
    size_t scratch_bytes;
    int64_t next;
    int failed; /* threads that could not allocate their scratch memory */
} pk_job;

static void pk_job_run(pk_job *job)
{
    void *scratch = NULL;
    if (job->scratch_bytes) {
        scratch = aligned_alloc(64, PK_ALIGN64(job->scratch_bytes));
        if (!scratch) {
            __atomic_fetch_add(&job->failed, 1, __ATOMIC_SEQ_CST);
            return;
        }
    }
    for (;;) {
        int64_t item = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (item >= job->nitems)
            break;
        job->fn(job->ctx, item, scratch);
    }
    free(scratch);
}

static void *pk_job_thread(void *arg)
{
    pk_job_run((pk_job *)arg);
    return NULL;
}

/* returns 0, or -1 when scratch memory could not be allocated */
static int pk_parallel_for(int nthreads, int64_t nitems, size_t scratch_bytes, pk_task_fn fn, void *ctx)
{
    pk_job job;
    job.fn = fn;
    job.ctx = ctx;
    job.nitems = nitems;
    job.scratch_bytes = scratch_bytes;
    job.next = 0;
    job.failed = 0;
    if (nitems <= 0)
        return 0;
    if (nthreads > PK_MAX_THREADS)
        nthreads = PK_MAX_THREADS;
    if ((int64_t)nthreads > nitems)
        nthreads = (int)nitems;
    pthread_t threads[PK_MAX_THREADS];
    int started = 0;
    for (int t = 1; t < nthreads; ++t)
        if (pthread_create(&threads[started], NULL, pk_job_thread, &job) == 0)
            ++started;
    pk_job_run(&job);
    for (int t = 0; t < started; ++t)
        pthread_join(threads[t], NULL);
    /* a thread without scratch memory takes no item; any thread with memory takes all that are left */
    return job.failed == started + 1 ? -1 : 0;
}

#endif /* PK_RUNTIME_H */
