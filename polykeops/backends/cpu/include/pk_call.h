/* polykeops CPU engines: the call ABI.
 *
 * One reduction call, as passed to every specialised kernel (pk_run) and to the
 * generic engine (pk_generic_run).  Mirrored field by field by the ctypes
 * structure PkCall in Python: change both together (the generic engine checks
 * sizeof(pk_call) when it loads, through pk_generic_abi).
 */
#ifndef PK_CALL_H
#define PK_CALL_H

#include <stdint.h>

typedef struct {
    int64_t nx, ny, nbatch, nthreads;
    const void *const *args;   /* one base pointer per variable */
    const int64_t *boff;       /* [nbatch][nvars] element offsets of each argument's batch slice */
    void *const *outs;         /* one base pointer per output */
    /* block-sparse reductions (items == NULL: dense): item q reduces rows items[4q+1] to
     * items[4q+2] of batch items[4q] over the j intervals ivals[2s], ivals[2s+1] for
     * ivoff[blk] <= s < ivoff[blk + 1], blk = items[4q+3] */
    int64_t nitems;
    const int64_t *items;
    const int64_t *ivoff;      /* [nblocks + 1]: the j intervals of each block in ivals */
    const int64_t *ivals;      /* [n][2] j intervals */
} pk_call;

#endif
