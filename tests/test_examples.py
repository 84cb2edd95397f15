"""The pykeops documentation example, with the import changed, on torch and on NumPy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_pykeops_doc_example_torch():
    from polykeops.torch import LazyTensor

    x = torch.randn(1000, 3, requires_grad=True)
    y = torch.randn(2000, 3)
    x_i = LazyTensor(x[:, None, :])
    y_j = LazyTensor(y[None, :, :])
    D_ij = ((x_i - y_j) ** 2).sum(dim=2)
    K_ij = (-D_ij).exp()
    a_i = K_ij.sum(dim=1)
    g_x = torch.autograd.grad((a_i**2).sum(), [x])

    assert a_i.shape == (1000, 1)
    assert g_x[0].shape == (1000, 3)
    xd = x.detach().double().requires_grad_()
    a_ref = torch.exp(-((xd[:, None, :] - y.double()[None, :, :]) ** 2).sum(2)).sum(1, keepdim=True)
    (g_ref,) = torch.autograd.grad((a_ref**2).sum(), [xd])
    torch.testing.assert_close(a_i.double(), a_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_x[0].double(), g_ref, rtol=1e-4, atol=1e-4)


NUMPY_EXAMPLE = """
import numpy as np
from polykeops.numpy import LazyTensor

rng = np.random.default_rng(0)
x = rng.standard_normal((1000, 3)); y = rng.standard_normal((2000, 3))
x_i = LazyTensor(x[:, None, :]); y_j = LazyTensor(y[None, :, :])
D_ij = ((x_i - y_j) ** 2).sum(dim=2); K_ij = (-D_ij).exp(); a_i = K_ij.sum(dim=1)

a_ref = np.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(2)).sum(1, keepdims=True)
assert isinstance(a_i, np.ndarray) and a_i.shape == (1000, 1) and a_i.dtype == np.float64
np.testing.assert_allclose(a_i, a_ref, rtol=1e-10)
"""


def test_pykeops_doc_example_numpy():
    namespace: dict = {}
    exec(compile(NUMPY_EXAMPLE, "numpy_example", "exec"), namespace)


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def test_numpy_api_works_without_torch():
    code = "import sys\nsys.modules['torch'] = None\n" + textwrap.dedent(NUMPY_EXAMPLE) + textwrap.dedent("""
        F = (LazyTensor(x[:, None, :]) - LazyTensor(y[None, :, :])).sqnorm2()
        v, i = F.min_argmin(dim=1)
        d = ((x[:, None, :] - y[None, :, :]) ** 2).sum(2)
        np.testing.assert_array_equal(i[:, 0], d.argmin(1))
        np.testing.assert_allclose(F.logsumexp(dim=0)[:, 0], np.log(np.exp(d).sum(0)), rtol=1e-10)
        loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))
        assert sys.modules['torch'] is None and loaded == ['torch'], loaded
        print('OK')
    """)
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK")


def test_numpy_float32_example():
    from polykeops.numpy import LazyTensor

    x = np.random.randn(300, 3).astype(np.float32)
    y = np.random.randn(400, 3).astype(np.float32)
    K = (-((LazyTensor(x[:, None, :]) - LazyTensor(y[None, :, :])) ** 2).sum(dim=2)).exp()
    a = K.sum(dim=1)
    assert a.dtype == np.float32
    ref = np.exp(-((x[:, None, :].astype(np.float64) - y[None, :, :]) ** 2).sum(2)).sum(1, keepdims=True)
    np.testing.assert_allclose(a, ref, rtol=1e-4, atol=1e-5)
