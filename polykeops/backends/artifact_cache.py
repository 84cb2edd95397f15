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
  tagged folders are ever deleted (:meth:`ArtifactStore.clean`, :func:`clean_tagged`);
* **private and authenticated**: folders are created ``0700`` and files ``0600``
  (libraries ``0700``) whatever the umask; a cache directory that is not owned by
  this user, or that group or others may write, is refused (one warning) and a
  private one under the system's temporary directory is used instead.  Before an
  artifact is loaded, its file and its metadata must be owned by this user and
  writable by nobody else, and the metadata must carry an HMAC-SHA256 of the
  artifact's digest under a random secret (``<folder>/secret``, ``0600``) that only
  this user can read: a file planted by another user, even with a matching
  checksum, is never loaded (it reads as missing, and is rebuilt and replaced);
* **bounded**: each folder holds at most ``POLYKEOPS_CACHE_SIZE`` bytes (default
  2 GB); storing past it deletes the least recently used artifacts (their metadata's
  modification time is refreshed when they are used, at most once an hour);
* **optional**: a cache directory that cannot be used (read-only, not a directory,
  a full disk) makes the store raise :class:`CacheUnavailable` (an ``OSError``
  naming the path and ``POLYKEOPS_CACHE_DIR``) when asked to write, and read as
  empty; the callers then compute without it (the CPU backend's generic engine) or
  report it.

METADATA, one JSON object: ``format`` (2), ``key``, ``file`` (the artifact's name),
``size``, ``sha256``, ``mac``, ``built`` (a timestamp), plus what the backend adds
(``info``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from .. import config
from ..errors import CacheUnavailable
from .file_lock import file_lock

FORMAT = 2
#: errors of the file system holding the cache (full, quota, file too large, read-only)
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}
#: seconds between two refreshes of an artifact's last-use time
TOUCH_EVERY = 3600.0


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
        return cache_base() / self.folder

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

    def _trusted_meta(self, key: str) -> dict | None:
        """The metadata of ``key`` if it and the artifact are ours (owner, mode) and it carries our
        HMAC of the recorded digest; None otherwise."""
        path, meta_path = self.path(key), self.meta_path(key)
        if not (_private_file(meta_path) and _private_file(path)):
            return None
        meta = self._meta(key)
        if meta is None or meta.get("format") != FORMAT:
            return None
        secret = self._secret(create=False)
        if secret is None or not hmac.compare_digest(str(meta.get("mac", "")),
                                                     _mac(secret, key, str(meta.get("sha256")))):
            return None
        return meta

    def lookup(self, key: str) -> Path | None:
        """The path of the valid artifact of ``key``, or None (missing, not ours, or failing its
        checksum or its authentication)."""
        meta = self._trusted_meta(key)
        path = self.path(key)
        try:
            ok = meta is not None and path.stat().st_size == meta.get("size") \
                and _digest_file(path) == meta.get("sha256")
        except OSError:
            ok = False
        if ok:
            self._used(key)
        return path if ok else None

    def read(self, key: str) -> bytes | None:
        """The bytes of the valid artifact of ``key``, or None (verified on the bytes returned)."""
        meta = self._trusted_meta(key)
        if meta is None:
            return None
        try:
            data = self.path(key).read_bytes()
        except OSError:
            return None
        if len(data) != meta.get("size") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            return None
        self._used(key)
        return data

    def discard(self, key: str) -> None:
        """Delete the artifact of ``key`` and its companions (e.g. one its loader rejected); the
        metadata goes first, so that no reader sees an artifact without it as valid."""
        with contextlib.suppress(OSError):
            self.meta_path(key).unlink()
        folder = self.path(key).parent
        with contextlib.suppress(OSError):
            for entry in folder.glob(f"{key}.*"):
                with contextlib.suppress(OSError):
                    entry.unlink()

    def _used(self, key: str) -> None:
        """Refresh the last-use time of ``key`` (its metadata's mtime), at most once an hour."""
        meta_path = self.meta_path(key)
        with contextlib.suppress(OSError):
            if time.time() - meta_path.stat().st_mtime > TOUCH_EVERY:
                os.utime(meta_path)

    def _secret(self, create: bool) -> bytes | None:
        """This folder's HMAC secret (created with ``create``), or None."""
        path = self.root / "secret"
        if _private_file(path):
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                if len(data) == 32:
                    return data
        if not create:
            return None
        data = secrets.token_bytes(32)
        atomic_write(path, data)
        return data

    # -- writing (under lock(key)) -------------------------------------------------------
    def lock(self, key: str):
        """The inter-process lock of ``key`` (a context manager); :class:`CacheUnavailable` if the
        cache is not writable."""
        locks = self._ensure_root() / "locks"
        _unavailable_if_fails(lambda: _private_dir(locks), locks)
        return file_lock(locks / f"{key}.lock")

    @contextlib.contextmanager
    def workspace(self, key: str):
        """A private temporary directory in the cache (removed afterwards), to build ``key`` in."""
        tmp_root = self._ensure_root() / "tmp"
        _unavailable_if_fails(lambda: _private_dir(tmp_root), tmp_root)
        _sweep(tmp_root)
        work = Path(tempfile.mkdtemp(prefix=f"{key[:16]}-{_HOST}-{os.getpid()}-", dir=tmp_root))
        try:
            yield work
        except OSError as exc:
            if exc.errno not in _STORAGE_ERRNOS or isinstance(exc, CacheUnavailable):
                raise
            raise self._full(key, exc) from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def put(self, key: str, artifact: bytes | Path, info: dict | None = None) -> Path:
        """Store ``artifact`` (bytes, or a file that is moved) as the artifact of ``key``; returns
        its path.  The caller holds ``lock(key)``."""
        try:
            return self._put(key, artifact, info)
        except CacheUnavailable:
            raise
        except OSError as exc:  # a full disk, a quota, a file-size limit...
            self.discard(key)
            raise self._full(key, exc) from exc

    def _full(self, key: str, exc: OSError) -> CacheUnavailable:
        message = (f"cannot write {key[:16]}... in the polykeops cache {self.root} "
                   f"({exc.strerror or exc}); free space there or set POLYKEOPS_CACHE_DIR elsewhere")
        _warn_once(("full", str(self.root)), f"polykeops: {message}.")
        return CacheUnavailable(message)

    def _put(self, key: str, artifact: bytes | Path, info: dict | None) -> Path:
        path = self.path(key)
        self._ensure_root()
        secret = self._secret(create=True)
        _private_dir(path.parent)
        if isinstance(artifact, (bytes, bytearray)):
            atomic_write(path, bytes(artifact))
            size, digest = len(artifact), hashlib.sha256(artifact).hexdigest()
        else:
            size, digest = artifact.stat().st_size, _digest_file(artifact)
            try:
                os.chmod(artifact, 0o700)  # a library: this user reads and maps it, nobody else
                os.replace(artifact, path)  # from workspace(): the same file system, a rename
            except OSError:  # elsewhere: copy next to its place first
                atomic_write(path, Path(artifact).read_bytes(), mode=0o700)
        meta = dict(info or {})
        meta.update(format=FORMAT, key=key, file=path.name, size=size, sha256=digest,
                    mac=_mac(secret, key, digest), built=time.time())
        atomic_write(self.meta_path(key), json.dumps(meta, indent=1, default=str).encode())
        self.evict(keep=key)
        return path

    # -- size ------------------------------------------------------------------------------
    def entries(self) -> list[tuple[str, int, float]]:
        """``(key, bytes, last use)`` of every artifact in the folder (companions counted)."""
        found: dict[str, list] = {}
        try:
            subdirs = [d for d in self.root.iterdir() if d.is_dir() and len(d.name) == 2]
        except OSError:
            return []
        for sub in subdirs:
            with contextlib.suppress(OSError):
                for entry in os.scandir(sub):
                    key, _, ext = entry.name.partition(".")
                    if not ext or entry.name.startswith("."):
                        continue
                    with contextlib.suppress(OSError):
                        st = entry.stat()
                        rec = found.setdefault(key, [0, 0.0])
                        rec[0] += st.st_size
                        if ext == "json":
                            rec[1] = st.st_mtime
        return [(k, size, used) for k, (size, used) in found.items()]

    def evict(self, keep: str | None = None, limit: int | None = None) -> list[str]:
        """Delete the least recently used artifacts until the folder holds at most ``limit`` bytes
        (default ``POLYKEOPS_CACHE_SIZE``), never ``keep``; returns the deleted keys."""
        limit = config.cache_size() if limit is None else limit
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = []
        for key, size, _ in sorted(entries, key=lambda e: e[2]):
            if total <= limit:
                break
            if key == keep:
                continue
            self.discard(key)
            total -= size
            removed.append(key)
        return removed

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
        except OSError:  # unusable cache directory: build, do not store
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
        """The folder, created (``0700``) and tagged; :class:`CacheUnavailable` if it cannot be."""
        root = self.root
        _unavailable_if_fails(lambda: _private_dir(root), root)
        tag = root / "CACHEDIR.TAG"
        if not tag.exists():
            with contextlib.suppress(OSError):
                atomic_write(tag, TAG.encode())
        return root


# -- the cache's base directory ----------------------------------------------------------------
_warned: set = set()
_warn_lock = threading.Lock()


def _warn_once(what: str, message: str) -> None:
    with _warn_lock:
        if what in _warned:
            return
        _warned.add(what)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def private_fallback() -> Path:
    """The private cache used when the configured one is refused: ``<tmp>/polykeops-<uid>``."""
    return Path(tempfile.gettempdir()) / f"polykeops-{os.getuid()}"


def cache_base() -> Path:
    """The cache directory to use: ``config.cache_dir()``, unless it exists and is not safe (not
    owned by this user, or writable by group or others): then, with one warning, the private
    fallback (:func:`private_fallback`)."""
    base = config.cache_dir()
    why = _unsafe(base)
    if why is None:
        return base
    fallback = private_fallback()
    _warn_once(("unsafe", str(base)),
               f"polykeops: not using the cache directory {base}: {why}. Compiled kernels from it "
               f"could run another user's code. Using {fallback} instead; set POLYKEOPS_CACHE_DIR to a "
               f"directory only you can write (chmod 700) to choose another.")
    if _unsafe(fallback) is not None:
        raise CacheUnavailable(f"neither the cache directory {base} nor {fallback} is private to this "
                               f"user; set POLYKEOPS_CACHE_DIR to a directory only you can write")
    return fallback


def _unsafe(path: Path) -> str | None:
    """Why ``path`` (if it exists) is no safe cache directory, or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # missing (created private) or unusable (reported when written)
    if not stat.S_ISDIR(st.st_mode):
        return None  # reported as unusable when written
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"it belongs to user id {st.st_uid}, not to this user ({os.getuid()})"
    if st.st_mode & 0o022:
        return f"group or others may write to it (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700 whatever the umask."""
    if path.is_dir():
        return
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):  # each folder created here is private, parents included
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
            os.chmod(folder, 0o700)
    if not missing[0].is_dir() if missing else not path.is_dir():
        raise NotADirectoryError(f"{missing[0] if missing else path} is not a directory")


def _private_file(path: Path) -> bool:
    """Whether ``path`` is a regular file owned by this user that nobody else may write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o022:
        return False
    return not hasattr(os, "getuid") or st.st_uid == os.getuid()


def _unavailable_if_fails(make: Callable[[], None], path: Path) -> None:
    try:
        make()
    except OSError as exc:
        message = (f"the polykeops cache directory {path} cannot be used ({exc.strerror or exc}); set "
                   f"POLYKEOPS_CACHE_DIR to a writable directory")
        _warn_once(("unusable", str(path)), f"polykeops: {message}. Compiled kernels are not kept; the "
                   f"CPU backend's generic engine answers meanwhile.")
        raise CacheUnavailable(message) from exc


def _mac(secret: bytes, key: str, digest: str) -> str:
    return hmac.new(secret, f"{key}\0{digest}".encode(), hashlib.sha256).hexdigest()


def clean_tagged() -> list[str]:
    """Delete every folder of the cache directory that polykeops tagged (a backend's cache,
    loaded or not); returns the removed folders.  Untagged folders are never touched."""
    base = cache_base()
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


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` (mode ``mode``) through a temporary file in the same folder and a rename."""
    _private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, mode)
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


_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"


def _sweep(tmp_root: Path, older_than: float = 3600.0) -> None:
    """Remove build directories abandoned by killed processes: those of a process of this host
    that no longer runs, and any older than ``older_than`` seconds (another host's)."""
    now = time.time()
    try:
        entries = list(tmp_root.iterdir())
    except OSError:
        return
    for entry in entries:
        with contextlib.suppress(OSError):
            parts = entry.name.split("-")
            gone = len(parts) >= 4 and parts[1] == _HOST and parts[2].isdigit() and not _alive(int(parts[2]))
            if gone or now - entry.stat().st_mtime > older_than:
                shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True
