"""The shared C renderer: every op of the op table renders, compiles and matches the reference."""

from __future__ import annotations

import random

import numpy as np
import pytest

from polykeops.backends.codegen import CRenderer
from polykeops.backends.cpu import CpuBackend, generic
from polykeops.backends.cpu.kernel_source import KernelWriter
from polykeops.backends.reference import ReferenceBackend
from polykeops.formula import ReductionSpec, Var
from polykeops.formula import algebra as A
from polykeops.formula.nodes import CAT_I, CAT_J, Node, walk
from polykeops.formula.ops import OPS

X = Var(0, 3, CAT_I)
Y = Var(1, 3, CAT_J)
W = Var(2, 2, CAT_J)
U = A.sub(X, Y)  # real values of order 1, depending on i and j
POS = A.add(A.square(U), A.const(0.5))
UNIT = A.mul(A.node("Sin", U), A.const(0.9))
SCALAR = A.node("Elem", U, params=(1,))


def operand(domain: str) -> Node:
    return {"real": U, "positive": POS, "unit": UNIT, "nonzero": POS}.get(domain, U)


def instance(name: str) -> Node:
    """One node of every op, with arguments in its domain."""
    op = OPS[name]
    rnd = random.Random(name)
    special = {
        "OneHot": lambda: Node("OneHot", (A.mul(SCALAR, A.const(2)),), (4,)),
        "Take": lambda: Node("Take", (Node("Concat", (U, W)), A.mul(SCALAR, A.const(2))), (1,)),
        "SumT": lambda: Node("SumT", (SCALAR,), (3,)),
        "ElemT": lambda: Node("ElemT", (SCALAR,), (1, 3)),
        "ExtractT": lambda: Node("ExtractT", (U,), (1, 5)),
        "Concat": lambda: Node("Concat", (U, W)),
        "MatVecMult": lambda: Node("MatVecMult", (Node("Concat", (U, U)), U)),
        "VecMatMult": lambda: Node("VecMatMult", (U, Node("Concat", (U, U)))),
        "TensorProd": lambda: Node("TensorProd", (U, W)),
        "Mod": lambda: Node("Mod", (U, POS, A.const(-0.5))),
        "Clamp": lambda: Node("Clamp", (U, A.const(-0.3), A.const(0.4))),
        "IfElse": lambda: Node("IfElse", (U, A.square(U), A.neg(U))),
    }
    if name in special:
        return special[name]()
    args = tuple(operand(d) for d in op.domain) if op.domain else (U,) * op.arity
    params = op.random_params([a.dim for a in args], rnd) if op.random_params else ()
    return Node(name, args, params)


#: ops without a C rule (a dynamic programme per pair): the reference backend evaluates them
NO_C_RULE = {"SoftDTWSqDist", "GradSoftDTWSqDist", "SoftDTWSqDistGrad2"}
RENDERED = sorted(set(OPS) - NO_C_RULE)


def all_ops_spec(dtype="float64"):
    parts = [instance(name) for name in RENDERED]
    out = parts[0]
    for p in parts[1:]:
        out = Node("Concat", (out, p))
    return ReductionSpec("Sum", (out,), (X, Y, W), dtype=dtype), parts


def test_every_op_has_a_c_rule():
    assert set(CRenderer.supported_ops()) == set(RENDERED)
    assert generic.SUPPORTED_OPS == set(RENDERED)
    assert CpuBackend().capabilities.ops == set(RENDERED)


def test_ops_without_a_c_rule_go_to_the_reference_backend():
    from polykeops.backends import select_backend

    x, y, g = Var(0, 4, CAT_I), Var(1, 5, CAT_J), Var(2, 1, 2)
    spec = ReductionSpec("Sum", (Node("SoftDTWSqDist", (g, x, y)),), (x, y, g))
    assert "SoftDTWSqDist" in CpuBackend().capabilities.unsupported(spec, "numpy", "cpu", False)
    assert select_backend(None, spec, "numpy", "cpu", False).name == "reference"


def test_every_op_renders_one_variable_per_node():
    spec, parts = all_ops_spec()
    r = CRenderer("float32")
    rendered = r.render(spec.formulas, lambda v, k: f"in{v.index}[{k}]")
    computed = [n for n in walk(spec.formulas[0]) if not n.is_leaf]
    assert len(rendered.names) == len(computed)  # CSE: each distinct node once
    assert len(set(rendered.names.values())) == len(computed)
    text = "\n".join(rendered.lines)
    assert "pk_expf(" in text and "sinf(" in text


