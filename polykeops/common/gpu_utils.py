"""GPU discovery under pykeops' names (``pykeops.common.gpu_utils.get_gpu_number``)."""

from __future__ import annotations


def get_gpu_number() -> int:
    """The number of CUDA GPUs the CUDA backend can use (0 without a driver, a GPU or the
    ``cuda-python`` bindings).  Initialises the CUDA driver on the first call, not before."""
    from ..backends import instance

    backend = instance("cuda")
    if backend is None or not backend.availability()[0]:
        return 0
    from ..backends.cuda import driver

    return driver.init()


def gpu_available() -> bool:
    """Whether a CUDA GPU is usable (pykeops' ``config.gpu_available``)."""
    return get_gpu_number() > 0
