"""Shared fixtures of the polykeops test suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polykeops import backends as registry
from polykeops.backends.reference import ReferenceBackend

#: name of a reference backend with tiny tiles: every reduction is split into
#: many i- and j-tiles, so the reductions' ``combine`` rules are exercised.
TINY = "reference_tiny_tiles"


class TinyTileBackend(ReferenceBackend):
    name = TINY
    priority = -10  # never chosen automatically

    def __init__(self):
        super().__init__(tile_elements=2048)


@pytest.fixture(scope="session")
def tiny_tiles():
    """The name of the tiny-tile reference backend (registered for the session)."""
    registry.register_backend(TINY, TinyTileBackend, replace=True)
    yield TINY
    registry.unregister_backend(TINY)


def pytest_addoption(parser):
    group = parser.getgroup("polykeops")
    group.addoption("--run-slow", action="store_true", default=False,
                    help="also run the slow tier (tests marked slow: the 10-minute soak)")
    group.addoption("--soak-seconds", type=float, default=600.0, help="duration of the soak test")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the slow tier, run with --run-slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow tier: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def auto_backend(monkeypatch):
    """Automatic backend selection, whatever POLYKEOPS_BACKEND the suite runs under."""
    monkeypatch.delenv("POLYKEOPS_BACKEND", raising=False)
