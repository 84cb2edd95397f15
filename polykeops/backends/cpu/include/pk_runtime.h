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
#include <time.h>

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

PK_ALWAYS_INLINE float pk_expf(float x)
{
    const float log2e = 1.44269504088896341f;
    const float ln2hi = 0.693359375f, ln2lo = -2.12194440e-4f;
    const float magic = 12582912.0f; /* 1.5 * 2^23: round to nearest integer */
    /* clamp to [-104, 88.8]: `c < x ? c : x` is one vminps that passes a NaN x through (bounds read
     * from memory, see above) */
    float xc = pk_expf_bounds[0] < x ? pk_expf_bounds[0] : x;
    xc = pk_expf_bounds[1] > xc ? pk_expf_bounds[1] : xc;
    const float t = xc * log2e + magic;
    const float n = t - magic;
    float r = xc - n * ln2hi;
    r = r - n * ln2lo;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * (r * r) + r + 1.0f;
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
    return ps * s2 + (xc - xc); /* + 0, or NaN when x is NaN; +inf beyond 88.7228 */
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
    const double t = xc * log2e + magic;
    const double n = t - magic; /* round(x / ln 2), in [-1076, 1024] */
    double r = xc - n * ln2hi;
    r = r - n * ln2lo; /* |r| <= 0.3466 */
    /* exp(r) = 1 + r + r^2 q(r), q of degree 9 fitted on Chebyshev nodes (near-minimax):
     * relative error < 2e-17 with these rounded coefficients (2 multiply-adds fewer than the
     * Taylor polynomial of the same accuracy) */
    double q = 2.510065503606659e-08;
    q = q * r + 2.762043894863442e-07;
    q = q * r + 2.755726789174553e-06;
    q = q * r + 2.480152055701783e-05;
    q = q * r + 1.984126986342035e-04;
    q = q * r + 1.3888888917690603e-03;
    q = q * r + 8.333333333329989e-03;
    q = q * r + 4.166666666662317e-02;
    q = q * r + 1.6666666666666669e-01;
    q = q * r + 5.000000000000001e-01;
    const double p = q * (r * r) + r + 1.0;
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
    return ps * s2 + (xc - xc);
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
 * parallel for: items handed out with an atomic counter (dynamic schedule).
 *
 * The helper threads come from a small pool, one per shared library (everything here is
 * static): created on first use, spinning for PK_POOL_SPIN_NS after a job (the next call often
 * follows at once), then parked on a condition variable, and gone after PK_POOL_IDLE_S seconds
 * without work.  Creating or waking threads costs up to milliseconds on some systems (virtual
 * machines), as much as a whole block-sparse reduction.  A call
 * that finds the pool busy (another Python thread in the same kernel) creates its own threads
 * for the call, as does a call in a process where threads cannot be created for the pool.
 * After fork, the child forgets the pool (pthread_atfork): its threads do not exist there,
 * and a new pool is made on the child's first call (GNU OpenMP's pool deadlocks there).
 * (Kernels and the generic engine are never unloaded, so pool threads never outlive their code.)
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

#define PK_POOL_IDLE_S 2
#define PK_POOL_SPIN_NS 1000000L /* 1 ms */

static inline void pk_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static struct {
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    int alive;         /* pool threads */
    int busy;          /* a call is using the pool */
    uint64_t gen;      /* incremented for each job */
    pk_job *job;
    int want, joined, finished; /* helpers for the current job */
} pk_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, NULL, 0, 0, 0};
static pthread_once_t pk_pool_once = PTHREAD_ONCE_INIT;

static void pk_pool_after_fork(void)
{
    pthread_mutex_init(&pk_pool.mu, NULL);
    pthread_cond_init(&pk_pool.work, NULL);
    pthread_cond_init(&pk_pool.done, NULL);
    pk_pool.alive = pk_pool.busy = 0;
    pk_pool.job = NULL;
    pk_pool.want = pk_pool.joined = pk_pool.finished = 0;
}

static void pk_pool_register(void) { pthread_atfork(NULL, NULL, pk_pool_after_fork); }

