"""The op table's own reference implementations (``OpDef.ref``) against the suite's independent definitions.

The reference backend, the formula probes and ``polykeops.formula.evaluate``
compute with ``OpDef.ref``; the oracle computes with :mod:`.dense_ops`.  Each
``ref`` must agree with its op's definition on drawn inputs (inside the op's
domain, with broadcast operands, and on values where ties, zeros and halves
happen), and every public op must have a definition.  These tests check the op
table, not a backend: they run once, whatever ``--backend`` says.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume
from hypothesis import strategies as st

from polykeops.backends.arrays.torch import TorchNamespace
from polykeops.formula.ops import OPS, public_ops

from .dense_ops import definition
from .session import property_test
from .strategies import _feasible, _param_draws, _result_dim

CHECKED = sorted(name for name in OPS if definition(name) is not None)
ROWS = 7


def test_every_public_op_has_an_independent_definition():
    missing = sorted(o.name for o in public_ops() if definition(o.name) is None)
    assert not missing, (
        f"public ops without an independent dense definition: {missing}; add a function named like "
        "the op to conformance/dense_ops.py (or register one with dense_ops.define)"
    )


def _values(rng, domain: str, style: str, shape) -> np.ndarray:
    """Values inside ``domain``: continuous, or on a grid of halves / small integers (ties, zeros, .5)."""
    if style == "continuous":
        raw = rng.uniform(-3, 3, shape)
    elif style == "halves":
        raw = rng.integers(-6, 7, shape) / 2
    else:
        raw = rng.integers(-2, 3, shape).astype(np.float64)
    if domain == "positive":
        return np.abs(raw) + 0.25
    if domain == "unit":
        return np.clip(raw / 3.5, -0.95, 0.95)
    if domain == "nonzero":
        return np.where(raw >= 0, 1.0, -1.0) * (np.abs(raw) + 0.25)
    return raw


def _case(data, name):
    opdef = OPS[name]
    dims_ok = [d for d in (1, 2, 3, 4, 6) if _feasible(name, d, 16)]
    if not dims_ok:
        pytest.skip(f"the suite cannot draw {name} with a result of dimension <= 6")
    out_dim = data.draw(st.sampled_from(dims_ok), label="result dimension")
    dims = data.draw(st.sampled_from(_feasible(name, out_dim, 16)), label="argument dimensions")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    drawn = _param_draws(opdef, dims, seed)
    params = next((p for p in drawn if _result_dim(opdef, dims, p) == out_dim), None)
    assume(params is not None)  # no valid parameters for these dimensions: draw again
    style = data.draw(st.sampled_from(["continuous", "halves", "integers"]), label="values")
    rng = np.random.default_rng(seed)
    domains = tuple(opdef.domain) + ("real",) * (opdef.arity - len(opdef.domain))
    args = []
    for k, (d, dom) in enumerate(zip(dims, domains)):
        # alternate row and column layouts: the operands broadcast against each other
        shape = (ROWS, 1, d) if k % 2 == 0 else (1, ROWS - 2, d)
        args.append(torch.from_numpy(_values(rng, dom, style, shape)))
    return args, params, style


@pytest.mark.parametrize("op", CHECKED)
@property_test(2.0)
def test_ref_matches_the_independent_definition(op, data):
    """``OPS[op].ref`` (torch namespace, float64) equals ``dense_ops.<op>`` on the same inputs."""
    args, params, style = _case(data, op)
    expected = definition(op)(*args, *params)
    got = OPS[op].ref(TorchNamespace(torch.float64), *args, *params)
    got = torch.as_tensor(got, dtype=torch.float64)
    assert tuple(got.shape) == tuple(expected.shape), (
        f"{op}{tuple(params)}: OpDef.ref gives shape {tuple(got.shape)}, "
        f"the definition {tuple(expected.shape)}"
    )
    same = (got == expected) | (torch.isnan(got) & torch.isnan(expected))
    close = (got - expected).abs() <= 1e-12 + 1e-10 * expected.abs()
    bad = ~(same | close)
    if bad.any():
        k = int(torch.nonzero(bad.reshape(-1))[0])
        index = np.unravel_index(k, tuple(expected.shape))
        inputs = [a.expand(expected.shape[:-1] + a.shape[-1:])[index[:-1]].tolist() for a in args]
        raise AssertionError(
            f"polykeops conformance: wrong reference implementation of {op}\n"
            f"OpDef.ref of {op} (params {tuple(params)}, {style} inputs) disagrees with "
            f"conformance.dense_ops.{op} at {int(bad.sum())} of {bad.numel()} entries; first at {index}:\n"
            f"  arguments {inputs}\n  ref gives {got[index].item()!r}, the definition "
            f"{expected[index].item()!r}"
        )
