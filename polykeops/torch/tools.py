"""torch glue: how the shared front end handles torch tensors."""

from __future__ import annotations

import torch

from ..backends.arrays.torch import TorchLibrary
from ..common.adapters import ArrayTools
from ..common.tools import check_float_dtype
from ..errors import DTypeError

_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
          torch.float64: "float64"}
_DTYPES = {v: k for k, v in _NAMES.items()}


class TorchTools(TorchLibrary, ArrayTools):
    array_type = torch.Tensor
    array_kind = "torch"

    @staticmethod
    def dtype_name(x, what: str) -> str:
        if x.layout != torch.strided:
            raise DTypeError(
                f"{what}: a {str(x.layout).replace('torch.', '')} tensor of shape {tuple(x.shape)} is not "
                "supported: pass a dense tensor (x.to_dense())"
            )
        name = _NAMES.get(x.dtype, str(x.dtype).replace("torch.", ""))
        return check_float_dtype(name, what, x.shape)

    @staticmethod
    def dtype_object(name):
        return _DTYPES.get(name) if name else None

    @staticmethod
    def device_name(x) -> str:
        return str(x.device)

    @staticmethod
    def insert_j_axis(v):
        return v.unsqueeze(-3)

    @staticmethod
    def scalar_array(value, dtype, like=None, shape=(1,)):
        device = like.device if like is not None else "cpu"
        if isinstance(value, tuple):
            return torch.tensor(value, dtype=_DTYPES[dtype], device=device).reshape(shape)
        return torch.full(shape, value, dtype=_DTYPES[dtype], device=device)

    @staticmethod
    def autocast_dtype(device) -> str | None:
        """Under ``torch.autocast`` on ``device``, operands of different dtypes meet in float32
        (reductions are exp/log/sum-like: torch's float32 list, not its matmul-like list)."""
        kind = str(device or "cpu").split(":")[0]
        return "float32" if torch.is_autocast_enabled(kind) else None

    @staticmethod
    def as_arg(a, shape, dtype):
        if a.dtype != _DTYPES[dtype] and torch.is_autocast_enabled(a.device.type):
            a = a.to(_DTYPES[dtype])  # torch.autocast: see autocast_dtype
        if a.dtype != _DTYPES[dtype]:
            raise DTypeError(f"argument of shape {tuple(a.shape)} has dtype {a.dtype}, expected {dtype}")
        return a.reshape(shape).contiguous()

    @staticmethod
    def copy_into(out, res):
        with torch.no_grad():
            out.copy_(res)

    @staticmethod
    def as_int64(r, name):
        if r.dtype.is_floating_point or r.dtype.is_complex or r.dtype == torch.bool:
            raise DTypeError(f"ranges: {name} must be an integer tensor, got dtype {r.dtype}")
        return r.to(torch.int64).contiguous()

    @staticmethod
    def evaluate(call, args):
        from .autograd import reduce

        return reduce(call, list(args))

    @staticmethod
    def to_numpy(a):
        return a.detach().cpu().numpy()

    @staticmethod
    def from_numpy(a):
        return torch.from_numpy(a)

    @staticmethod
    def solve(lazy, b, *, alpha, tol, max_iter, backend, options):
        from .solve import differentiable_solve

        return differentiable_solve(lazy, b, alpha, tol, max_iter, backend, options)

    @staticmethod
    def namespace(dtype, like=None):
        from ..backends.arrays.torch import TorchNamespace

        return TorchNamespace(dtype, device=like.device if like is not None else "cpu")

    @staticmethod
    def solve_operator(apply_k, tensors, b, alpha, tol, max_iter):
        from .solve import solve_operator

        return solve_operator(apply_k, tensors, b, alpha, tol, max_iter)

    # -- complex LazyTensors: complex (..., D) <-> real blocks (..., 2D) = [real parts, imaginary parts]
    @staticmethod
    def is_complex(x) -> bool:
        return isinstance(x, torch.Tensor) and x.is_complex()

    @staticmethod
    def from_real_blocks(x):
        d = x.shape[-1] // 2
        return torch.complex(x[..., :d], x[..., d:])

    @staticmethod
    def complex_dtype_object(name):
        return {"complex64": torch.complex64, "complex128": torch.complex128}.get(name)
