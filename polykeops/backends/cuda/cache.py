"""Disk cache of compiled kernels (cubins), safe across threads and processes.

Layout: ``<POLYKEOPS_CACHE_DIR>/cuda/<key[:2]>/<key>.cubin`` where ``key`` is
the SHA-256 of everything that changes the binary: the CUDA source, the NVRTC
options, the architecture, the NVRTC version and the artifact kind.  Each file
holds a header (magic, payload length, SHA-256 of the payload) and the payload:

* written to a private temporary file in the same directory, flushed, then
  renamed into place (``os.replace`` is atomic), so no reader ever sees half a
  file;
* guarded by an exclusive ``fcntl`` lock on ``<key>.lock`` while compiling, so
  that N processes asking for the same new kernel compile it once;
* verified on every read: a truncated or corrupted file is deleted and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from ... import config
from ..file_lock import file_lock

MAGIC = b"PKCUBIN1"
_HEADER = struct.Struct("<8sQ32s")


def cache_root() -> Path:
    return config.cache_dir() / "cuda"


def make_key(source: str, options, arch: str, nvrtc_version, kind: str = "cubin") -> str:
    h = hashlib.sha256()
    for part in (source, "\0".join(options), arch, ".".join(map(str, nvrtc_version)), kind):
        h.update(part.encode())
        h.update(b"\x00\x01")
    return h.hexdigest()


def _path(key: str, kind: str) -> Path:
    return cache_root() / key[:2] / f"{key}.{kind}"


def _read(path: Path) -> bytes | None:
    """The payload of a cache file, or None when it is missing or damaged (then deleted)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return None
    if len(data) >= _HEADER.size:
        magic, length, digest = _HEADER.unpack_from(data)
        payload = data[_HEADER.size:]
        if magic == MAGIC and length == len(payload) and hashlib.sha256(payload).digest() == digest:
            return payload
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def _write(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = _HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(header + payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def get_or_build(key: str, kind: str, build: Callable[[], bytes]) -> tuple[bytes, bool]:
    """The cached payload for ``key``, building and storing it if needed.

    Returns ``(payload, built)`` where ``built`` tells whether ``build`` ran.
    If the cache directory is not writable, builds without caching.
    """
    path = _path(key, kind)
    payload = _read(path)
    if payload is not None:
        return payload, False
    try:
        lock = file_lock(Path(str(path) + ".lock"))
        lock.__enter__()
    except OSError:  # unwritable cache directory: build, do not cache
        return build(), True
    try:
        payload = _read(path)  # another process may have built it meanwhile
        if payload is not None:
            return payload, False
        payload = build()
        with contextlib.suppress(OSError):
            _write(path, payload)
        return payload, True
    finally:
        lock.__exit__(None, None, None)
