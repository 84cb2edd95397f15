/* The machine's float32 FMA throughput, measured: the denominator of the "fraction of FMA peak"
 * of benchmarks/highdim.py (more honest than a clock read from /proc/cpuinfo: turbo and
 * AVX-512 down-clocking are whatever they are while the CPU runs FMAs).
 *
 * Each thread runs 24 independent chains of vector FMAs (enough to cover the FMA latency of two
 * units) on the widest vectors the build targets.  Returns float32 multiply-adds per second, all
 * threads together.
 *
 * Built by benchmarks/highdim.py:
 *   gcc -O2 -march=native [-mprefer-vector-width=512] -ffp-contract=fast -fopenmp -shared -fPIC \
 *       fma_peak.c -o ...
 */
#include <omp.h>
#include <stdint.h>

#if defined(__AVX512F__)
#define VB 64
#elif defined(__AVX__)
#define VB 32
#else
#define VB 16
#endif
typedef float vf __attribute__((vector_size(VB)));
#define LANES ((int)(VB / sizeof(float)))
#define CHAINS 24

double fma_peak(int threads, int64_t iters)
{
    double total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        vf acc[CHAINS];
        vf a, b;
        for (int l = 0; l < LANES; ++l) {
            a[l] = 0.999999f;
            b[l] = 1e-7f;
        }
        for (int q = 0; q < CHAINS; ++q)
            acc[q] = a * (float)q;
#pragma omp barrier
        const double t0 = omp_get_wtime();
        for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 24
            for (int q = 0; q < CHAINS; ++q)
                acc[q] = acc[q] * a + b; /* one FMA (-ffp-contract=fast) */
        }
        const double dt = omp_get_wtime() - t0;
        float keep = 0;
        for (int q = 0; q < CHAINS; ++q)
            keep += acc[q][0];
        __asm__ volatile("" ::"x"(keep));
        total += (double)iters * CHAINS * LANES / dt;
    }
    return total;
}
