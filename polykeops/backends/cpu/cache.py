"""The CPU backend's compiled kernels on disk: the ``cpu`` folder of the artifact store.

Layout and rules (atomic, locked, checksummed, tagged) are those of
:mod:`polykeops.backends.artifact_cache`; here each kernel is a Cython extension module
``cpu/<kk>/<key>.so`` with its metadata ``<key>.json`` (``spec`` added), its rendered
module ``<key>.pyx`` and the C that Cython made of it, ``<key>.c`` (kept for error reports
and debugging; ``<key>.log`` after a failed build).

``key`` is a sha256 of everything that changes the binary: the rendered module
(which contains the spec's C and the tile sizes), the runtime headers, the
compiler (path and version) and its flags, the Cython version, the Python version and
ABI, the CPU's instruction-set flags, the machine, and the package version.  Clearing the
cache (and forgetting the kernels loaded in this process) is :meth:`CpuBackend.clean_cache`.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import shutil
import threading
from pathlib import Path

from ..artifact_cache import ArtifactStore, atomic_write, key_of
from . import compiler
from .kernel_module import MODULE

CACHE_VERSION = "2"  # 2: Cython extension modules
STORE = ArtifactStore("cpu", "so")
#: compilations done by this process (tests and diagnostics)
BUILDS = 0
_builds_lock = threading.Lock()


def root() -> Path:
    """The CPU backend's cache directory."""
    return STORE.root


@functools.lru_cache(maxsize=1)
def _headers_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(compiler.INCLUDE_DIR.glob("*.h")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def key_for(source: str) -> str:
    """The cache key of a kernel module's source (``.pyx``) on this machine with this compiler,
    Cython and Python."""
    from ...config import __version__

    return key_of(
        "polykeops-cpu-kernel",
        CACHE_VERSION,
        __version__,
        source,
        _headers_digest(),
        compiler.compiler_identity(),
        compiler.cython_identity(),
        compiler.python_identity(),
        " ".join(compiler.flags()),
        compiler.cpu_flags(),
        platform.machine(),
        platform.system(),
    )


def paths(key: str) -> dict[str, Path]:
    return {"so": STORE.path(key), "meta": STORE.meta_path(key), "pyx": STORE.path(key, "pyx"),
            "src": STORE.path(key, "c")}


def lookup(key: str) -> Path | None:
    """The path of a valid cached library for ``key``, or None (a damaged one reads as missing)."""
    return STORE.lookup(key)


def discard(key: str) -> None:
    """Delete the library of ``key`` and its metadata (a library the loader rejects)."""
    with STORE.lock(key):
        STORE.discard(key)


def build(key: str, source: str, info: dict, background: bool = False) -> Path:
    """The library for ``key``: from the cache if valid, else compiled now (once across processes)."""
    found = STORE.lookup(key)
    if found is not None:
        return found
    pyx_dst, c_dst = STORE.path(key, "pyx"), STORE.path(key, "c")
    with STORE.lock(key):
        found = STORE.lookup(key)  # another process may have built it while we waited
        if found is not None:
            return found
        with STORE.workspace(key) as work:
            name = MODULE
            pyx = work / f"{name}.pyx"  # (Cython names the module after the file)
            pyx.write_text(source)
            csrc = work / f"{name}.c"
            lib = work / f"{name}.so"
            # keep the sources next to the artifact first, so errors point at stable paths
            atomic_write(pyx_dst, source.encode())
            try:
                compiler.translate_kernel(pyx, csrc, work / "build.log", low_priority=background)
                atomic_write(c_dst, csrc.read_bytes())
                compiler.compile_shared(csrc, lib, work / "build.log", low_priority=background)
            except compiler.CompileError as exc:
                log_dst = STORE.path(key, "log")
                shutil.copyfile(work / "build.log", log_dst)
                raise compiler.CompileError(
                    str(exc).replace(str(csrc), str(c_dst)).replace(str(pyx), str(pyx_dst))
                    .replace(str(work / "build.log"), str(log_dst))
                ) from None
            global BUILDS
            with _builds_lock:
                BUILDS += 1
            STORE.put(key, lib, info)
    found = STORE.lookup(key)
    if found is None:  # pragma: no cover - the file system lost it between write and read
        raise compiler.CompileError(f"the kernel {STORE.path(key)} vanished right after it was built")
    return found


def clean() -> list[str]:
    """Delete the CPU kernels on disk (the tagged ``cpu`` folder); returns the removed folders."""
    return STORE.clean()
