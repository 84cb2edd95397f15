# cython: language_level=3
"""The generic engine of the CPU backend (avx512 build): the C of _generic_avx512.inc with the entry points of
_generic_body.pxi."""

cdef extern from "_generic_avx512.inc":
    pass

include "_generic_body.pxi"
