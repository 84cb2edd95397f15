/* polykeops CPU runtime: the macros shared by the CPU headers, then pk_math.h (vectorisable
 * IEEE-safe exp, log, expm1, log1p, tanh, sinh, cosh, erf) and pk_pool.h (a fork-safe parallel-for).
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


#include "pk_math.h"
#include "pk_pool.h"

#endif /* PK_RUNTIME_H */
