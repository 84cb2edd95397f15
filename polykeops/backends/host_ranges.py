"""Former name of :mod:`polykeops.backends.ranges` (to be removed once no module imports it)."""

from __future__ import annotations

from .ranges import ranges_error, structure_error, to_host

__all__ = ["ranges_error", "structure_error", "to_host"]
