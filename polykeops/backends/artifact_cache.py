"""The on-disk store of compiled artifacts (CPU kernels, CUDA cubins), shared by the backends.

Layout, under ``polykeops.config.cache_dir()``, one folder per backend::

    <folder>/CACHEDIR.TAG              marks the folder as a polykeops cache (see clean)
    <folder>/<kk>/<key>.<ext>          the artifact (a shared library, a cubin...), kk = key[:2]
    <folder>/<kk>/<key>.json           its metadata, written last (METADATA below)
    <folder>/<kk>/<key>.<other>        companions a backend keeps (the CPU: source and build log)
    <folder>/locks/<key>.lock          the inter-process lock held while one process builds <key>
    <folder>/tmp/<random>/             private build directories (swept after an hour)

``key`` is :func:`key_of` the key material, which the caller gives: everything that
changes the binary (source, compiler and flags, target, versions).  The rules:

* **atomic**: an artifact is written under a temporary name in its final folder, then
  renamed into place (``os.replace``), then its metadata likewise: a reader never sees
  half a file, and a file is never rewritten in place (a loaded library stays intact);
* **locked**: :meth:`ArtifactStore.lock` (``file_lock``) is held while building, so that
  N processes (or threads) asking for the same new artifact build it once;
* **checksummed**: the metadata records the artifact's size and SHA-256, verified on
  every load; a truncated or corrupted artifact (or damaged metadata) reads as missing,
  so it is rebuilt and replaced, never loaded;
* **tagged**: every folder the store creates carries a ``CACHEDIR.TAG``, and only
  tagged folders are ever deleted (:meth:`ArtifactStore.clean`, :func:`clean_tagged`).

METADATA, one JSON object: ``format`` (1), ``key``, ``file`` (the artifact's name),
``size``, ``sha256``, ``built`` (a timestamp), plus what the backend adds (``info``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .. import config
from .file_lock import file_lock

FORMAT = 1
TAG = "Signature: 8a477f597d28d172789f06886806bc55\n# polykeops compiled-kernel cache (safe to delete)\n"


def key_of(*parts: str) -> str:
    """The key (a SHA-256, hex) of the key material ``parts``."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


class ArtifactStore:
    """The artifacts ``<key>.<ext>`` of one folder of the cache (the folder is read from the
    configuration at each use, so ``POLYKEOPS_CACHE_DIR`` may change between calls)."""

    def __init__(self, folder: str, ext: str):
        self.folder = folder
        self.ext = ext

    @property
    def root(self) -> Path:
        return config.cache_dir() / self.folder

    def path(self, key: str, ext: str | None = None) -> Path:
        """Where the artifact of ``key`` lives (``ext``: a companion file instead)."""
        return self.root / key[:2] / f"{key}.{ext or self.ext}"

    def meta_path(self, key: str) -> Path:
        return self.path(key, "json")

    # -- reading -------------------------------------------------------------------------
    def _meta(self, key: str) -> dict | None:
        try:
            meta = json.loads(self.meta_path(key).read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and meta.get("key") == key else None

    def lookup(self, key: str) -> Path | None:
        """The path of the valid artifact of ``key``, or None (missing, or failing its checksum)."""
        meta = self._meta(key)
        path = self.path(key)
        try:
            ok = meta is not None and path.stat().st_size == meta.get("size") \
                and _digest_file(path) == meta.get("sha256")
        except OSError:
            ok = False
        return path if ok else None

    def read(self, key: str) -> bytes | None:
        """The bytes of the valid artifact of ``key``, or None (verified on the bytes returned)."""
        meta = self._meta(key)
        if meta is None:
            return None
        try:
            data = self.path(key).read_bytes()
        except OSError:
            return None
        if len(data) != meta.get("size") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            return None
        return data

    # -- writing (under lock(key)) -------------------------------------------------------
    def lock(self, key: str):
        """The inter-process lock of ``key`` (a context manager); OSError if the cache is not writable."""
        return file_lock(self._ensure_root() / "locks" / f"{key}.lock")

    @contextlib.contextmanager
    def workspace(self, key: str):
        """A private temporary directory in the cache (removed afterwards), to build ``key`` in."""
        tmp_root = self._ensure_root() / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        _sweep(tmp_root)
        work = Path(tempfile.mkdtemp(prefix=key[:16] + "-", dir=tmp_root))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def put(self, key: str, artifact: bytes | Path, info: dict | None = None) -> Path:
        """Store ``artifact`` (bytes, or a file that is moved) as the artifact of ``key``; returns
        its path.  The caller holds ``lock(key)``."""
        path = self.path(key)
        self._ensure_root()
        if isinstance(artifact, (bytes, bytearray)):
            atomic_write(path, bytes(artifact))
            size, digest = len(artifact), hashlib.sha256(artifact).hexdigest()
        else:
            size, digest = artifact.stat().st_size, _digest_file(artifact)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(artifact, path)  # from workspace(): the same file system, a rename
            except OSError:  # elsewhere: copy next to its place first
                atomic_write(path, Path(artifact).read_bytes())
        meta = dict(info or {})
        meta.update(format=FORMAT, key=key, file=path.name, size=size, sha256=digest, built=time.time())
        atomic_write(self.meta_path(key), json.dumps(meta, indent=1, default=str).encode())
        return path

    def get_or_build(self, key: str, build: Callable[[], bytes],
                     info: dict | None = None) -> tuple[bytes, bool]:
        """The artifact of ``key`` as bytes, built by ``build()`` and stored if missing or damaged.

        Returns ``(payload, built)``.  Processes racing for the same key build it once.
        If the cache is not writable, builds without storing.
        """
        payload = self.read(key)
        if payload is not None:
            return payload, False
        try:
            lock = self.lock(key)
            lock.__enter__()
        except OSError:  # unwritable cache directory: build, do not store
            return build(), True
        try:
            payload = self.read(key)  # another process may have built it meanwhile
            if payload is not None:
                return payload, False
            payload = build()
            with contextlib.suppress(OSError):
                self.put(key, payload, info)
            return payload, True
        finally:
            lock.__exit__(None, None, None)

    # -- cleaning ------------------------------------------------------------------------
    def clean(self) -> list[str]:
        """Delete this store's folder if polykeops tagged it; returns the removed folders."""
        return [str(self.root)] if _remove_if_tagged(self.root) else []

    def _ensure_root(self) -> Path:
        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        tag = root / "CACHEDIR.TAG"
        if not tag.exists():
            with contextlib.suppress(OSError):
                atomic_write(tag, TAG.encode())
        return root


def clean_tagged() -> list[str]:
    """Delete every folder of ``config.cache_dir()`` that polykeops tagged (a backend's cache,
    loaded or not); returns the removed folders.  Untagged folders are never touched."""
    base = config.cache_dir()
    if not base.is_dir():
        return []
    return [str(entry) for entry in sorted(base.iterdir()) if _remove_if_tagged(entry)]


def _remove_if_tagged(folder: Path) -> bool:
    try:
        ours = folder.is_dir() and "polykeops" in (folder / "CACHEDIR.TAG").read_text()
    except OSError:
        ours = False
    if ours:
        shutil.rmtree(folder, ignore_errors=True)
    return ours


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sweep(tmp_root: Path, older_than: float = 3600.0) -> None:
    """Remove build directories abandoned by killed processes."""
    now = time.time()
    try:
        entries = list(tmp_root.iterdir())
    except OSError:
        return
    for entry in entries:
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime > older_than:
                shutil.rmtree(entry, ignore_errors=True)