def test_dialect_is_a_few_class_attributes():
    class OtherC(CRenderer):
        math_funcs = {
            t: {**fns, "exp": "__expf" if t == "float" else "exp"} for t, fns in CRenderer.math_funcs.items()
        }
        unroll_pragma = "#pragma unroll {n}"

    f = A.node("Exp", A.vsum(A.square(A.sub(Var(0, 20, CAT_I), Var(1, 20, CAT_J)))))
    text = "\n".join(OtherC("float32").render([f], lambda v, k: f"in{v.index}[{k}]").lines)
    assert "__expf(" in text and "#pragma unroll 8" in text and "pk_expf" not in text


def test_math_functions_are_c_library_names_except_the_dialects_own():
    from polykeops.backends.cuda.render import CudaRenderer

    assert CRenderer("float32").call("tanh", "x") == "pk_tanhf(x)"  # vectorisable (pk_runtime.h)
    assert CRenderer("float64").call("sin", "x") == "sin(x)"
    assert CudaRenderer("float32").call("tanh", "x") == "tanhf(x)"
    assert CudaRenderer("float64").call("erf", "x") == "erf(x)"


def test_generic_engine_is_built_from_the_renderers_rules():
    """The interpreter's cases and op codes are generated from the C rules (at build time); the
    loaded extension reports the digest of the text it was built from."""
    from polykeops.backends.codegen import generic_ops

    ok, why = generic.available()
    if not ok:
        pytest.skip(why)
    lib = generic._load()
    assert lib.ops_digest() == generic_ops.digest()
    assert generic.OPCODES == generic_ops.opcodes()
    generated = set(generic_ops.generated_ops())
    assert {"Exp", "Tanh", "Add", "IfElse"} <= generated and not generated & set(generic_ops.HAND_WRITTEN)
    assert "PK_UN_CASE(TANH, PKM_TANH(a))" in generic_ops.source()


def test_a_third_party_c_rule_reaches_every_c_renderer(monkeypatch):
    """register_c_rule: the op renders in specialised CPU kernels (and CUDA); the generic
    engine, compiled with the built-in rules, declines it."""
    from polykeops.backends.codegen import C_RULES, register_c_rule
    from polykeops.backends.cuda.render import ELEMENTWISE, CudaRenderer
    from polykeops.errors import BackendError
    from polykeops.formula.optable import OpDef, register_op

    name = "TestOnlyCube"
    register_op(OpDef(name, 1, lambda d: d, lambda xp, a: a * a * a, None, public=False))
    register_c_rule(name, lambda r, a: f"(({a}) * ({a}) * ({a}))")
    try:  # (removed afterwards: other tests iterate over the op table)
        assert name in CRenderer.supported_ops() and name in CudaRenderer.supported_ops()
        assert name in ELEMENTWISE and name not in generic.SUPPORTED_OPS
        with pytest.raises(BackendError, match="already has a C rule"):
            register_c_rule(name, lambda r, a: a)
        x, y = Var(0, 2, CAT_I), Var(1, 2, CAT_J)
        spec = ReductionSpec("Sum", (A.node(name, A.sub(x, y)),), (x, y), dtype="float64")
        assert generic.engine_for(spec) is None
        monkeypatch.setenv("POLYKEOPS_JIT", "sync")
        backend = CpuBackend()
        if not backend.compiler_status()[0]:
            pytest.skip("no C compiler")
        assert not backend.capabilities.unsupported(spec, "numpy", "cpu", False)
        rng = np.random.default_rng(1)
        args = [rng.standard_normal((20, 2)), rng.standard_normal((30, 2))]
        (out,) = backend.evaluate(spec, args, nx=20, ny=30, batch_shape=())
        (ref,) = ReferenceBackend().evaluate(spec, args, nx=20, ny=30, batch_shape=())
        np.testing.assert_allclose(out, ref, rtol=1e-12)
    finally:
        from polykeops.formula.optable import OPS

        del OPS[name]
        del C_RULES[name]


def test_literals_round_like_numpy():
    r = CRenderer("float32")
    assert r.literal(0.1) == "((float)0.1)"
    assert CRenderer("float64").literal(-2.5) == "(-2.5)"
    assert "INFINITY" in r.literal(float("inf")) and "NAN" in r.literal(float("nan"))