static void *pk_pool_worker(void *arg)
{
    uint64_t seen = (uint64_t)(uintptr_t)arg; /* the generation before the worker's first job */
    pthread_mutex_lock(&pk_pool.mu);
    for (;;) {
        if (pk_pool.gen == seen) {
            /* spin a little before sleeping: waking a sleeping thread (an idle virtual CPU) can
             * take milliseconds, longer than a short call */
            pthread_mutex_unlock(&pk_pool.mu);
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            for (int spins = 0; __atomic_load_n(&pk_pool.gen, __ATOMIC_ACQUIRE) == seen; ++spins) {
                pk_cpu_relax();
                if ((spins & 255) == 255) {
                    clock_gettime(CLOCK_MONOTONIC, &t1);
                    if ((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec) > PK_POOL_SPIN_NS)
                        break;
                }
            }
            pthread_mutex_lock(&pk_pool.mu);
        }
        while (pk_pool.gen == seen) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += PK_POOL_IDLE_S;
            if (pthread_cond_timedwait(&pk_pool.work, &pk_pool.mu, &until) != 0 && pk_pool.gen == seen) {
                --pk_pool.alive; /* idle: leave (under the lock: a call counts only live helpers) */
                pthread_mutex_unlock(&pk_pool.mu);
                return NULL;
            }
        }
        seen = pk_pool.gen;
        if (pk_pool.joined >= pk_pool.want)
            continue;
        ++pk_pool.joined;
        pk_job *job = pk_pool.job;
        pthread_mutex_unlock(&pk_pool.mu);
        pk_job_run(job);
        pthread_mutex_lock(&pk_pool.mu);
        if (++pk_pool.finished == pk_pool.want)
            pthread_cond_signal(&pk_pool.done);
    }
}

/* the calling thread and `helpers` threads created for this call */
static int pk_run_spawned(pk_job *job, int helpers)
{
    pthread_t threads[PK_MAX_THREADS];
    int started = 0;
    for (int t = 0; t < helpers; ++t)
        if (pthread_create(&threads[started], NULL, pk_job_thread, job) == 0)
            ++started;
    pk_job_run(job);
    for (int t = 0; t < started; ++t)
        pthread_join(threads[t], NULL);
    return started;
}

/* the calling thread and up to `helpers` pool threads; -1 when the pool is in use */
static int pk_run_pooled(pk_job *job, int helpers)
{
    pthread_once(&pk_pool_once, pk_pool_register);
    pthread_mutex_lock(&pk_pool.mu);
    if (pk_pool.busy) {
        pthread_mutex_unlock(&pk_pool.mu);
        return -1;
    }
    pk_pool.busy = 1;
    while (pk_pool.alive < helpers) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&t, &attr, pk_pool_worker, (void *)(uintptr_t)pk_pool.gen);
        pthread_attr_destroy(&attr);
        if (err != 0)
            break;
        ++pk_pool.alive;
    }
    const int n = pk_pool.alive < helpers ? pk_pool.alive : helpers;
    pk_pool.job = job;
    pk_pool.want = n;
    pk_pool.joined = pk_pool.finished = 0;
    __atomic_store_n(&pk_pool.gen, pk_pool.gen + 1, __ATOMIC_RELEASE); /* (read by spinning workers) */
    if (n > 0)
        pthread_cond_broadcast(&pk_pool.work);
    pthread_mutex_unlock(&pk_pool.mu);
    pk_job_run(job);
    pthread_mutex_lock(&pk_pool.mu);
    while (pk_pool.finished < n)
        pthread_cond_wait(&pk_pool.done, &pk_pool.mu);
    pk_pool.job = NULL;
    pk_pool.want = 0;
    pk_pool.busy = 0;
    pthread_mutex_unlock(&pk_pool.mu);
    return n;
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
    int started = 0;
    if (nthreads > 1) {
        started = pk_run_pooled(&job, nthreads - 1);
        if (started < 0)
            started = pk_run_spawned(&job, nthreads - 1);
    } else {
        pk_job_run(&job);
    }
    /* a thread without scratch memory takes no item; any thread with memory takes all that are left */
    return job.failed == started + 1 ? -1 : 0;
}

#endif /* PK_RUNTIME_H */
