"""Environment configuration, read at use time (never at import time).

=========================  =================================================
``POLYKEOPS_BACKEND``      ``auto`` (default), ``cpu``, ``cuda``, ``reference``
                           or the name of a registered plugin backend
``POLYKEOPS_CACHE_DIR``    where compiled kernels are cached
                           (default: ``$XDG_CACHE_HOME/polykeops`` or
                           ``~/.cache/polykeops``)
``POLYKEOPS_JIT``          ``auto`` (default), ``sync`` or ``off``: how the CPU
                           engine compiles specialised kernels
``POLYKEOPS_NUM_THREADS``  number of CPU threads (default: the CPUs this process may run on)
``POLYKEOPS_VERBOSE``      ``0`` (default) or ``1``
=========================  =================================================
"""

from __future__ import annotations

import os
from difflib import get_close_matches
from pathlib import Path

from .errors import ConfigError

#: the package's version (part of every compiled artifact's cache key)
__version__ = "0.1.0"


def _choice(var: str, value: str, valid: tuple[str, ...]) -> str:
    if value in valid:
        return value
    close = get_close_matches(value, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{var}={value!r} is not valid; use one of {', '.join(valid)}.{hint}")


def backend_name() -> str:
    """The backend asked for by ``POLYKEOPS_BACKEND`` (``"auto"`` when unset); validated by the registry."""
    return os.environ.get("POLYKEOPS_BACKEND", "").strip() or "auto"


def jit_mode() -> str:
    value = os.environ.get("POLYKEOPS_JIT", "").strip().lower() or "auto"
    return _choice("POLYKEOPS_JIT", value, ("auto", "sync", "off"))


def num_threads() -> int | None:
    value = os.environ.get("POLYKEOPS_NUM_THREADS", "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"POLYKEOPS_NUM_THREADS={value!r} must be a positive integer")
    return n


def verbose() -> bool:
    value = os.environ.get("POLYKEOPS_VERBOSE", "").strip() or "0"
    return _choice("POLYKEOPS_VERBOSE", value, ("0", "1")) == "1"


def cache_dir() -> Path:
    value = os.environ.get("POLYKEOPS_CACHE_DIR", "").strip()
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "polykeops"
