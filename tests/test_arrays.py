"""The array adapters (polykeops.backends.arrays), tested directly on NumPy arrays and torch tensors."""

from __future__ import annotations

import array
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import polykeops.backends.arrays as arrays
from polykeops.backends.arrays import adapter, adapter_for, find, kind_of
from polykeops.backends.arrays.base import Adapter
from polykeops.backends.arrays.numpy import NumpyNamespace
from polykeops.backends.arrays.torch import TorchNamespace

ROOT = Path(__file__).resolve().parents[1]


def test_kind_and_device():
    x, t = np.zeros((2, 3)), torch.zeros(2, 3)
    assert adapter_for(x).kind == "numpy" and kind_of(x) == "numpy"
    assert adapter_for(t).kind == "torch" and kind_of(t) == "torch"
    assert adapter_for(torch.nn.Parameter(t)).kind == "torch"  # subclasses too
    assert adapter_for(x) is adapter("numpy") and adapter_for(t) is adapter("torch")
    assert adapter_for(x).device(x) == "cpu"
    assert adapter_for(t).device(t) == "cpu"
    meta = torch.zeros(2, device="meta")
    assert adapter_for(meta).device(meta) == "meta"
    assert adapter_for(x).dtype_name(x) == "float64"
    assert adapter_for(t).dtype_name(t) == "float32"
    assert set(arrays.kinds()) >= {"numpy", "torch"}


def test_unknown_arrays_and_kinds():
    assert find([1.0, 2.0]) is None and kind_of(3.0) is None
    with pytest.raises(TypeError, match="list is not an array of a known kind"):
        adapter_for([1.0, 2.0])
    with pytest.raises(ValueError, match="unknown array kind 'jax'"):
        adapter("jax")


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_empty_astype_and_host_round_trips(kind):
    ad = adapter(kind)
    a = ad.empty((3, 2), "float32")
    assert ad.owns(a) and tuple(a.shape) == (3, 2) and ad.dtype_name(a) == "float32"
    host = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = ad.from_host(host)
    assert ad.owns(b) and ad.dtype_name(b) == "float32"
    np.testing.assert_array_equal(ad.to_host(b), host)
    c = ad.astype(b, "float64")
    assert ad.dtype_name(c) == "float64"
    np.testing.assert_array_equal(ad.to_host(c), host.astype(np.float64))
    assert ad.astype(c, "float64") is c  # no copy when the dtype is already right
    i = ad.empty((4,), "int64", like=b)
    assert ad.dtype_name(i) == "int64" and ad.device(i) == ad.device(b)
    np.testing.assert_array_equal(ad.to_host(ad.sum(b, -2, keepdims=True)), host.sum(-2, keepdims=True))
    np.testing.assert_array_equal(ad.to_host(ad.sum(b, -1)), host.sum(-1))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_host_views_share_memory(kind):
    ad = adapter(kind)
    a = ad.from_host(np.zeros((2, 2)))
    ad.to_host(a)[...] = 7.0  # a host array's NumPy view writes through
    assert float(ad.to_host(a)[1, 1]) == 7.0
    read_only = np.ones(3)
    read_only.flags.writeable = False
    assert ad.to_host(ad.from_host(read_only)).sum() == 3


def test_data_ptr_is_the_librarys_own():
    x = np.arange(12.0).reshape(3, 4)
    t = torch.arange(12.0).reshape(3, 4)
    assert adapter_for(x).data_ptr(x) == x.ctypes.data
    assert adapter_for(t).data_ptr(t) == t.data_ptr()
    assert adapter_for(t).data_ptr(t[1:]) == t[1:].data_ptr()


@pytest.mark.parametrize("make", [np.arange, torch.arange])
def test_contiguous(make):
    a = make(12.0).reshape(3, 4)
    ad = adapter_for(a)
    assert ad.contiguous(a) is a
    at = a.T
    c = ad.contiguous(at)
    assert c is not at and ad.to_host(c).flags.c_contiguous
    np.testing.assert_array_equal(ad.to_host(c), ad.to_host(at))


def test_reference_namespaces():
    x, t = np.zeros(2), torch.zeros(2, dtype=torch.float64)
    ns = adapter_for(x).namespace("float32", "float64", k=3, kahan=True)
    assert isinstance(ns, NumpyNamespace) and ns.dtype == np.float32 and ns.acc_dtype == np.float64
    assert ns.k == 3 and ns.kahan
    ts = adapter_for(t).namespace("float64", like=t)
    assert isinstance(ts, TorchNamespace) and ts.dtype == torch.float64 and ts.device == t.device
    assert ts.exp(torch.zeros(1)).item() == 1.0 and ns.asin(np.zeros(1))[0] == 0.0


class _PyArrayAdapter(Adapter):
    """Python's ``array.array`` (type code "d"): a new kind takes one adapter and one registry line."""

    kind = "pyarray"
    array_type = array.array

    @staticmethod
    def device(a):
        return "cpu"

    @staticmethod
    def data_ptr(a):
        return a.buffer_info()[0]

    @staticmethod
    def to_host(a):
        return np.frombuffer(a, dtype=np.float64)


ADAPTER = _PyArrayAdapter()


def test_a_new_kind_is_one_adapter_and_one_registry_line(monkeypatch):
    monkeypatch.setattr(arrays, "ADAPTERS", dict(arrays.ADAPTERS))
    monkeypatch.setattr(arrays, "_loaded", dict(arrays._loaded))
    monkeypatch.setattr(arrays, "_by_type", {})
    a = array.array("d", [1.0, 2.0])
    assert kind_of(a) is None
    arrays.register("pyarray", "array", __name__)
    ad = adapter_for(a)
    assert ad.kind == "pyarray" and ad.device(a) == "cpu" and ad.data_ptr(a) == a.buffer_info()[0]
    np.testing.assert_array_equal(ad.to_host(a), [1.0, 2.0])
    assert kind_of(np.zeros(1)) == "numpy"


def test_importing_the_adapters_imports_no_library():
    code = textwrap.dedent("""
        import json, sys
        import polykeops.backends.arrays as arrays
        before = sorted(m for m in ("numpy", "torch") if m in sys.modules)
        import numpy as np
        kind = arrays.adapter_for(np.zeros(2)).kind
        print(json.dumps([before, kind, "torch" in sys.modules]))
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    before, kind, torch_loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert before == [] and kind == "numpy" and not torch_loaded