@pytest.fixture(params=["off", "sync"])
def engine(request, monkeypatch):
    """The CPU backend with POLYKEOPS_JIT=off (generic engine) or sync (specialised kernels)."""
    mode = request.param
    monkeypatch.setenv("POLYKEOPS_JIT", mode)
    backend = CpuBackend()
    if mode == "sync" and not backend.compiler_status()[0]:
        pytest.skip("no C compiler")
    if mode == "off" and not generic.available()[0]:
        pytest.skip("generic engine not built")
    return backend


def unary_per_row(backend, op: str, vals):
    """``op(x_i)`` for every value of ``vals`` (one row each), as float64."""
    dtype = vals.dtype
    x, y = Var(0, 1, CAT_I), Var(1, 1, CAT_J)
    spec = ReductionSpec("Sum", (A.mul(A.node(op, x), y),), (x, y), dtype=str(dtype))
    args = [vals[:, None], np.ones((1, 1), dtype)]
    (out,) = backend.evaluate(spec, args, nx=len(vals), ny=1, batch_shape=())
    return out[:, 0].astype(np.float64)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_every_op_computes_like_the_reference(engine):
    """One kernel with every op (its outputs concatenated), against the reference in float64."""
    backend = engine
    spec, parts = all_ops_spec()
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((37, 3)), rng.standard_normal((300, 3)), rng.standard_normal((300, 2))]
    (out,) = backend.evaluate(spec, args, nx=37, ny=300, batch_shape=())
    (ref,) = ReferenceBackend().evaluate(spec, args, nx=37, ny=300, batch_shape=())
    start = 0
    for name, p in zip(RENDERED, parts):
        sl = slice(start, start + p.dim)
        start += p.dim
        np.testing.assert_allclose(out[:, sl], ref[:, sl], rtol=1e-9, atol=1e-9, err_msg=name)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's exp overflowing in the reference
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_vectorised_exp_is_accurate_and_ieee(dtype, engine):
    """exp over the whole range, overflow, underflow to subnormals and zero, inf and NaN
    (vectorised over rows in the generic engine, per row in specialised kernels)."""
    hi, lo = (95.0, -110.0) if dtype == "float32" else (715.0, -750.0)
    vals = np.concatenate([np.linspace(lo, hi, 400_001), [np.inf, -np.inf, np.nan, 0.0, -0.0]]).astype(dtype)
    got = unary_per_row(engine, "Exp", vals)
    exact = np.exp(vals.astype(np.float64))
    rounded = exact.astype(dtype).astype(np.float64)  # what a correctly rounded exp returns
    special = ~np.isfinite(rounded) | (rounded == 0)
    np.testing.assert_array_equal(got[special], rounded[special])
    tiny = np.finfo(dtype).tiny
    normal = ~special & (rounded >= tiny)
    ulp = np.finfo(dtype).eps
    assert np.max(np.abs(got[normal] - exact[normal]) / exact[normal]) <= 2 * ulp
    sub = ~special & (rounded < tiny)  # subnormal results: within 2 units of the smallest subnormal
    smallest = np.nextafter(np.zeros(1, dtype), np.ones(1, dtype))[0]
    assert np.max(np.abs(got[sub] - exact[sub]), initial=0) <= 2 * smallest


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's exp overflow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exp_in_simd_lane_loops_is_accurate_and_ieee(dtype, monkeypatch):
    """exp(x_i - y_j) depends on i and j: in a specialised kernel it runs in the vectorised loop
    over the columns (here one column: the masked last vector), not in the per-row scalar code;
    NaNs with payloads stay NaN."""
    monkeypatch.setenv("POLYKEOPS_JIT", "sync")
    backend = CpuBackend()
    if not backend.compiler_status()[0]:
        pytest.skip("no C compiler")
    hi, lo = (95.0, -110.0) if dtype == "float32" else (715.0, -750.0)
    if dtype == "float32":
        payloads = np.array([0x7FC00FFF, 0xFFC01FFE, 0x7F800001], dtype=np.uint32)
    else:
        payloads = np.array([0x7FF8000000000FFF, 0xFFF8000000001FFE, 0x7FF0000000000001], dtype=np.uint64)
    specials = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], dtype)
    vals = np.concatenate([np.linspace(lo, hi, 200_001).astype(dtype), payloads.view(dtype), specials])
    x, y = Var(0, 1, CAT_I), Var(1, 1, CAT_J)
    spec = ReductionSpec("Sum", (A.node("Exp", A.sub(x, y)),), (x, y), dtype=dtype)
    args = [vals[:, None], np.zeros((1, 1), dtype)]
    (out,) = backend.evaluate(spec, args, nx=len(vals), ny=1, batch_shape=())
    got = out[:, 0].astype(np.float64)
    exact = np.exp(vals.astype(np.float64))
    rounded = exact.astype(dtype).astype(np.float64)
    special = ~np.isfinite(rounded) | (rounded == 0)
    np.testing.assert_array_equal(got[special], rounded[special])  # (NaN == NaN here)
    tiny, ulp = np.finfo(dtype).tiny, np.finfo(dtype).eps
    normal = ~special & (rounded >= tiny)
    assert np.max(np.abs(got[normal] - exact[normal]) / exact[normal]) <= 2 * ulp
    sub = ~special & (rounded < tiny)
    smallest = np.nextafter(np.zeros(1, dtype), np.ones(1, dtype))[0]
    assert np.max(np.abs(got[sub] - exact[sub]), initial=0) <= 2 * smallest


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's log of 0 and negatives
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_vectorised_log_is_accurate_and_ieee(dtype, engine):
    """log from the smallest subnormal to the largest float, around 1, and its special values."""
    fi = np.finfo(dtype)
    smallest = np.nextafter(np.zeros(1, dtype), np.ones(1, dtype))[0]
    vals = np.concatenate([
        np.geomspace(smallest, fi.max, 200_001, dtype=np.float64).astype(dtype),  # subnormals to max
        np.linspace(0.5, 2.0, 100_001),  # around 1
        [0.0, -0.0, -1.0, -np.inf, np.inf, np.nan, 1.0],
    ]).astype(dtype)
    got = unary_per_row(engine, "Log", vals)
    ref = np.log(vals.astype(np.float64))
    special = ~np.isfinite(ref)
    np.testing.assert_array_equal(got[special], ref[special].astype(dtype).astype(np.float64))
    ok = ~special
    ulp = np.spacing(np.abs(ref[ok]).astype(dtype)).astype(np.float64)
    assert np.max(np.abs(got[ok] - ref[ok]) / np.maximum(ulp, fi.tiny)) <= 2.5


