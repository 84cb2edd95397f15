"""pykeops' remaining symbolic operations, against independent dense computations.

keops_tensordot, keops_kron, bspline, softdtw_sqdist, difference_matrix,
grad_matrix, divergence, laplacian, trace_operator, factorize/auto_factorize,
concatenate/cat, lt_constructor, get_tools and dim: values (reduced with
``.sum(dim=1)``, float64), first-order gradients through reductions, and the
formula-string parser round trip of every new construction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import polykeops.numpy as pknp
import polykeops.torch as pkt
from polykeops.errors import FormulaError, FormulaSyntaxError, NotDifferentiableError, ShapeError
from polykeops.formula import algebra as A
from polykeops.formula import composite as C
from polykeops.formula.nodes import Var, walk
from polykeops.formula.parser import parse_formula
from polykeops.formula.printing import to_string

LT = pkt.LazyTensor
M, N = 4, 3
F64 = torch.float64


def _xy(dx, dy, grad=False):
    x = torch.randn(M, 1, dx, dtype=F64, requires_grad=grad)
    y = torch.randn(1, N, dy, dtype=F64, requires_grad=grad)
    return x, y


def _pairwise(fn, x, y):
    """``sum_j fn(x_i, y_j)`` as an (M, d) tensor, computed pair by pair."""
    return torch.stack(
        [torch.stack([fn(x[i, 0], y[0, j]) for j in range(y.shape[1])]).sum(0) for i in range(x.shape[0])]
    )


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(torch.as_tensor(a).double(), torch.as_tensor(b).double(), rtol=tol, atol=tol)


def _check_gradients(res, expected, inputs):
    """The gradients of <res, e> and <expected, e> with respect to ``inputs``, compared."""
    e = torch.randn_like(res)
    got = torch.autograd.grad((res * e).sum(), inputs)
    want = torch.autograd.grad((expected * e).sum(), inputs, allow_unused=True)
    for a, b in zip(got, want):
        _close(a, torch.zeros_like(a) if b is None else b)


# ---------------------------------------------------------------------------
# keops_tensordot
# ---------------------------------------------------------------------------


def _tensordot_dense(a, b, dimfa, dimfb, contfa, contfb, perm=None):
    nat = torch.tensordot(a.reshape(dimfa), b.reshape(dimfb), dims=(list(contfa), list(contfb)))
    if perm is not None and nat.dim():
        nat = nat.permute(*np.argsort(perm).tolist())  # kept axis k goes to position perm[k]
    return nat.reshape(-1)


TENSORDOT_CASES = [
    # dimfa, dimfb, contfa, contfb, permutation (None: natural order)
    ((4, 7), (7,), (1,), (0,), None),  # matrix-vector (pykeops' test)
    ((2, 3), (3, 4), (1,), (0,), None),  # matrix-matrix
    ((2, 3), (2, 3), (0, 1), (0, 1), None),  # full contraction: a scalar
    ((2, 3), (4,), (), (), None),  # no contraction: the outer product
    ((2, 3), (3, 2), (0,), (1,), (1, 0)),
    ((2, 3, 2), (2, 3), (1,), (1,), (2, 0, 1)),
    ((2, 3, 2, 2), (2, 2, 3, 2), (3, 1, 2), (1, 2, 3), (1, 0)),  # pykeops' TensorDot_with_permute, smaller
    ((3, 2, 2), (2, 3), (), (), (3, 1, 0, 4, 2)),
]


@pytest.mark.parametrize("case", TENSORDOT_CASES, ids=lambda c: f"{c[0]}x{c[1]}-{c[2]}{c[3]}-{c[4]}")
def test_tensordot_values_and_gradients(case):
    dimfa, dimfb, contfa, contfb, perm = case
    x, y = _xy(math.prod(dimfa), math.prod(dimfb), grad=True)
    args = (dimfa, dimfb, contfa, contfb) + ((perm,) if perm is not None else ())
    lazy = LT(x).keops_tensordot(LT(y), *args)
    res = lazy.sum(dim=1)
    expected = _pairwise(lambda a, b: _tensordot_dense(a, b, dimfa, dimfb, contfa, contfb, perm), x, y)
    assert lazy.ndim == expected.shape[-1]
    _close(res, expected)
    _check_gradients(res, expected, [x, y])


def test_tensordot_permutation_as_ints_and_lists():
    x, y = _xy(12, 6)
    ref = LT(x).keops_tensordot(LT(y), (2, 3, 2), (2, 3), (1,), (1,), (2, 0, 1)).sum(dim=1)
    as_ints = LT(x).keops_tensordot(LT(y), [2, 3, 2], [2, 3], [1], [1], 2, 0, 1).sum(dim=1)
    as_int_axes = LT(x).keops_tensordot(LT(y), [2, 3, 2], [2, 3], 1, 1, [2, 0, 1]).sum(dim=1)
    _close(as_ints, ref)
    _close(as_int_axes, ref)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (((2, 3), (3, 2), (1,), (1,)), "different sizes"),
        (((2, 2), (3, 2), (1,), (1,)), "has 4 entries"),
        (((2, 3), (3, 2), (1,), ()), "same length"),
        (((2, 3), (3, 2), (5,), (0,)), "distinct axes"),
        (((2, 3), (3, 2), (1,), (0,), (0, 0)), "permutation"),
    ],
)
def test_tensordot_errors(args, fragment):
    x, y = _xy(6, 6)
    with pytest.raises(FormulaError, match=fragment):
        LT(x).keops_tensordot(LT(y), *args)


# ---------------------------------------------------------------------------
# keops_kron
# ---------------------------------------------------------------------------


def test_kron_pykeops_docstring_example():
    dimfa, dimfb = [3, 1, 3, 2], [3, 3, 2, 1]
    x = np.random.rand(11, 18)
    y = np.random.rand(15, 18)
    expected = np.zeros((11, 15, 18 * 18))
    for i in range(11):
        for j in range(15):
            expected[i, j] = np.kron(x[i].reshape(*dimfa), y[j].reshape(*dimfb)).flatten()
    res = pknp.LazyTensor(x[:, None, :]).keops_kron(pknp.LazyTensor(y[None, :, :]), dimfa, dimfb).sum(axis=1)
    np.testing.assert_allclose(res, expected.sum(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dims", [((2,), (3,)), ((2, 3), (2, 2)), ((1, 2, 2), (3, 1, 2))])
def test_kron_values_and_gradients(dims):
    dimfa, dimfb = dims
    x, y = _xy(math.prod(dimfa), math.prod(dimfb), grad=True)
    res = LT(x).keops_kron(LT(y), dimfa, dimfb).sum(dim=1)
    expected = _pairwise(lambda a, b: torch.kron(a.reshape(dimfa), b.reshape(dimfb)).reshape(-1), x, y)
    _close(res, expected)
    _check_gradients(res, expected, [x, y])


def test_kron_needs_as_many_axes():
    x, y = _xy(6, 6)
    with pytest.raises(FormulaError, match="same length"):
        LT(x).keops_kron(LT(y), [2, 3], [6])


# ---------------------------------------------------------------------------
# bspline
# ---------------------------------------------------------------------------


def _cox_de_boor(t, x, k):
    """Hand-written Cox-de Boor recursion (KeOps' conventions: right-open intervals,
    ratios with coinciding knots are 0)."""
    b = [1.0 if t[j] <= x < t[j + 1] else 0.0 for j in range(len(t) - 1)]
    for q in range(1, k + 1):
        nb = []
        for i in range(len(t) - 1 - q):
            w1 = (x - t[i]) / (t[i + q] - t[i]) if t[i] < t[i + q] else 0.0
            w2 = (x - t[i + 1]) / (t[i + 1 + q] - t[i + 1]) if t[i + 1] < t[i + 1 + q] else 0.0
            nb.append(w1 * b[i] + (1 - w2) * b[i + 1])
        b = nb
    return b


KNOTS = [0.0, 0.5, 0.5, 1.2, 2.0, 2.0, 2.0, 3.1, 3.5]


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_bspline_against_cox_de_boor_including_knots(k):
    # sampling points: random ones, every knot (KeOps' convention at knots) and outside points
    pts = np.concatenate([np.random.uniform(-0.5, 4.0, 20), KNOTS, [-1.0, 5.0]])
    x = torch.tensor(pts, dtype=F64)[:, None, None]
    knots = torch.tensor(KNOTS, dtype=F64)[None, None, :].expand(1, 2, len(KNOTS)).contiguous()
    lazy = LT(knots).bspline(LT(x), k)
    assert lazy.ndim == len(KNOTS) - k - 1
    res = lazy.sum(dim=1)
    expected = torch.tensor([_cox_de_boor(KNOTS, p, k) for p in pts], dtype=F64) * 2
    _close(res, expected, 1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_bspline_against_scipy_inside_the_base_interval(k):
    interpolate = pytest.importorskip("scipy.interpolate")
    t = np.array([0.0, 0.3, 0.9, 1.0, 1.7, 2.4, 2.5, 3.3, 4.0])
    nb = len(t) - k - 1
    pts = np.random.uniform(t[k] + 1e-3, t[nb] - 1e-3, 30)
    expected = np.stack(
        [interpolate.BSpline(t, np.eye(nb)[c], k, extrapolate=False)(pts) for c in range(nb)], -1
    )
    res = pknp.LazyTensor(t).bspline(pknp.LazyTensor(pts[:, None, None]), k)
    np.testing.assert_allclose(res.sum(axis=1), expected, rtol=1e-12, atol=1e-12)


def test_bspline_gradient_in_x():
    t = torch.tensor([0.0, 0.4, 1.0, 1.5, 2.5, 3.0], dtype=F64)
    x = (torch.rand(7, 1, 1, dtype=F64) * 2.0 + 0.2).requires_grad_()
    res = LT(t).bspline(LT(x), 2).sum(dim=1)
    e = torch.randn_like(res)
    (gk,) = torch.autograd.grad((res * e).sum(), [x])
    h = 1e-6
    fd = []
    for i in range(7):
        plus = torch.tensor(_cox_de_boor(t.tolist(), x[i, 0, 0].item() + h, 2), dtype=F64)
        minus = torch.tensor(_cox_de_boor(t.tolist(), x[i, 0, 0].item() - h, 2), dtype=F64)
        fd.append(((plus - minus) / (2 * h) * e[i]).sum())
    _close(gk.reshape(-1), torch.stack(fd), 1e-6)


def test_bspline_errors():
    t = LT(torch.randn(4, dtype=F64))
    x = LT(torch.randn(3, 1, 1, dtype=F64))
    with pytest.raises(FormulaError, match="at least 5 knots"):
        t.bspline(x, 3)
    with pytest.raises(FormulaError, match="scalar"):
        t.bspline(LT(torch.randn(3, 1, 2, dtype=F64)), 0)
    with pytest.raises(FormulaError, match=">= 0"):
        t.bspline(x, -1)


# ---------------------------------------------------------------------------
# softdtw_sqdist
# ---------------------------------------------------------------------------


def _softdtw_dense(a, b, gamma):
    """Hand-written soft-DTW dynamic programme (squared-difference cost)."""
    n, m = len(a), len(b)
    r = [[None] * m for _ in range(n)]
    for i in range(n):
        for j in range(m):
            c = (a[i] - b[j]) ** 2
            if i == 0 and j == 0:
                r[i][j] = c
            elif i == 0:
                r[i][j] = c + r[i][j - 1]
            elif j == 0:
                r[i][j] = c + r[i - 1][j]
            else:
                prev = torch.stack([r[i - 1][j - 1], r[i - 1][j], r[i][j - 1]])
                r[i][j] = c - gamma * torch.logsumexp(-prev / gamma, 0)
    return r[-1][-1]


@pytest.mark.parametrize("nm", [(1, 1), (1, 4), (5, 1), (4, 6), (7, 3)])
def test_softdtw_values_and_gradients(nm):
    n, m = nm
    x, y = _xy(n, m, grad=True)
    gamma = torch.tensor([0.6], dtype=F64, requires_grad=True)
    res = LT(x).softdtw_sqdist(LT(y), LT(gamma)).sum(dim=1)
    expected = _pairwise(lambda a, b: _softdtw_dense(a, b, gamma[0])[None], x, y)
    _close(res, expected)
    _check_gradients(res, expected, [x, y, gamma])


def test_softdtw_small_gamma_and_float_gamma():
    x, y = _xy(6, 5)
    for gamma in (1e-3, 0.5, 3.0):
        res = LT(x).softdtw_sqdist(LT(y), gamma).sum(dim=1)
        g = torch.tensor(gamma, dtype=F64)
        expected = _pairwise(lambda a, b, g=g: _softdtw_dense(a, b, g)[None], x, y)
        _close(res, expected)


def test_softdtw_numpy_front_end():
    x = np.random.randn(M, 1, 4)
    y = np.random.randn(1, N, 5)
    res = pknp.LazyTensor(x).softdtw_sqdist(pknp.LazyTensor(y), 0.3).sum(axis=1)
    g = torch.tensor(0.3, dtype=F64)
    expected = _pairwise(lambda a, b: _softdtw_dense(a, b, g)[None], torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(res, expected.numpy(), rtol=1e-10, atol=1e-10)


def test_softdtw_second_derivatives_raise_when_evaluated():
    x, y = _xy(3, 4, grad=True)
    res = LT(x).softdtw_sqdist(LT(y), 0.5).sum(dim=1)
    (g,) = torch.autograd.grad(res.sum(), [x], create_graph=True)
    with pytest.raises(NotDifferentiableError, match="second derivatives of SoftDTW_SqDist"):
        torch.autograd.grad(g.sum(), [x])


def test_softdtw_gamma_must_be_a_positive_scalar():
    x, y = _xy(3, 4)
    with pytest.raises(FormulaError, match="gamma must be a scalar"):
        LT(x).softdtw_sqdist(LT(y), LT(torch.ones(2, dtype=F64)))
    with pytest.raises(FormulaError, match="gamma must be > 0"):
        LT(x).softdtw_sqdist(LT(y), 0)


# ---------------------------------------------------------------------------
# difference_matrix
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [(3, 4), (1, 3), (3, 1), (2, 2)])
def test_difference_matrix(dims):
    x, y = _xy(*dims, grad=True)
    lazy = LT(x).difference_matrix(LT(y))
    assert lazy.ndim == dims[0] * dims[1]
    res = lazy.sum(dim=1)
    expected = _pairwise(lambda a, b: (a[:, None] - b[None, :]).reshape(-1), x, y)
    _close(res, expected)
    _check_gradients(res, expected, [x, y])


# ---------------------------------------------------------------------------
# grad_matrix, divergence, laplacian, trace_operator
# ---------------------------------------------------------------------------


def _vector_field(a, b):
    """A smooth map R^3 -> R^2 (dense version of the LazyTensor formula below)."""
    return torch.stack([torch.sin((a * b).sum()), ((a - b) ** 2).sum() * a[0]])


def _vector_field_lazy(X, Y):
    return (X * Y).sum().sin().concat(X.sqdist(Y) * X[0])


def _jacobian(fn, a, b):
    return torch.autograd.functional.jacobian(lambda u: fn(u, b), a)


def test_grad_matrix_layout_and_values():
    x, y = _xy(3, 3)
    X, Y = LT(x), LT(y)
    lazy = _vector_field_lazy(X, Y).grad_matrix(X)
    assert lazy.ndim == 2 * 3
    res = lazy.sum(dim=1)
    # component k * 3 + l is d f_k / d x_l: the Jacobian (2 x 3), row-major
    expected = _pairwise(lambda a, b: _jacobian(_vector_field, a, b).reshape(-1), x, y)
    _close(res, expected)
    # with respect to y, and for a scalar formula (the gradient itself)
    res_y = _vector_field_lazy(X, Y).grad_matrix(Y).sum(dim=1)
    expected_y = _pairwise(lambda a, b: _jacobian(lambda u, v: _vector_field(v, u), b, a).reshape(-1), x, y)
    _close(res_y, expected_y)
    scalar = X.sqdist(Y).exp()
    _close(scalar.grad_matrix(X).sum(dim=1), scalar.grad(X, 1).sum(dim=1))


def _field3(a, b):
    return (a - b) * torch.exp(-((a - b) ** 2).sum()) + torch.sin(a * b).flip(0)


def _field3_lazy(X, Y):
    d = X - Y
    s = (X * Y).sin()
    return d * (-d.sqnorm2()).exp() + s[2].concat(s[1]).concat(s[0])


def test_divergence():
    x, y = _xy(3, 3)
    X, Y = LT(x), LT(y)
    res = _field3_lazy(X, Y).divergence(X).sum(dim=1)
    expected = _pairwise(lambda a, b: torch.trace(_jacobian(_field3, a, b))[None], x, y)
    _close(res, expected)
    with pytest.raises(FormulaError, match="same dimension|dimension of the variable"):
        X.sqnorm2().divergence(X)


def _scalar(a, b):
    return torch.exp(-((a - b) ** 2).sum()) + torch.sin(a[0] * a[1]) * b[2] + (a**3).sum()


def _scalar_lazy(X, Y):
    return (-X.sqdist(Y)).exp() + (X[0] * X[1]).sin() * Y[2] + (X**3).sum()


def test_laplacian():
    x, y = _xy(3, 3, grad=True)
    X, Y = LT(x), LT(y)
    lazy = _scalar_lazy(X, Y).laplacian(X)
    assert lazy.ndim == 1
    res = lazy.sum(dim=1)
    expected = _pairwise(
        lambda a, b: torch.trace(torch.autograd.functional.hessian(lambda u: _scalar(u, b), a))[None],
        x.detach(),
        y.detach(),
    )
    _close(res, expected)
    # the Laplacian is itself differentiable (here in y)
    (gk,) = torch.autograd.grad(res.sum(), [y])
    assert torch.isfinite(gk).all()
    with pytest.raises(FormulaError, match="scalar formula"):
        (X * Y).laplacian(X)


def test_trace_operator():
    x = torch.randn(M, 1, 3, dtype=F64)
    a = torch.randn(1, N, 9, dtype=F64)
    w = torch.randn(1, N, 3, dtype=F64)
    X, Amat, W = LT(x), LT(a), LT(w)
    # MatVecMult(A, x): the trace of A
    lazy = Amat.matvecmult(X).trace_operator(X)
    assert X.formula not in set(walk(lazy.formula))
    expected = torch.einsum("jkk->j", a[0].reshape(N, 3, 3)).sum().expand(M, 1)
    _close(lazy.sum(dim=1), expected)
    # elementwise product: the trace of diag(w); a scalar formula (x|w): sum_l w_l
    _close((X * W - Amat.matvecmult(X)).trace_operator(X).sum(dim=1),
           (w[0].sum(-1) - torch.einsum("jkk->j", a[0].reshape(N, 3, 3))).sum().expand(M, 1))
    _close((X | W).trace_operator(X).sum(dim=1), w[0].sum().expand(M, 1))
    with pytest.raises(FormulaError, match="not linear"):
        (X * X).trace_operator(X)
    with pytest.raises(FormulaError, match="not linear"):
        (X + 1).trace_operator(X)
    with pytest.raises(FormulaError, match="not a variable"):
        (X * W).trace_operator(X * 2)


# ---------------------------------------------------------------------------
# factorize, concatenate, class API
# ---------------------------------------------------------------------------


def test_factorize_and_auto_factorize_are_no_ops():
    x, y = _xy(3, 3)
    X, Y = LT(x), LT(y)
    d2 = X.sqdist(Y)
    f = (-d2).exp() * d2
    assert f.factorize(d2).formula == f.formula
    assert f.auto_factorize().formula == f.formula
    _close(f.factorize(d2).sum(dim=1), f.sum(dim=1))
    # the shared sub-formula is one node of the DAG
    assert sum(1 for n in walk(f.formula) if n == d2.formula) == 1


def test_concatenate_and_cat():
    x, y = _xy(2, 3)
    X, Y = LT(x), LT(y)
    parts = (X, Y, X * 2)
    expected = _pairwise(lambda a, b: torch.cat([a, b, 2 * a]), x, y)
    _close(LT.concatenate(parts).sum(dim=1), expected)
    _close(LT.concatenate(parts, axis=2).sum(dim=1), expected)
    _close(LT.cat(parts, -1).sum(dim=1), expected)
    assert LT.concatenate((X,)) is X
    with pytest.raises(ShapeError, match="last"):
        LT.concatenate(parts, axis=0)
    with pytest.raises(FormulaError, match="empty"):
        LT.concatenate(())


def test_class_api():
    x, _ = _xy(3, 3)
    X = LT(x)
    Z = X.lt_constructor(torch.randn(5, 2, dtype=F64), axis=1)
    assert type(Z) is LT and Z.nj == 5 and Z.ndim == 2
    tools = X.get_tools()
    assert tools is X.tools and X.Genred is pkt.Genred and X.KernelSolve is pkt.KernelSolve
    assert X.dim() == 3 and X.sum().dim() == 3
    assert LT(torch.randn(2, 4, 1, 3, dtype=F64)).dim() == 4  # one batch dimension
    Xn = pknp.LazyTensor(np.random.randn(4, 1, 2))
    assert Xn.get_tools() is Xn.tools and Xn.Genred is pknp.Genred
    assert type(Xn.lt_constructor(np.ones(3))) is pknp.LazyTensor


# ---------------------------------------------------------------------------
# formula strings
# ---------------------------------------------------------------------------

VX, VY, VT, VS, VG = Var(0, 6, 0), Var(1, 6, 1), Var(2, 7, 2), Var(3, 1, 0), Var(4, 1, 2)
ALIASES = {"x": VX, "y": VY, "t": VT, "s": VS, "g": VG}

PARSE_CASES = [
    ("TensorDot(x, y, [2, 3], [3, 2], [1], [0])", C.tensordot(VX, VY, (2, 3), (3, 2), (1,), (0,))),
    ("TensorDot(x, y, [2,3], [2,3], [], [], [3,1,0,2])",
     C.tensordot(VX, VY, (2, 3), (2, 3), (), (), (3, 1, 0, 2))),
    ("TensorDot(x, y, [6], [6], [0], [0])", C.tensordot(VX, VY, (6,), (6,), (0,), (0,))),
    ("Kron(x, y, [2, 3], [3, 2])", C.kron(VX, VY, (2, 3), (3, 2))),
    ("BSpline(t, s, 2)", C.bspline(VT, VS, 2)),
    ("BSpline(t, s)", C.bspline(VT, VS, 0)),
    ("SoftDTW_SqDist(x, y, g)", C.softdtw_sqdist(VX, VY, VG)),
    ("DifferenceMatrix(x, y)", C.difference_matrix(VX, VY)),
    ("GradMatrix(Exp(x) * Sum(y), x)", C.grad_matrix(A.mul(A.node("Exp", VX), A.vsum(VY)), VX)),
    ("Divergence(Sin(x * y), x)", C.divergence(A.node("Sin", A.mul(VX, VY)), VX)),
    ("Laplacian(Exp(-SqDist(x, y)), x)", C.laplacian(A.node("Exp", A.neg(C.sqdist(VX, VY))), VX)),
    ("TraceOperator(x * y, x)", C.trace_operator(A.mul(VX, VY), VX)),
    ("Factorize(Exp(x) * x, Exp(x))", A.mul(A.node("Exp", VX), VX)),
    ("AutoFactorize(Exp(x) * x)", A.mul(A.node("Exp", VX), VX)),
]


@pytest.mark.parametrize("text, expected", PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_parse_new_constructions_and_round_trip(text, expected):
    f = parse_formula(text, ALIASES)
    assert f == expected
    assert parse_formula(to_string(f)) == f


def test_parsed_tensordot_evaluates_like_the_method():
    from polykeops.numpy import Genred

    x = np.random.randn(M, 6)
    y = np.random.randn(N, 6)
    g = Genred("TensorDot(x, y, [2, 3], [3, 2], [1], [0], [1, 0])", ["x = Vi(6)", "y = Vj(6)"],
               reduction_op="Sum", axis=1)
    res = g(x, y)
    X, Y = pknp.LazyTensor(x[:, None, :]), pknp.LazyTensor(y[None])
    lazy = X.keops_tensordot(Y, (2, 3), (3, 2), (1,), (0,), (1, 0))
    np.testing.assert_allclose(res, lazy.sum(axis=1), rtol=1e-12)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("TensorDot(x, y, [2, 3], [3, 2], [1])", "takes"),
        ("TensorDot(x, y, 2, [3, 2], [1], [0])", "entries"),
        ("TensorDot(x, y, [2, 3], [3, 2], [1], [0)", "']'"),
        ("TensorDot(x, y, [2, 3], [3, 2], [x], [0])", "integer literals"),
        ("TensorDot([2, 3], y, [2, 3], [3, 2], [1], [0])", "must be a formula"),
        ("TensorDot(x, y, x, [3, 2], [1], [0])", "list of integers"),
        ("Exp([1])", "must be a formula"),
        ("BSpline(t, s, [1])", "integer literal"),
        ("GradMatrix(Exp(x), Exp(x))", "variable"),
        ("TraceOperator(Exp(x), x)", "not linear"),
    ],
)
def test_parse_errors(text, fragment):
    with pytest.raises(FormulaSyntaxError, match=fragment):
        parse_formula(text, ALIASES)


# ---------------------------------------------------------------------------
# placeholders mixed with data LazyTensors of every layout
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_placeholders_with_data_in_lazytensor_layout(backend):
    """Data leaves keep their LazyTensor layout ((M, 1, D), (1, N, D)...) when the
    reduction also has placeholders bound at call time."""
    rng = np.random.default_rng(0)
    x, y, b = rng.standard_normal((6, 1, 3)), rng.standard_normal((1, 5, 3)), rng.standard_normal((5, 1))
    k = (-(pknp.LazyTensor(x) - pknp.LazyTensor(y)).sqnorm2()).exp() * pknp.Vj(0, 1)
    red = k.sum(1, backend=backend)
    dense = np.exp(-((x - y) ** 2).sum(-1))
    np.testing.assert_allclose(red(b), dense @ b, rtol=1e-12)
    red = (pknp.Vi(0, 3) * pknp.LazyTensor(y)).sum(0, backend=backend)
    xi = x[:, 0, :]
    np.testing.assert_allclose(red(xi), (xi[:, None] * y).sum(0), rtol=1e-12)


@pytest.mark.parametrize("lib", ["torch", "numpy"])
def test_call_false_defers_the_reduction(lib):
    """pykeops' ``call=False``: the reduction comes back as a callable, run when called."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(31, 3, generator=g, dtype=torch.float64)
    y = torch.randn(257, 3, generator=g, dtype=torch.float64)
    mod, conv = (pkt, lambda t: t) if lib == "torch" else (pknp, lambda t: t.numpy())
    K = (-mod.LazyTensor(conv(x)[:, None]).sqdist(mod.LazyTensor(conv(y)[None]))).exp()
    deferred = K.sum(1, call=False)
    assert callable(deferred)
    dense = torch.exp(-torch.cdist(x, y) ** 2)
    torch.testing.assert_close(torch.as_tensor(np.asarray(deferred())), dense.sum(1, keepdim=True))
    idx = K.argmax(0, call=False)()
    assert np.array_equal(np.asarray(idx)[:, 0], dense.argmax(0).numpy())
    z = torch.randn(31, 1, 2, generator=g, dtype=torch.complex128)
    zk = (mod.LazyTensor(conv(z)) * K).sum(0, call=False)()
    torch.testing.assert_close(torch.as_tensor(np.asarray(zk)), (z * dense[..., None]).sum(0))


def test_genred_accepts_pykeops_code_generation_switches():
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    fn = pkt.Genred("SqDist(x,y)", ["x=Vi(3)", "y=Vj(3)"], reduction_op="Sum", axis=1,
                    enable_chunks=False, rec_multVar_highdim=True, use_fast_math=True)
    torch.testing.assert_close(fn(x, y), (torch.cdist(x, y) ** 2).sum(1, keepdim=True))
