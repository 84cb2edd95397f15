/* The generic engine of the polykeops CPU backend (portable build), as a Python extension module.
 *
 * The module defines no Python function: polykeops.backends.cpu.generic imports
 * it (so that Python finds and loads the shared library) and calls its C entry
 * points through ctypes, exactly as it calls specialised kernels.  On x86-64,
 * _generic_avx2 is the same engine compiled for AVX2 + FMA, used when the CPU
 * has them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "pk_runtime.h"
#include "pk_generic.h"

#define PK_ISA base
#define PK_ISA_NAME "baseline"
#include "_generic_impl.inc"

static struct PyModuleDef pk_module = {
    PyModuleDef_HEAD_INIT, "_generic",
    "polykeops generic CPU engine (C entry points used through ctypes)", -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__generic(void) { return PyModule_Create(&pk_module); }
