"""Exceptions raised by polykeops.

Every error a user can cause derives from :class:`PolyKeopsError`; the
sub-classes also derive from the matching built-in exception so that
``except ValueError`` style handlers keep working.
"""

from __future__ import annotations


class PolyKeopsError(Exception):
    """Base class of every error raised by polykeops."""


class FormulaError(PolyKeopsError, ValueError):
    """A formula is malformed: incompatible dimensions, bad parameters, unknown op."""


class FormulaSyntaxError(FormulaError):
    """A formula string could not be parsed; the message points at the position."""

    def __init__(self, message: str, text: str = "", position: int | None = None):
        self.text = text
        self.position = position
        if position is not None and text:
            pointer = " " * position + "^"
            message = f"{message}\n    {text}\n    {pointer}"
        super().__init__(message)


class ShapeError(PolyKeopsError, ValueError):
    """Operands have incompatible shapes (batch, i/j sizes or vector dimensions)."""


class DTypeError(PolyKeopsError, TypeError):
    """Operands have unsupported or mixed dtypes."""


class DeviceError(PolyKeopsError, ValueError):
    """Operands live on different devices, or on a device the backend cannot use."""


class BackendError(PolyKeopsError, RuntimeError):
    """A backend is unknown, unavailable, or failed to evaluate a reduction."""


class ConfigError(PolyKeopsError, ValueError):
    """An environment variable or option has an invalid value."""


class NotDifferentiableError(PolyKeopsError, RuntimeError):
    """A gradient was requested through an operation that has none."""


class CacheUnavailable(PolyKeopsError, OSError):
    """The compiled-kernel cache directory cannot be used (read-only, not a directory, full...)."""
