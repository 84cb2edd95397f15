"""The on-disk cache of compiled kernels, and ``clean_cache``.

Layout, under ``polykeops.config.cache_dir()``::

    cpu/CACHEDIR.TAG             marks the directory as a cache (clean_cache removes tagged dirs)
    cpu/<kk>/<key>.so            the kernel (a shared library)
    cpu/<kk>/<key>.json          its metadata: sha256 of the .so, sizes, spec; written last
    cpu/<kk>/<key>.c             the generated source (kept for error reports and debugging)
    cpu/locks/<key>.lock         fcntl lock held while one process builds <key>
    cpu/tmp/<random>/            private build directories

``key`` is a sha256 of everything that changes the binary: the generated
source (which contains the spec and the tile sizes), the runtime headers, the
compiler (path and version) and its flags, the CPU's instruction-set flags,
the machine, and the package version.  A build happens in a private temporary
directory; the library, then the metadata, are renamed into place atomically,
under an exclusive ``fcntl`` lock, so that N processes asking for the same new
kernel build it once and never load a half-written file.  An artifact whose
checksum does not match its metadata (truncated, corrupted) is deleted and
rebuilt, never loaded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

from ... import config
from ..file_lock import file_lock
from . import compiler

CACHE_VERSION = "1"
#: compilations done by this process (tests and diagnostics)
BUILDS = 0
_builds_lock = threading.Lock()
TAG = "Signature: 8a477f597d28d172789f06886806bc55\n# polykeops compiled-kernel cache (safe to delete)\n"


def root() -> Path:
    """The CPU backend's cache directory (created on demand)."""
    path = config.cache_dir() / "cpu"
    path.mkdir(parents=True, exist_ok=True)
    tag = path / "CACHEDIR.TAG"
    if not tag.exists():
        try:
            _atomic_write(tag, TAG.encode())
        except OSError:
            pass
    return path


@functools.lru_cache(maxsize=1)
def _headers_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(compiler.INCLUDE_DIR.glob("*.h")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def key_for(source: str) -> str:
    """The cache key of a kernel source on this machine with this compiler."""
    from ..._version import __version__

    parts = [
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
    ]
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def paths(key: str) -> dict[str, Path]:
    base = root() / key[:2]
    return {
        "so": base / f"{key}.so",
        "meta": base / f"{key}.json",
        "src": base / f"{key}.c",
        "lock": root() / "locks" / f"{key}.lock",
    }


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lookup(key: str) -> Path | None:
    """The path of a valid cached library for ``key``, or None (an invalid one is removed)."""
    p = paths(key)
    try:
        meta = json.loads(p["meta"].read_text())
    except (OSError, ValueError):
        return None
    try:
        ok = (
            meta.get("key") == key
            and p["so"].stat().st_size == meta.get("size")
            and _digest_file(p["so"]) == meta.get("sha256")
        )
    except OSError:
        ok = False
    if not ok:
        _remove(p["meta"])
        _remove(p["so"])
        return None
    return p["so"]


def build(key: str, source: str, info: dict, background: bool = False) -> Path:
    """The library for ``key``: from the cache if valid, else compiled now (once across processes)."""
    found = lookup(key)
    if found is not None:
        return found
    p = paths(key)
    with file_lock(p["lock"]):
        found = lookup(key)  # another process may have built it while we waited
        if found is not None:
            return found
        p["so"].parent.mkdir(parents=True, exist_ok=True)
        tmp_root = root() / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        _sweep(tmp_root)
        work = Path(tempfile.mkdtemp(prefix=key[:16] + "-", dir=tmp_root))
        try:
            src = work / "kernel.c"
            src.write_text(source)
            lib = work / "kernel.so"
            # keep the source next to the artifact first, so compile errors point at a stable path
            _atomic_write(p["src"], source.encode())
            try:
                compiler.compile_shared(src, lib, work / "build.log", low_priority=background)
            except compiler.CompileError as exc:
                log_dst = p["src"].with_suffix(".log")
                shutil.copyfile(work / "build.log", log_dst)
                raise compiler.CompileError(
                    str(exc).replace(str(src), str(p["src"])).replace(str(work / "build.log"), str(log_dst))
                ) from None
            global BUILDS
            with _builds_lock:
                BUILDS += 1
            meta = dict(info)
            meta.update(key=key, size=lib.stat().st_size, sha256=_digest_file(lib), built=time.time())
            os.replace(lib, p["so"])
            _atomic_write(p["meta"], json.dumps(meta, indent=1, default=str).encode())
        finally:
            shutil.rmtree(work, ignore_errors=True)
    found = lookup(key)
    if found is None:  # pragma: no cover - the file system lost it between write and read
        raise compiler.CompileError(f"the kernel {p['so']} vanished right after it was built")
    return found


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        _remove(Path(tmp))
        raise


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _sweep(tmp_root: Path, older_than: float = 3600.0) -> None:
    """Remove build directories abandoned by killed processes."""
    now = time.time()
    try:
        entries = list(tmp_root.iterdir())
    except OSError:
        return
    for entry in entries:
        try:
            if now - entry.stat().st_mtime > older_than:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def clean_cache() -> list[str]:
    """Delete polykeops' compiled-kernel caches (directories tagged with CACHEDIR.TAG).

    Only subdirectories of ``polykeops.config.cache_dir()`` that carry a
    polykeops ``CACHEDIR.TAG`` are removed, so pointing ``POLYKEOPS_CACHE_DIR``
    at a shared directory never deletes anything else.  Kernels already loaded
    in this process stay usable.  Returns the removed directories.
    """
    base = config.cache_dir()
    removed = []
    if not base.is_dir():
        return removed
    for entry in sorted(base.iterdir()):
        tag = entry / "CACHEDIR.TAG"
        try:
            is_ours = entry.is_dir() and "polykeops" in tag.read_text()
        except OSError:
            is_ours = False
        if is_ours:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    from . import kernels

    kernels.forget_loaded()
    return removed
