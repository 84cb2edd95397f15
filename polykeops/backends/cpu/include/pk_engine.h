/* polykeops CPU engines: what the Cython driver (_driver.pyx) needs to know of an engine.
 *
 * The driver cuts a reduction into work items (batch x block of rows x chunk of j, or the
 * items of a block-sparse call), runs them in an OpenMP `prange` loop and merges the
 * partial states of j chunks in j order.  An engine only reduces rows into states:
 *
 *   init(self, st, n)            n fresh states (st: n records of state_bytes bytes)
 *   process(self, c, b, i0, i1, iv, niv, st, scratch)
 *                                reduce rows [i0, i1) of batch b (at most bi rows, bir for
 *                                block-sparse items) over the niv j intervals iv[2s], iv[2s+1]
 *                                into st; scratch: scratch_bytes bytes, 64-byte aligned,
 *                                private to the thread
 *   combine(self, a, b, scratch) a <- a (+) b, b covering larger j than a
 *   finalize(self, c, st, row, n) write the outputs of rows row .. row + n - 1 (flat batch x i)
 *
 * Specialised kernels define one static engine (pk_kernel.h); the generic engine one per op
 * program (pk_generic_impl.h).  Two engines answering the same spec may take over from each
 * other between work items (a kernel that finished compiling during a long call).
 */
#ifndef PK_ENGINE_H
#define PK_ENGINE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pk_call.h"

typedef struct pk_engine {
    void *self;
    int64_t bi, bir, tj;              /* rows per dense item, per block-sparse item; columns per tile */
    int64_t scratch_bytes, state_bytes;
    void (*init)(void *self, char *st, int64_t n);
    void (*process)(void *self, const pk_call *c, int64_t b, int64_t i0, int64_t i1, const int64_t *iv,
                    int64_t niv, char *st, char *scratch);
    void (*combine)(void *self, char *a, const char *b, char *scratch);
    void (*finalize)(void *self, const pk_call *c, const char *st, int64_t row, int64_t n);
} pk_engine;

/* a kernel offered to a running call (written by Python, read by the driver's threads) */
typedef struct {
    const pk_engine *next;
    int64_t taken; /* work items run on it */
} pk_switch;

static inline const pk_engine *pk_switch_get(const pk_switch *s)
{
    return s ? __atomic_load_n(&s->next, __ATOMIC_ACQUIRE) : NULL;
}
static inline void pk_switch_set(pk_switch *s, const pk_engine *e) { __atomic_store_n(&s->next, e, __ATOMIC_RELEASE); }
static inline void pk_switch_took(pk_switch *s) { __atomic_fetch_add(&s->taken, 1, __ATOMIC_RELAXED); }
static inline int pk_atomic_get(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pk_atomic_set(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void pk_atomic_inc(int *p) { __atomic_fetch_add(p, 1, __ATOMIC_ACQ_REL); }

static inline double pk_now(void)
{
    struct timespec t;
#ifdef CLOCK_MONOTONIC_COARSE
    clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
#else
    clock_gettime(CLOCK_MONOTONIC, &t);
#endif
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static inline char *pk_alloc64(int64_t bytes)
{
    return (char *)aligned_alloc(64, (((size_t)(bytes > 0 ? bytes : 1)) + 63u) & ~((size_t)63u));
}

#endif
