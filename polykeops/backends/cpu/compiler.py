"""Finding and running Cython and the C compiler for specialised kernels.

A kernel is a Cython module (:mod:`.kernel_module`: the generated C inlined, plus the runtime
headers of ``include/``), translated by Cython (``python -m cython``) and compiled with
``cc -O3 -march=native -shared`` into an extension module that :mod:`.kernels` imports; no
setuptools on this path.  ``-fopenmp-simd`` enables the ``omp simd`` loops; the module links no
OpenMP runtime (its work items run in the threads of the shared driver, ``_driver.pyx``).  No
``-ffast-math``: infinities and NaNs keep their IEEE meaning (the exp is the vectorisable one
of the runtime header).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from ...errors import BackendError

INCLUDE_DIR = Path(__file__).parent / "include"


class CompilerNotFound(BackendError):
    """No working C compiler: specialised kernels are off (the generic engine still runs)."""


class CompileError(BackendError):
    """The C compiler rejected a generated kernel; the message has the source path and the log."""


def _arch_flags() -> list[str]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "i386"):
        # GCC's tuning for AVX-512 CPUs keeps loops on 256-bit vectors unless told otherwise; the
        # kernels are laid out for 64-byte vectors (PK_VL lanes) and run 5-12% faster with them
        # (Gaussian sum / logsumexp at D = 3), as the generic engine's AVX-512 build does
        wide = ["-mprefer-vector-width=512"] if "avx512f" in cpu_flags().split() else []
        return ["-march=native"] + wide
    if machine in ("aarch64", "arm64"):
        return ["-mcpu=native"]
    return []


BASE_FLAGS = [
    "-O3",
    "-std=gnu11",
    "-fPIC",
    "-shared",
    "-pthread",
    "-fopenmp-simd",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-ffp-contract=off",  # each op rounds as written, in any context (multiply-adds are explicit)
    "-fvisibility=hidden",
    "-w",
]


def compiler_command() -> list[str]:
    """The compiler to use (``$CC`` if set, else gcc, else cc); raises CompilerNotFound."""
    return list(_find_compiler(os.environ.get("CC", "").strip(), os.environ.get("PATH", "")))


@functools.lru_cache(maxsize=16)
def _find_compiler(cc: str, path: str) -> tuple:
    candidates = [cc] if cc else ["gcc", "cc", "clang"]
    for name in candidates:
        parts = name.split()
        if parts and shutil.which(parts[0], path=path or None):
            return tuple(parts)
    raise CompilerNotFound(
        "no C compiler found (looked for " + ", ".join(candidates) + "); specialised CPU kernels "
        "are off and the generic engine answers every call. Install gcc (e.g. `apt install gcc`) "
        "or set CC to enable them."
    )


@functools.cache
def _identity(cmd: tuple) -> str:
    try:
        res = subprocess.run(list(cmd) + ["--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompilerNotFound(f"the C compiler {' '.join(cmd)!r} cannot run: {exc}") from None
    if res.returncode != 0:
        raise CompilerNotFound(f"the C compiler {' '.join(cmd)!r} fails: {res.stderr.strip()[:500]}")
    first = (res.stdout.strip().splitlines() or ["?"])[0]
    return f"{shutil.which(cmd[0])} {first}"


def compiler_identity() -> str:
    """Path and version line of the compiler (part of every cache key)."""
    return _identity(tuple(compiler_command()))


TEMPLATE_FILE = Path(__file__).parent / "_kernel_template.c"


@functools.cache
def _shipped_template() -> tuple[str, str] | None:
    """(translation, Cython version) of the template shipped by setup.py, if it matches."""
    from .kernel_module import template_digest

    try:
        text = TEMPLATE_FILE.read_text()
    except OSError:
        return None
    first, _, rest = text.partition("\n")
    parts = first.split()
    if len(parts) != 6 or parts[1] != "polykeops-kernel-template" or parts[2] != template_digest():
        return None  # another template (source tree changed since the build): not this one
    return rest, parts[4]


def _runtime_cython() -> str:
    try:
        import Cython
    except ImportError:
        raise CompilerNotFound(
            "the translation of the kernel module template is not shipped with this build and Cython "
            "is not installed; specialised CPU kernels are off and the generic engine answers every "
            "call. Install Cython (`pip install cython`) or rebuild the package to enable them."
        ) from None
    return Cython.__version__


@functools.cache
def cython_identity() -> str:
    """The Cython that translated the kernel module template (part of every cache key): the one
    that built the package, else the installed one; raises CompilerNotFound with neither."""
    shipped = _shipped_template()
    return f"cython {shipped[1] if shipped else _runtime_cython()}"


@functools.cache
def python_include() -> str:
    """The directory of Python.h; raises CompilerNotFound without the Python headers."""
    inc = sysconfig.get_paths().get("include") or ""
    if not (Path(inc) / "Python.h").exists():
        raise CompilerNotFound(
            f"the Python headers (Python.h) are missing (looked in {inc!r}); specialised CPU kernels "
            "are off. Install them (e.g. `apt install python3-dev`) to enable them."
        )
    return inc


def python_identity() -> str:
    """The Python version and extension ABI (part of every cache key)."""
    return f"{sys.version} {sysconfig.get_config_var('EXT_SUFFIX')} {python_include()}"


def flags() -> list[str]:
    return BASE_FLAGS + _arch_flags()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> str:
    """The CPU's instruction-set flags (part of every cache key: -march=native depends on them)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip()
                if key in ("flags", "Features"):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compile_shared(source: Path, output: Path, log: Path, low_priority: bool = False) -> None:
    """Compile ``source`` into the shared library ``output``; raises CompileError with the log.

    ``low_priority`` (background builds) runs the compiler under ``nice`` so that it
    does not slow down the computations it is meant to speed up.
    """
    cmd = compiler_command() + flags() + ["-I", str(INCLUDE_DIR), "-I", python_include(), str(source), "-o",
                                          str(output), "-lm"]
    _run(cmd, source, output, log, low_priority, "the C compiler")


