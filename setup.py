"""Build script: the package, plus the generic engine of the CPU backend (a C extension).

The generic engine (``polykeops.backends.cpu._generic``, and on x86-64 the
AVX2 + FMA build ``_generic_avx2``) is plain C with no dependency beyond the
Python headers; its op list and elementwise cases (``include/pk_generic_ops.inc``)
are generated from the C renderer's rules before it is compiled.  Its build is
optional: if it fails (no compiler), polykeops still installs and the CPU backend
falls back to specialised kernels or to the reference backend (``python -m polykeops check`` says which).
"""

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CPU = "polykeops/backends/cpu"
FLAGS = ["-O3", "-std=gnu11", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
         "-fvisibility=hidden", "-pthread", "-g0"]


def _generate_op_cases() -> bool:
    """Write include/pk_generic_ops.inc, the engine's op list and elementwise cases, from the C
    renderer's rules (polykeops.backends.codegen.generic_ops)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        from polykeops.backends.codegen.generic_ops import write_include

        write_include(f"{CPU}/include/pk_generic_ops.inc")
        return True
    except Exception as exc:  # the engine is optional: polykeops installs without it
        print(f"polykeops: not building the generic engine (generating its op cases failed: {exc})")
        return False
    finally:
        sys.path.pop(0)


def _extensions():
    if sys.platform == "win32":  # the engine needs a GCC-compatible compiler and pthreads
        return []
    if not _generate_op_cases():
        return []
    common = dict(
        include_dirs=[f"{CPU}/include", CPU],
        extra_compile_args=FLAGS,
        extra_link_args=["-pthread", "-lm"],
        depends=[f"{CPU}/_generic_impl.inc"] + [f"{CPU}/include/{h}" for h in os.listdir(f"{CPU}/include")],
        optional=True,
    )
    exts = [Extension("polykeops.backends.cpu._generic", [f"{CPU}/_generic.c"], **common)]
    if platform.machine().lower() in ("x86_64", "amd64"):
        exts.append(Extension("polykeops.backends.cpu._generic_avx2", [f"{CPU}/_generic_avx2.c"], **common))
    return exts


class BuildExt(build_ext):
    """build_ext compiling the extensions in parallel (one per core)."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
