# cython: language_level=3
"""The generic engine of the CPU backend (base build): the C of _generic_base.inc with the entry points of
_generic_body.pxi."""

cdef extern from "_generic_base.inc":
    pass

include "_generic_body.pxi"
