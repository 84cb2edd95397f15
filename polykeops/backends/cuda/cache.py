"""The CUDA backend's compiled kernels on disk: the ``cuda`` folder of the artifact store.

Each binary is ``cuda/<kk>/<key>.cubin`` (or ``.ptx``) with its metadata ``<key>.json``;
layout and rules (atomic, locked, checksummed, tagged) are those of
:mod:`polykeops.backends.artifact_cache`.  ``key`` is the SHA-256 of everything that
changes the binary: the CUDA source, the NVRTC options, the architecture, the NVRTC
version and the artifact kind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..artifact_cache import ArtifactStore, key_of

FOLDER = "cuda"


def store(kind: str = "cubin") -> ArtifactStore:
    """The store of the ``kind`` artifacts (``"cubin"`` or ``"ptx"``: one folder for both)."""
    return ArtifactStore(FOLDER, kind)


def cache_root() -> Path:
    return store().root


def make_key(source: str, options, arch: str, nvrtc_version, kind: str = "cubin") -> str:
    return key_of("polykeops-cuda-kernel", source, repr(tuple(options)), arch,
                  ".".join(map(str, nvrtc_version)), kind)


def _path(key: str, kind: str) -> Path:
    return store(kind).path(key)


def get_or_build(key: str, kind: str, build: Callable[[], bytes]) -> tuple[bytes, bool]:
    """The cached binary for ``key``, building and storing it if missing or damaged.

    Returns ``(binary, built)`` where ``built`` tells whether ``build`` ran.
    If the cache directory is not writable, builds without caching.
    """
    return store(kind).get_or_build(key, build)


def clean() -> list[str]:
    """Delete the CUDA binaries on disk (the tagged ``cuda`` folder); returns the removed folders."""
    return store().clean()
