/* polykeops CPU runtime: the macros shared by the CPU headers, then pk_math.h (vectorisable
 * IEEE-safe exp, log, expm1, log1p, tanh, sinh, cosh, erf).
 *
 * Included by every specialised kernel and by the generic engine.  Everything is
 * static (each module has its own copy), with no global state and no threads:
 * `#pragma omp simd` needs only -fopenmp-simd; the threads are those of the Cython
 * driver's OpenMP loop (_driver.pyx).
 */
#ifndef PK_RUNTIME_H
#define PK_RUNTIME_H

#include <math.h>
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

#endif /* PK_RUNTIME_H */
