"""Finding and running the C compiler for specialised kernels.

A kernel is one C file (the generated source plus the runtime headers of
``include/``) compiled with ``cc -O3 -march=native -shared`` into a shared
library that :mod:`.kernels` loads with ctypes: no Python headers, no Cython
and no setuptools on this path, so a build takes about half a second.
``-fopenmp-simd`` enables the ``omp simd`` loops without linking an OpenMP
runtime (threads come from ``pk_pool.h``).  No ``-ffast-math``: infinities
and NaNs keep their IEEE meaning (the exp is the vectorisable one of the
runtime header).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
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
        return ["-march=native"]
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
    cmd = compiler_command() + flags() + ["-I", str(INCLUDE_DIR), str(source), "-o", str(output), "-lm"]
    if low_priority and shutil.which("nice"):
        cmd = ["nice", "-n", "10"] + cmd
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        log.write_text(f"{' '.join(cmd)}\n{exc}\n")
        raise CompileError(f"could not run the C compiler on {source}: {exc}") from None
    text = f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}"
    log.write_text(text)
    if res.returncode != 0 or not output.exists():
        raise CompileError(
            f"the C compiler failed on the generated kernel {source} (exit {res.returncode}).\n"
            f"Compiler log ({log}):\n{text[-4000:]}"
        )