def test_specialised_source_is_deterministic():
    """The same spec gives the same source (and cache key) in every process."""
    spec, _ = all_ops_spec("float32")
    assert KernelWriter(spec).source() == KernelWriter(spec).source()


@pytest.mark.parametrize("dim", [12, 20, 64, 300])
def test_large_vector_stage_reading_its_own_sum_is_scheduled(dim, monkeypatch):
    """Gradient of a LogSumExp of squared distances in large dimension: the component loop of
    ``x - y`` feeds ``Sum((x - y)^2)``, whose exp scales ``x - y`` again (a cycle of stages
    when the two vector nodes shared one component loop: a bare StopIteration from 20 on)."""
    torch = pytest.importorskip("torch")
    from polykeops.torch import LazyTensor

    if not CpuBackend().compiler_status()[0]:
        pytest.skip("no C compiler")
    monkeypatch.setenv("POLYKEOPS_JIT", "sync")
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(37, dim, dtype=torch.float64, generator=g) / dim**0.5
    y = torch.randn(45, dim, dtype=torch.float64, generator=g) / dim**0.5
    grads = {}
    for backend in ("cpu", "reference"):
        xs = x.clone().requires_grad_()
        d2 = ((LazyTensor(xs[:, None, :]) - LazyTensor(y[None, :, :])) ** 2).sum(-1)
        out = (-d2).logsumexp(dim=1, backend=backend)
        (grads[backend],) = torch.autograd.grad((out * out).sum(), xs, create_graph=False)
        # a Gaussian-kernel product too: the vector reads the scalar exp(-|x - y|^2)
        out2 = ((-d2).exp() * LazyTensor(y[None, :, :])).sum(dim=1, backend=backend)
        (grads[backend + "2"],) = torch.autograd.grad(out2.sum(), xs)
    torch.testing.assert_close(grads["cpu"], grads["reference"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads["cpu2"], grads["reference2"], rtol=1e-10, atol=1e-12)
