/* polykeops specialised CPU kernels: the engine of one generated kernel (pk_engine.h).
 *
 * Included at the end of every generated kernel, which defines before it:
 *   pk_state          the reduction state of one row (a struct)
 *   pk_state_init, pk_state_combine, pk_state_finalize
 *   pk_process        reduces rows [i0, i1) of batch b over j intervals into their states
 *   BI, BIR, TJ       rows per work item, rows per block-sparse item, columns per tile
 *   SCRATCH_BYTES     the per-thread scratch area
 * The work items, the threads and the merge of j chunks are the Cython driver's (_driver.pyx);
 * the driver reaches pk_kernel_engine through pk_kernel_engine_get (_driver.load_engine).
 */
#ifndef PK_KERNEL_H
#define PK_KERNEL_H

#include "pk_engine.h"

static void pk_k_init(void *self, char *st, int64_t n)
{
    (void)self;
    for (int64_t r = 0; r < n; ++r)
        pk_state_init((pk_state *)st + r);
}

static void pk_k_process(void *self, const pk_call *c, int64_t b, int64_t i0, int64_t i1, const int64_t *iv,
                         int64_t niv, char *st, char *scratch)
{
    (void)self;
    pk_process(c, b, i0, i1, iv, niv, (pk_state *)st, scratch);
}

static void pk_k_combine(void *self, char *a, const char *b, char *scratch)
{
    (void)self;
    pk_state_combine((pk_state *)a, (const pk_state *)b, scratch);
}

static void pk_k_finalize(void *self, const pk_call *c, const char *st, int64_t row, int64_t n)
{
    (void)self;
    for (int64_t r = 0; r < n; ++r)
        pk_state_finalize(c, (const pk_state *)st + r, row + r);
}

static const pk_engine pk_kernel_engine = {NULL,          BI,        BIR,          TJ,
                                           SCRATCH_BYTES, sizeof(pk_state), pk_k_init, pk_k_process,
                                           pk_k_combine,  pk_k_finalize};

/* the one exported symbol the driver looks up (_driver.load_engine maps the library with dlopen,
 * without initialising its Python module, so that an evicted kernel can be unmapped) */
__attribute__((visibility("default"))) const pk_engine *pk_kernel_engine_get(void)
{
    return &pk_kernel_engine;
}

#endif
