/* polykeops CPU parallel-for: a fork-safe pthread pool.  Part of pk_runtime.h (include that one). */
#ifndef PK_POOL_H
#define PK_POOL_H

#include "pk_runtime.h"

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

#endif /* PK_POOL_H */
