"""Loading the CPU engine's driver (``_driver``) and, with it, the OpenMP runtime.

GNU OpenMP reads its settings once, when the runtime is loaded.  Its worker threads spin
for ``GOMP_SPINCOUNT`` iterations (300,000 by default, milliseconds) after each parallel
region before they sleep: on a machine shared with other work this burns a core after every
call.  When this module loads the runtime first (polykeops imported before torch, which
uses the same ``libgomp.so.1``) and the user set neither ``GOMP_SPINCOUNT`` nor
``OMP_WAIT_POLICY``, the runtime is loaded with ``GOMP_SPINCOUNT`` = :data:`SPIN_COUNT`
(about 0.1 to 0.5 ms), the environment being restored right after.
"""

from __future__ import annotations

import importlib
import os
import threading

#: GOMP_SPINCOUNT for a runtime loaded by polykeops (unless the user chose one)
SPIN_COUNT = "10000"

_lock = threading.Lock()
_state: dict = {}


def driver():
    """The Cython driver module, or None when the package was not built."""
    mod = _state.get("driver")
    if mod is not None or "error" in _state:
        return mod
    with _lock:
        if "driver" in _state or "error" in _state:
            return _state.get("driver")
        set_here = "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ
        if set_here:
            os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
        try:
            _state["driver"] = importlib.import_module(f"{__package__}._driver")
        except ImportError as exc:
            _state["error"] = str(exc)
        finally:
            if set_here:
                os.environ.pop("GOMP_SPINCOUNT", None)
        return _state.get("driver")


def why_not() -> str:
    """Why :func:`driver` returns None ('' when it does not)."""
    driver()
    return _state.get("error", "")
