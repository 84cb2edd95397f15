"""Build script: the package, plus the CPU engine's Cython extensions.

* ``polykeops.backends.cpu._driver``: the OpenMP-parallel blocked map-reduce driver
  (``_driver.pyx``, compiled with ``-fopenmp``), shared by every engine;
* the generic engine ``_generic`` (portable), and on x86-64 ``_generic_avx2`` (AVX2 + FMA) and
  ``_generic_avx512`` (AVX-512), chosen at run time: Cython modules around the C interpreter,
  whose op list and elementwise cases (``include/pk_generic_ops.inc``) are generated from the C
  renderer's rules before it is compiled.

The build is optional: if it fails (no compiler, no OpenMP), polykeops still installs and the
CPU backend says why it is unavailable (``python -m polykeops check``).
"""

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CPU = "polykeops/backends/cpu"
FLAGS = ["-O3", "-std=gnu11", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
         "-fvisibility=hidden", "-pthread", "-g0", "-w"]


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


def _kernel_template() -> None:
    """Write polykeops/backends/cpu/_kernel_template.c: the Cython translation of the module
    template of specialised kernels (kernel_module.py), so that building a kernel at run time
    needs no Cython (the package's Cython made it)."""
    import importlib.util
    import subprocess
    import tempfile

    import Cython

    spec = importlib.util.spec_from_file_location("pk_kernel_module", f"{CPU}/kernel_module.py")
    km = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(km)
    with tempfile.TemporaryDirectory() as tmp:
        pyx = os.path.join(tmp, f"{km.MODULE}.pyx")
        with open(pyx, "w") as fh:
            fh.write(km.template_source())
        out = os.path.join(tmp, f"{km.MODULE}.c")
        subprocess.run([sys.executable, "-m", "cython", "-3", pyx, "-o", out], check=True)
        with open(out) as fh:
            text = fh.read()
    with open(f"{CPU}/_kernel_template.c", "w") as fh:
        fh.write(km.template_header(Cython.__version__) + text)


def _extensions():
    if sys.platform == "win32":  # the engine needs a GCC-compatible compiler and pthreads
        return []
    if not _generate_op_cases():
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        print(f"polykeops: not building the CPU engine (Cython is missing: {exc})")
        return []
    common = dict(
        include_dirs=[f"{CPU}/include", CPU],
        extra_compile_args=FLAGS,
        extra_link_args=["-pthread", "-lm"],
        depends=[f"{CPU}/{f}" for f in os.listdir(CPU) if f.endswith((".inc", ".pxi", ".pxd"))]
        + [f"{CPU}/include/{h}" for h in os.listdir(f"{CPU}/include")],
        optional=True,
    )
    driver = dict(common, extra_compile_args=FLAGS + ["-fopenmp"],
                  extra_link_args=common["extra_link_args"] + ["-fopenmp"])
    exts = [Extension("polykeops.backends.cpu._driver", [f"{CPU}/_driver.pyx"], **driver),
            Extension("polykeops.backends.cpu._generic", [f"{CPU}/_generic.pyx"], **common)]
    if platform.machine().lower() in ("x86_64", "amd64"):
        for isa in ("avx2", "avx512"):
            exts.append(Extension(f"polykeops.backends.cpu._generic_{isa}", [f"{CPU}/_generic_{isa}.pyx"],
                                  **common))
    try:
        _kernel_template()
    except Exception as exc:  # kernels then use the installed Cython at run time
        print(f"polykeops: not shipping the kernel template's translation ({exc})")
    try:
        return cythonize(exts, compiler_directives={"language_level": 3}, quiet=True)
    except Exception as exc:  # the engine is optional: polykeops installs without it
        print(f"polykeops: not building the CPU engine (Cython failed: {exc})")
        return []


class BuildExt(build_ext):
    """build_ext compiling the extensions in parallel (one per core)."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
