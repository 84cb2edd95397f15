"""What the array-library glue provides to the shared front end (documentation + helpers)."""

from __future__ import annotations

from ..errors import DTypeError

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def check_float_dtype(name: str, what: str, shape) -> str:
    """``name`` if it is a supported float dtype, else a DTypeError naming the operand."""
    if name not in FLOAT_DTYPES:
        raise DTypeError(
            f"{what} has dtype {name} (shape {tuple(shape)}); polykeops works on "
            f"{', '.join(FLOAT_DTYPES)} arrays: convert it with .astype/.to first"
        )
    return name
