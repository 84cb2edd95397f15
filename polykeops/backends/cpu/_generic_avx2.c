/* The generic engine compiled for x86-64 with AVX2 and FMA (see _generic.c). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "pk_runtime.h"
#include "pk_generic.h"

/* 1 when this CPU can run this module (compiled before the target pragma) */
PK_EXPORT int pk_generic_cpu_ok(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma")
#define PK_ISA avx2
#define PK_ISA_NAME "avx2+fma"
#include "_generic_impl.inc"
#endif

static struct PyModuleDef pk_module = {
    PyModuleDef_HEAD_INIT, "_generic_avx2",
    "polykeops generic CPU engine for AVX2 + FMA (C entry points used through ctypes)", -1, NULL, NULL, NULL,
    NULL, NULL};

PyMODINIT_FUNC PyInit__generic_avx2(void) { return PyModule_Create(&pk_module); }