def cythonize(pyx: Path, output: Path, log: Path, low_priority: bool = False) -> None:
    """Translate the module ``pyx`` to C (``output``) with Cython; raises CompileError."""
    cython_identity()
    cmd = [sys.executable, "-m", "cython", "-3", "--fast-fail", str(pyx), "-o", str(output)]
    _run(cmd, pyx, output, log, low_priority, "Cython")


_templates: dict = {}


def translate_kernel(pyx: Path, output: Path, log: Path, low_priority: bool = False) -> None:
    """Write to ``output`` the Cython translation of the rendered kernel module ``pyx``: the
    translation of the module template (shipped by setup.py, else made once by the installed
    Cython and kept in the CPU cache) with the kernel's C in place (see :mod:`.kernel_module`)."""
    from ..artifact_cache import ArtifactStore, key_of
    from .kernel_module import MODULE, PLACEHOLDER, c_of, template_source

    c_source = c_of(pyx.read_text())
    template = template_source()
    shipped = _shipped_template()
    key = key_of("polykeops-cpu-kernel-template", template, cython_identity())
    text = shipped[0] if shipped else _templates.get(key)
    if text is None:

        def build() -> bytes:
            work = pyx.parent / "template"
            work.mkdir(exist_ok=True)
            src, out = work / f"{MODULE}.pyx", work / f"{MODULE}.c"
            src.write_text(template)
            cythonize(src, out, log, low_priority)
            return out.read_bytes()

        payload, _ = ArtifactStore("cpu", "c").get_or_build(key, build, {"template": MODULE})
        text = _templates[key] = payload.decode()
    if text.count(PLACEHOLDER) != 1:
        raise CompileError(f"the Cython translation of the kernel template has {text.count(PLACEHOLDER)} "
                           "places for the kernel's C (expected 1)")
    output.write_text(text.replace(PLACEHOLDER, c_source))


def _run(cmd: list, source: Path, output: Path, log: Path, low_priority: bool, what: str) -> None:
    if low_priority and shutil.which("nice"):
        cmd = ["nice", "-n", "10"] + cmd
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        log.write_text(f"{' '.join(cmd)}\n{exc}\n")
        raise CompileError(f"could not run {what} on {source}: {exc}") from None
    text = f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}"
    with open(log, "a") as fh:
        fh.write(text)
    text = log.read_text()
    if res.returncode != 0 or not output.exists():
        raise CompileError(
            f"{what} failed on the generated kernel {source} (exit {res.returncode}).\n"
            f"Compiler log ({log}):\n{text[-4000:]}"
        )
