"""The incumbent, imported quietly when it is installed (benchmarks compare against it)."""

from __future__ import annotations

import os
import sys


def import_pykeops_torch():
    """``pykeops.torch`` with its ``cluster`` helpers (import banner silenced), or None."""
    try:
        with open(os.devnull, "w") as null:
            stdout, sys.stdout = sys.stdout, null
            try:
                import pykeops.torch as keops_torch
                import pykeops.torch.cluster  # noqa: F401  (keops_torch.cluster)
            finally:
                sys.stdout = stdout
    except Exception:  # pragma: no cover - optional baseline
        return None
    return keops_torch
