"""Reduction states as data: every reduction declares its family and state layout, and the
C backends render them from that declaration (no list of reduction names in a backend)."""

from __future__ import annotations

import pytest

from polykeops.backends.codegen.states import STATES, state_class, state_words
from polykeops.backends.cpu import generic
from polykeops.backends.cpu.kernel_source import KernelWriter
from polykeops.backends.cuda.states import slices
from polykeops.formula.parser import parse_reduction_formula
from polykeops.formula.reductions import (
    ACCUMULATOR,
    COMBINE_RULES,
    FAMILIES,
    INDEX,
    REDUCTIONS,
    VALUE,
    StateField,
)
from polykeops.formula.spec import ReductionSpec

VARS = ["x = Vi(0, 3)", "y = Vj(1, 3)", "b = Vj(2, 5)"]


def spec_for(name: str, **options) -> ReductionSpec:
    red = REDUCTIONS[name]
    f, vs = parse_reduction_formula("-SqDist(x, y)" if red.scalar_formula else "Exp(-SqDist(x, y)) * y", VARS)
    forms = (f,)
    if red.n_formulas == 2:
        forms = (f, parse_reduction_formula("b", VARS)[0])
    return ReductionSpec(name, forms, vs, k=4 if red.uses_k else None, **options)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_every_reduction_declares_its_state(name):
    red = REDUCTIONS[name]
    assert red.family in FAMILIES
    assert red.family in STATES
    spec = spec_for(name)
    fields = red.state_layout(tuple(f.dim for f in spec.formulas), spec.k)
    assert fields and all(isinstance(f, StateField) for f in fields)
    assert len({f.name for f in fields}) == len(fields)
    for f in fields:
        assert f.kind in (VALUE, ACCUMULATOR, INDEX)
        assert f.combine in COMBINE_RULES
        assert f.size >= 1
    cf = red.component_formula
    if cf is not None:
        dim = spec.formulas[cf].dim
        assert all(f.size % dim == 0 for f in fields if f.sliced)
    else:
        assert not any(f.sliced for f in fields)


def test_layout_sizes():
    names = ("Sum", "LogSumExp", "LogSumExpWeight", "SumSoftMaxWeight", "ArgMin", "KMin")
    sizes = {n: [(f.name, f.size) for f in REDUCTIONS[n].state_layout((3, 5), 4)] for n in names}
    assert sizes["Sum"] == [("s", 3)]
    assert [f.name for f in REDUCTIONS["Sum"].state_layout((3,), None, compensated=True)] == ["s", "c"]
    assert sizes["LogSumExp"] == [("m", 1), ("s", 1)]
    assert sizes["LogSumExpWeight"] == [("m", 1), ("s", 5)]
    assert sizes["SumSoftMaxWeight"] == [("m", 1), ("z", 1), ("t", 5)]
    assert sizes["ArgMin"] == [("v", 3), ("i", 3)]
    assert sizes["KMin"] == [("v", 12), ("i", 12)]


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_renderers_follow_the_layout(name):
    spec = spec_for(name, sum_scheme="kahan_scheme") if name == "Sum" else spec_for(name)
    st = state_class(spec)(spec)
    assert st.family == spec.red.family or (st.family, spec.red.family) == ("lse", "softmax")
    # the CPU record holds every entry of the layout
    size = {VALUE: 4, ACCUMULATOR: 4, INDEX: 8}
    assert st.record_bytes() == sum(size[f.kind] * f.size for f in st.layout)
    # the CUDA register form: one slice per formula component at most, covering them all
    cover = slices(spec)
    cf = spec.red.component_formula
    assert sum(w for _, w in cover) == (spec.formulas[cf].dim if cf is not None else 1)
    assert st.nf + st.ni == state_words(spec)
    # the generic engine sizes its states from the same layout
    prog = generic.compile_program(spec).struct
    assert prog.nacc == sum(f.size for f in st.layout if f.kind == ACCUMULATOR)
    assert prog.nval == sum(f.size for f in st.layout if f.kind == VALUE)


def test_kernels_include_the_shared_headers():
    src = KernelWriter(spec_for("ArgKMin")).source()
    assert '#include "pk_call.h"' in src and '#include "pk_kernel.h"' in src
    assert "} pk_call;" not in src and "pk_parallel_for" not in src


