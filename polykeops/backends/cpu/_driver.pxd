# The Cython driver of the CPU engines (see _driver.pyx): declarations shared with the generic
# engine's modules (cimport) and with the specialised kernels' modules.
from libc.stdint cimport int64_t


cdef extern from "pk_engine.h" nogil:
    ctypedef struct pk_call:
        int64_t nx, ny, nbatch, nthreads
        const void **args
        const int64_t *boff
        void **outs
        int64_t nitems
        const int64_t *items
        const int64_t *ivoff
        const int64_t *ivals

    ctypedef struct pk_engine:
        void *self
        int64_t bi, bir, tj, scratch_bytes, state_bytes
        void (*init)(void *self, char *st, int64_t n) noexcept nogil
        void (*process)(void *self, const pk_call *c, int64_t b, int64_t i0, int64_t i1, const int64_t *iv,
                        int64_t niv, char *st, char *scratch) noexcept nogil
        void (*combine)(void *self, char *a, const char *b, char *scratch) noexcept nogil
        void (*finalize)(void *self, const pk_call *c, const char *st, int64_t row, int64_t n) noexcept nogil

    ctypedef struct pk_switch:
        const pk_engine *next
        int64_t taken


cdef class Switch:
    """A kernel that a running call may take up between work items (see Switch.offer)."""
    cdef pk_switch sw
    cdef object keep


cdef int run_engine(const pk_engine *e, object prepared, Switch switch) except -1
