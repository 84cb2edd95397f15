/* polykeops CPU runtime: the 8 x 8 transposition of a tile held in registers, shared by the
 * generic engine (the columns of a tile, pk_generic_impl.h) and the specialised kernels (their
 * blocks of products made row-major, pk_ipblock.h).
 *
 * PK_TRANSPOSE8(V, M, a, o): a[0..7] are 8 vectors (type V) of 8 lanes, o[0..7] receive their
 * transposition (o[p][q] = a[q][p]); M is the integer vector type of V's shuffle masks.  24 shuffles.
 */
#ifndef PK_TRANSPOSE8_H
#define PK_TRANSPOSE8_H

#define PK_TRANSPOSE8(V, M, a, o)                                                                            \
    do {                                                                                                     \
        const M lo_ = {0, 8, 1, 9, 4, 12, 5, 13}, hi_ = {2, 10, 3, 11, 6, 14, 7, 15};                        \
        const M l2_ = {0, 1, 8, 9, 4, 5, 12, 13}, h2_ = {2, 3, 10, 11, 6, 7, 14, 15};                        \
        const M l4_ = {0, 1, 2, 3, 8, 9, 10, 11}, h4_ = {4, 5, 6, 7, 12, 13, 14, 15};                        \
        V b_[8], c_[8];                                                                                      \
        for (int q_ = 0; q_ < 8; q_ += 2) {                                                                  \
            b_[q_] = __builtin_shuffle((a)[q_], (a)[q_ + 1], lo_);                                           \
            b_[q_ + 1] = __builtin_shuffle((a)[q_], (a)[q_ + 1], hi_);                                       \
        }                                                                                                    \
        for (int q_ = 0; q_ < 8; q_ += 4) {                                                                  \
            c_[q_] = __builtin_shuffle(b_[q_], b_[q_ + 2], l2_);                                             \
            c_[q_ + 1] = __builtin_shuffle(b_[q_], b_[q_ + 2], h2_);                                         \
            c_[q_ + 2] = __builtin_shuffle(b_[q_ + 1], b_[q_ + 3], l2_);                                     \
            c_[q_ + 3] = __builtin_shuffle(b_[q_ + 1], b_[q_ + 3], h2_);                                     \
        }                                                                                                    \
        for (int q_ = 0; q_ < 4; ++q_) { /* c_[q_]: rows q_ and q_ + 4 in its halves */                      \
            (o)[q_] = __builtin_shuffle(c_[q_], c_[q_ + 4], l4_);                                            \
            (o)[q_ + 4] = __builtin_shuffle(c_[q_], c_[q_ + 4], h4_);                                        \
        }                                                                                                    \
    } while (0)

#endif /* PK_TRANSPOSE8_H */
