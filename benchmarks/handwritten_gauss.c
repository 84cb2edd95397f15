/* Hand-written Gaussian kernel sum, the practical ceiling of the CPU benchmarks.
 *
 *   out_i = sum_j exp(-|x_i - y_j|^2) b_j,   x: (M, 3), y: (N, 3), b: (N,), float32
 *
 * What an expert writes by hand for this one formula: y transposed once to
 * structure-of-arrays, OpenMP threads over blocks of rows, j in tiles that stay
 * in cache, an `omp simd` inner loop with a reduction, and -ffast-math so that gcc
 * calls glibc's vector expf (_ZGVdN8v_expf).  (-ffast-math also assumes there is no
 * inf or NaN, which is why the library cannot simply use it.)
 *
 * Built by benchmarks/cpu_bench.py:
 *   gcc -O3 -march=native -ffast-math -fopenmp -shared -fPIC handwritten_gauss.c -o ...
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define ROWS 256
#define TILE 8192

int gauss_sum(int64_t M, int64_t N, const float *x, const float *y, const float *b, float *out, int nthreads)
{
    float *ys = (float *)malloc(sizeof(float) * 3 * (size_t)N);
    if (!ys)
        return 1;
    for (int64_t j = 0; j < N; ++j) {
        ys[j] = y[3 * j];
        ys[N + j] = y[3 * j + 1];
        ys[2 * N + j] = y[3 * j + 2];
    }
    const float *y0 = ys, *y1 = ys + N, *y2 = ys + 2 * N;
    int64_t nblocks = (M + ROWS - 1) / ROWS;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
        int64_t i0 = blk * ROWS, i1 = i0 + ROWS < M ? i0 + ROWS : M;
        float acc_rows[ROWS];
        for (int64_t i = i0; i < i1; ++i)
            acc_rows[i - i0] = 0.0f;
        for (int64_t j0 = 0; j0 < N; j0 += TILE) {
            int64_t j1 = j0 + TILE < N ? j0 + TILE : N;
            for (int64_t i = i0; i < i1; ++i) {
                const float a0 = x[3 * i], a1 = x[3 * i + 1], a2 = x[3 * i + 2];
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int64_t j = j0; j < j1; ++j) {
                    float d0 = a0 - y0[j], d1 = a1 - y1[j], d2 = a2 - y2[j];
                    acc += expf(-(d0 * d0 + d1 * d1 + d2 * d2)) * b[j];
                }
                acc_rows[i - i0] += acc;
            }
        }
        for (int64_t i = i0; i < i1; ++i)
            out[i] = acc_rows[i - i0];
    }
    free(ys);
    return 0;
}
