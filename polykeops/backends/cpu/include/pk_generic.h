/* polykeops generic CPU engine: shared declarations.
 *
 * A formula is compiled (in Python, polykeops/backends/cpu/generic.py) into a
 * program: slots (one per distinct node: constants, arguments, computed
 * values) and instructions grouped in four phases by what they depend on:
 *
 *   uniform  parameters and constants only  -> once per work item, 1 lane
 *   row      i (and parameters)             -> once per block of rows, lanes = rows
 *   tile     j (and parameters)             -> once per tile of columns, lanes = columns
 *   lane     i and j                        -> once per row and tile, lanes = columns
 *
 * Inner products and squared distances of dimension >= 16 between a row operand and a column
 * operand (polykeops/formula/inner_products.py) are not instructions: they are blocks
 * (pk_gipblock, pk_generic_ipblock.h), computed for all the rows of the work item x the columns
 * of the tile by a register-blocked micro-kernel, after the tile phase and before the lane phase;
 * their slot (kind PKS_BLOCK, [count][BI][TJ]) is read by the lane phase one row at a time.
 *
 * Each instruction loops over the components of its result and, inside, over
 * the lanes (an `omp simd` loop).  An operand is seen through a view: base
 * pointer, component stride, lane stride (0 for a value constant across lanes:
 * a row value inside the lane phase, a parameter, a constant).  The root
 * formulas are reduced per (row, tile) with the helpers of pk_reduce.h.
 */
#ifndef PK_GENERIC_H
#define PK_GENERIC_H
#include "pk_call.h" /* the call ABI, shared with the specialised kernels */

#include <stdint.h>

/* op codes: the PK_GENERIC_OPS(X) list, generated from the C renderer's rules into
 * pk_generic_ops.inc (polykeops/backends/codegen/generic_ops.py, run by setup.py); generic.py
 * takes OPCODES from the same module and checks PK_GENERIC_OPS_DIGEST when it loads the engine */
#define PK_GENERIC_OPS_LIST
#include "pk_generic_ops.inc"
#undef PK_GENERIC_OPS_LIST

#define PK_ENUM_ITEM(name, code) PKOP_##name = code,
enum { PK_GENERIC_OPS(PK_ENUM_ITEM) PKOP_END_ };
#undef PK_ENUM_ITEM

/* slot kinds */
enum { PKS_CONST = 0, PKS_PARAM = 1, PKS_IVAR = 2, PKS_JVAR = 3, PKS_UNIFORM = 4, PKS_ROW = 5, PKS_TILE = 6,
       PKS_LANE = 7, PKS_BLOCK = 8 };

/* reduction families: the order of FAMILIES in polykeops/formula/reductions.py */
enum { PKF_SUM = 0, PKF_LSE = 1, PKF_SOFTMAX = 2, PKF_SELECT = 3, PKF_KMIN = 4 };

typedef struct {
    int32_t op, dim, out, nargs;
    int32_t arg[3];
    int32_t ip0, ip1, pad;
    double dp;
} pk_ginstr;

typedef struct {
    int32_t kind, dim, index, pad; /* index: variable index (PARAM/IVAR/JVAR) or offset in consts */
} pk_gslot;

/* a block of inner products: for c < count, r < rows, j < columns,
 *   out[c][r][j] = scale * sum_{k < dim} x[c * xc + k * xk][r] * y[c * yc + k * yk][j]     (kind 0: dot)
 *   out[0][r][j] = scale * sum_{k < dim} (x[k][r] - y[k][j])^2                          (kind 1: sqdist)
 * where x[q][r] is component q of the row slot x for row r, y[q][j] that of the column slot y for
 * column j (xc = 0, xk = 1 for a vector operand; a matvec-like product's matrix operand holds its
 * count vectors at component steps xc, xk) */
typedef struct {
    int32_t kind, out, x, y, dim, count;
    int32_t xc, xk, yc, yk;
    double scale;
} pk_gipblock;

typedef struct {
    int32_t nslots, ninstr;
    int32_t n_uniform, n_row, n_tile, n_lane; /* instructions, in this phase order */
    int32_t family, kind, log, kahan, want_value, want_index, K;
    int32_t fslot, gslot, fdim, gdim;
    int32_t BI, TJ, nvars;
    int32_t dot_adim, dot_bdim; /* Sum of F * G fused into the reduction (gslot >= 0): operand dims */
    int32_t nacc, nval; /* state entries: sums (accumulation type); values (and as many indices) */
    const pk_gslot *slots;
    const pk_ginstr *code;
    const double *consts;
    int32_t nblocks, pad2;
    const pk_gipblock *blocks; /* computed in this order (a block reads no other block) */
} pk_gprogram;

#endif
