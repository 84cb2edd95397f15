"""A CUDA backend without a GPU, for tests: real code generation and NVRTC builds, launches
run by the host emulator, "device memory" is CPU torch tensors."""

from __future__ import annotations

import dataclasses

import torch

import polykeops.backends.cuda as cu
from polykeops.backends.cuda import build, cubin, driver, emulator


class FakeDevice:
    sm_count = 4

    def __init__(self, loads):
        self.loads = loads

    def target(self):
        return "cubin", "sm_90"

    def make_current(self):
        pass

    def module(self, key, make_binary, names):
        self.loads.append(key)
        assert set(cubin.kernel_resources(make_binary())) >= set(names)  # a real cubin
        return driver.Module(None, {n: n for n in names}, {n: 128 for n in names})


def install(monkeypatch) -> list:
    """Patch the CUDA backend so that it runs on CPU torch tensors; returns the list of
    module loads (one key per loaded cubin)."""
    by_name, loads = {}, []
    real_source = build.kernel_source

    def recording(spec, n_batch_dims=0, idx64=False, ranges=False, arch=None):
        ks = real_source(spec, n_batch_dims, idx64, ranges, arch)
        by_name.update({n: ks for n in ks.kernel_names})
        return ks

    class FakeExecutor(emulator._Executor):
        def __init__(self, dev, module, tdev):
            super().__init__(None)

        def launch(self, name, grid, block, params):
            ks = by_name[name]
            self.lib = emulator._by_source.get(ks.digest) or emulator.build(ks)
            super().launch(name, grid, block, params)

    monkeypatch.setattr(build, "kernel_source", recording)
    monkeypatch.setattr(driver, "device", lambda ordinal: FakeDevice(loads))
    monkeypatch.setattr(driver, "TorchExecutor", FakeExecutor)
    monkeypatch.setattr(cu, "_device_of", lambda args: torch.device("cpu"))
    return loads


def fake_backend(monkeypatch, backend=None):
    """A (or the given) CudaBackend that pretends to be available and to take CPU tensors."""
    backend = backend or cu.CudaBackend()
    monkeypatch.setattr(backend, "_availability", (True, "fake GPU"))
    caps = dataclasses.replace(backend.capabilities, devices=frozenset({"cpu", "cuda"}))
    monkeypatch.setattr(backend, "capabilities", caps)
    return backend
