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

/* op codes: keep in sync with OPCODES in generic.py (checked by pk_generic_opcode) */
#define PK_GENERIC_OPS(X)                                                                                   \
    X(COPY, 0)                                                                                              \
    X(MINUS, 1)                                                                                             \
    X(EXP, 2)                                                                                               \
    X(LOG, 3)                                                                                               \
    X(XLOGX, 4)                                                                                             \
    X(SIN, 5)                                                                                               \
    X(COS, 6)                                                                                               \
    X(SINXDIVX, 7)                                                                                          \
    X(SINXDIVXDERIV, 8)                                                                                     \
    X(ASIN, 9)                                                                                              \
    X(ACOS, 10)                                                                                             \
    X(ATAN, 11)                                                                                             \
    X(SQRT, 12)                                                                                             \
    X(RSQRT, 13)                                                                                            \
    X(INV, 14)                                                                                              \
    X(SQUARE, 15)                                                                                           \
    X(ABS, 16)                                                                                              \
    X(SIGN, 17)                                                                                             \
    X(STEP, 18)                                                                                             \
    X(RELU, 19)                                                                                             \
    X(FLOOR, 20)                                                                                            \
    X(ROUND, 21)                                                                                            \
    X(POW, 22)                                                                                              \
    X(CLAMPINT, 23)                                                                                         \
    X(ADD, 30)                                                                                              \
    X(SUBTRACT, 31)                                                                                         \
    X(MULT, 32)                                                                                             \
    X(DIVIDE, 33)                                                                                           \
    X(POWF, 34)                                                                                             \
    X(ATAN2, 35)                                                                                            \
    X(EQUAL, 36)                                                                                            \
    X(NOTEQUAL, 37)                                                                                         \
    X(LESSTHAN, 38)                                                                                         \
    X(GREATERTHAN, 39)                                                                                      \
    X(LESSOREQUAL, 40)                                                                                      \
    X(GREATEROREQUAL, 41)                                                                                   \
    X(IFELSE, 50)                                                                                           \
    X(CLAMP, 51)                                                                                            \
    X(MOD, 52)                                                                                              \
    X(SUM, 60)                                                                                              \
    X(SUMT, 61)                                                                                             \
    X(MAX, 62)                                                                                              \
    X(MIN, 63)                                                                                              \
    X(ARGMAX, 64)                                                                                           \
    X(ARGMIN, 65)                                                                                           \
    X(ONEHOT, 66)                                                                                           \
    X(ELEM, 67)                                                                                             \
    X(ELEMT, 68)                                                                                            \
    X(EXTRACT, 69)                                                                                          \
    X(EXTRACTT, 70)                                                                                         \
    X(CONCAT, 71)                                                                                           \
    X(MATVECMULT, 72)                                                                                       \
    X(VECMATMULT, 73)                                                                                       \
    X(TENSORPROD, 74)                                                                                       \
    X(TAKE, 75)                                                                                             \
    X(SQDIST, 80)

#define PK_ENUM_ITEM(name, code) PKOP_##name = code,
enum { PK_GENERIC_OPS(PK_ENUM_ITEM) PKOP_END_ };
#undef PK_ENUM_ITEM

/* slot kinds */
enum { PKS_CONST = 0, PKS_PARAM = 1, PKS_IVAR = 2, PKS_JVAR = 3, PKS_UNIFORM = 4, PKS_ROW = 5, PKS_TILE = 6,
       PKS_LANE = 7 };

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
} pk_gprogram;

#endif
