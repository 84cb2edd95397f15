/* polykeops specialised CPU kernels: the work decomposition and the entry points.
 *
 * Included at the end of every generated kernel, which defines before it:
 *   pk_state          the reduction state of one row (a struct)
 *   pk_state_init, pk_state_combine, pk_state_finalize
 *   pk_process        reduces rows [i0, i1) of batch b over j intervals into their states
 *   BI, BIR, TJ       rows per work item, rows per block-sparse item, columns per tile
 *   SCRATCH_BYTES, OFF_STATE   the per-thread scratch area and where the states live in it
 *
 * Work items are (batch, block of BI rows, chunk of j); threads take them from an
 * atomic counter (pk_parallel_for, pk_pool.h).  Short and wide problems (few
 * rows, large N) also split j across threads; the partial states are then merged
 * in j order with pk_state_combine.  Block-sparse calls (c->items) run one item per
 * block of at most BIR rows, over the j intervals of its block, without a split of j.
 */
#ifndef PK_DRIVER_H
#define PK_DRIVER_H

typedef struct {
    const pk_call *c;
    int64_t nbi, nch, chunk;
    pk_state *partial; /* [nbatch][nx][nch] when j is split */
} pk_ctx;

static void pk_item(void *vctx, int64_t item, void *scratch)
{
    const pk_ctx *ctx = (const pk_ctx *)vctx;
    const pk_call *c = ctx->c;
    int64_t ch = item % ctx->nch, rest = item / ctx->nch;
    int64_t ib = rest % ctx->nbi, b = rest / ctx->nbi;
    int64_t i0 = ib * BI, i1 = i0 + BI < c->nx ? i0 + BI : c->nx;
    int64_t ja = ch * ctx->chunk, jb = ja + ctx->chunk < c->ny ? ja + ctx->chunk : c->ny;
    pk_state *st = (pk_state *)((char *)scratch + OFF_STATE);
    for (int64_t i = i0; i < i1; ++i)
        pk_state_init(st + (i - i0));
    const int64_t iv[2] = {ja, jb};
    pk_process(c, b, i0, i1, iv, 1, st, (char *)scratch);
    for (int64_t i = i0; i < i1; ++i) {
        if (ctx->nch == 1)
            pk_state_finalize(c, st + (i - i0), b * c->nx + i);
        else
            ctx->partial[(b * c->nx + i) * ctx->nch + ch] = st[i - i0];
    }
}

static void pk_item_ranges(void *vctx, int64_t item, void *scratch)
{
    const pk_ctx *ctx = (const pk_ctx *)vctx;
    const pk_call *c = ctx->c;
    const int64_t *it = c->items + 4 * item;
    const int64_t b = it[0], i0 = it[1], i1 = it[2], blk = it[3];
    pk_state *st = (pk_state *)((char *)scratch + OFF_STATE);
    for (int64_t i = i0; i < i1; ++i)
        pk_state_init(st + (i - i0));
    pk_process(c, b, i0, i1, c->ivals + 2 * c->ivoff[blk], c->ivoff[blk + 1] - c->ivoff[blk], st,
               (char *)scratch);
    for (int64_t i = i0; i < i1; ++i)
        pk_state_finalize(c, st + (i - i0), b * c->nx + i);
}

static void pk_merge(void *vctx, int64_t item, void *scratch)
{
    const pk_ctx *ctx = (const pk_ctx *)vctx;
    const pk_call *c = ctx->c;
    int64_t ib = item % ctx->nbi, b = item / ctx->nbi;
    int64_t i0 = ib * BI, i1 = i0 + BI < c->nx ? i0 + BI : c->nx;
    for (int64_t i = i0; i < i1; ++i) {
        pk_state *p = ctx->partial + (b * c->nx + i) * ctx->nch;
        for (int64_t ch = 1; ch < ctx->nch; ++ch)
            pk_state_combine(p, p + ch, (char *)scratch);
        pk_state_finalize(c, p, b * c->nx + i);
    }
}

PK_EXPORT int64_t pk_scratch_bytes(void) { return (int64_t)SCRATCH_BYTES; }
PK_EXPORT int64_t pk_block_rows(void) { return (int64_t)BI; }
PK_EXPORT int64_t pk_range_rows(void) { return (int64_t)BIR; }
PK_EXPORT int64_t pk_state_bytes(void) { return (int64_t)sizeof(pk_state); }

/* 0: done; 1: out of memory */
PK_EXPORT int pk_run(const pk_call *c)
{
    pk_ctx ctx;
    int nthreads = (int)c->nthreads;
    ctx.c = c;
    ctx.nbi = (c->nx + BI - 1) / BI;
    ctx.nch = 1;
    ctx.chunk = c->ny > 0 ? c->ny : 1;
    ctx.partial = NULL;
    if ((double)c->nbatch * (double)c->nx * (double)c->ny < 65536.0)
        nthreads = 1;
    if (nthreads < 1)
        nthreads = 1;
    if (c->items) /* block-sparse: one item per block of at most BIR rows, no split of j */
        return pk_parallel_for(nthreads, c->nitems, SCRATCH_BYTES, pk_item_ranges, &ctx) ? 1 : 0;
    int64_t items = c->nbatch * ctx.nbi;
    if (nthreads > 1 && items < 4 * (int64_t)nthreads) {
        int64_t want = (4 * (int64_t)nthreads + items - 1) / items;
        int64_t most = c->ny / (2 * TJ);
        ctx.nch = want < most ? want : most;
        if (ctx.nch < 1)
            ctx.nch = 1;
        /* chunks are whole tiles */
        ctx.chunk = ((c->ny + ctx.nch - 1) / ctx.nch + TJ - 1) / TJ * TJ;
        ctx.nch = (c->ny + ctx.chunk - 1) / ctx.chunk;
    }
    if (ctx.nch > 1) {
        ctx.partial = (pk_state *)malloc((size_t)(c->nbatch * c->nx * ctx.nch) * sizeof(pk_state));
        if (!ctx.partial)
            return 1;
    }
    int err = pk_parallel_for(nthreads, items * ctx.nch, SCRATCH_BYTES, pk_item, &ctx);
    if (!err && ctx.nch > 1)
        err = pk_parallel_for(nthreads, items, SCRATCH_BYTES, pk_merge, &ctx);
    free(ctx.partial);
    return err ? 1 : 0;
}

#endif
