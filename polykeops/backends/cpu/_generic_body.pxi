# The Cython side of the generic engine, included by _generic.pyx, _generic_avx2.pyx and
# _generic_avx512.pyx after the C of their instruction set (_generic_*.inc): the same entry
# points in each module, the work items run by the shared driver (_driver.pyx).
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from polykeops.backends.cpu._driver cimport Switch, pk_engine, run_engine


cdef extern from *:
    ctypedef struct pk_gprogram:
        int nslots
    int pk_generic_setup(pk_engine *e, const pk_gprogram *p, int t_double, int acc_double) nogil
    void pk_generic_teardown(pk_engine *e) nogil
    const char *pk_generic_isa()
    int pk_generic_opcode(const char *op)
    const char *pk_generic_ops_digest()
    int64_t pk_generic_abi()
    int pk_generic_cpu_ok()


def cpu_ok() -> bool:
    """True when this CPU can run this module's engine."""
    return bool(pk_generic_cpu_ok())


def isa() -> str:
    return pk_generic_isa().decode()


def opcode(str name) -> int:
    """The code of an op name in this build (-1 if unknown)."""
    return pk_generic_opcode(name.encode())


def ops_digest() -> str:
    """The digest of the generated op list and cases this module was built from."""
    return pk_generic_ops_digest().decode()


def abi() -> int:
    return pk_generic_abi()


cdef class Engine:
    """The generic engine of one op program (generic.Program), run by the shared driver."""

    cdef pk_engine e
    cdef pk_gprogram *prog
    cdef object keep

    def __cinit__(self, size_t address, Py_ssize_t size, int t_double, int acc_double, keep):
        self.e.self = NULL
        self.prog = NULL
        if size != sizeof(pk_gprogram):
            raise ValueError(f"program struct of {size} bytes, this build expects {sizeof(pk_gprogram)}")
        self.prog = <pk_gprogram *>malloc(sizeof(pk_gprogram))
        if self.prog == NULL:
            raise MemoryError()
        memcpy(self.prog, <const void *>address, sizeof(pk_gprogram))
        self.keep = keep  # the arrays the program points into
        if pk_generic_setup(&self.e, self.prog, t_double, acc_double):
            raise MemoryError("polykeops generic CPU engine: out of memory")

    def __dealloc__(self):
        if self.e.self != NULL:
            pk_generic_teardown(&self.e)
        free(self.prog)

    @property
    def block_rows(self) -> int:
        return self.e.bi

    def run(self, prepared, Switch switch=None):
        """Reduce the prepared call (call.PreparedCall); a kernel offered to ``switch`` during the
        call takes over its remaining work items."""
        run_engine(&self.e, prepared, switch)
