"""The CPU backend's compiled kernels on disk: the ``cpu`` folder of the artifact store.

Layout and rules (atomic, locked, checksummed, tagged) are those of
:mod:`polykeops.backends.artifact_cache`; here each kernel is ``cpu/<kk>/<key>.so``
with its metadata ``<key>.json`` (``spec`` added) and its generated source
``<key>.c`` (kept for error reports and debugging; ``<key>.log`` after a failed build).

``key`` is a sha256 of everything that changes the binary: the generated
source (which contains the spec and the tile sizes), the runtime headers, the
compiler (path and version) and its flags, the CPU's instruction-set flags,
the machine, and the package version.  Clearing the cache (and forgetting the
kernels loaded in this process) is :meth:`CpuBackend.clean_cache`.
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

CACHE_VERSION = "1"
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
    """The cache key of a kernel source on this machine with this compiler."""
    from ...config import __version__

    return key_of(
        "polykeops-cpu-kernel",
        CACHE_VERSION,
        __version__,
        source,
        _headers_digest(),
        compiler.compiler_identity(),
        " ".join(compiler.flags()),
        compiler.cpu_flags(),
        platform.machine(),
        platform.system(),
    )


def paths(key: str) -> dict[str, Path]:
    return {"so": STORE.path(key), "meta": STORE.meta_path(key), "src": STORE.path(key, "c")}


def lookup(key: str) -> Path | None:
    """The path of a valid cached library for ``key``, or None (a damaged one reads as missing)."""
    return STORE.lookup(key)


def build(key: str, source: str, info: dict, background: bool = False) -> Path:
    """The library for ``key``: from the cache if valid, else compiled now (once across processes)."""
    found = STORE.lookup(key)
    if found is not None:
        return found
    src_dst = STORE.path(key, "c")
    with STORE.lock(key):
        found = STORE.lookup(key)  # another process may have built it while we waited
        if found is not None:
            return found
        with STORE.workspace(key) as work:
            src = work / "kernel.c"
            src.write_text(source)
            lib = work / "kernel.so"
            # keep the source next to the artifact first, so compile errors point at a stable path
            atomic_write(src_dst, source.encode())
            try:
                compiler.compile_shared(src, lib, work / "build.log", low_priority=background)
            except compiler.CompileError as exc:
                log_dst = STORE.path(key, "log")
                shutil.copyfile(work / "build.log", log_dst)
                raise compiler.CompileError(
                    str(exc).replace(str(src), str(src_dst)).replace(str(work / "build.log"), str(log_dst))
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
