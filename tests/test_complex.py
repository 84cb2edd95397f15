"""Complex LazyTensors against dense torch/NumPy complex computations (values and gradients).

Variables: x (complex i-variable), y (complex j-variable), r (real i-variable),
s (real j-variable), p (complex parameter), all of vector dimension D; dense
references broadcast ``(*b, M, 1, D)`` against ``(*b, 1, N, D)``.  Gradients
are compared with torch autograd on the dense computation (complex128/float64),
so torch's conventions for complex inputs (conjugate Wirtinger) are checked.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import polykeops.numpy as pkn
import polykeops.torch as pkt
from polykeops.errors import DTypeError, FormulaError, PolyKeopsError, ShapeError

D = 3
TOL = dict(rtol=1e-9, atol=1e-10)

# ---------------------------------------------------------------------------
# cases: (lazy formula, dense formula) on (x, y, r, s, p)
# ---------------------------------------------------------------------------
CASES = {
    # complex methods
    "real": (lambda X, Y, R, S, P: (X * Y).real, lambda x, y, r, s, p: (x * y).real),
    "imag": (lambda X, Y, R, S, P: (X * Y).imag, lambda x, y, r, s, p: (x * y).imag),
    "angle": (lambda X, Y, R, S, P: (X - Y).angle(), lambda x, y, r, s, p: torch.angle(x - y)),
    "abs": (lambda X, Y, R, S, P: (X - Y).abs(), lambda x, y, r, s, p: torch.abs(x - y)),
    "abs_builtin": (lambda X, Y, R, S, P: abs(X + Y), lambda x, y, r, s, p: torch.abs(x + y)),
    "conj": (lambda X, Y, R, S, P: X.conj() * Y, lambda x, y, r, s, p: x.conj() * y),
    "exp": (lambda X, Y, R, S, P: (X * Y).exp(), lambda x, y, r, s, p: torch.exp(x * y)),
    "exp1j": (lambda X, Y, R, S, P: (R * S).exp1j(), lambda x, y, r, s, p: torch.exp(1j * r * s)),
    "real2complex": (lambda X, Y, R, S, P: (R - S).real2complex() * X,
                     lambda x, y, r, s, p: (r - s) * x),
    "imag2complex": (lambda X, Y, R, S, P: (R + S).imag2complex() + Y,
                     lambda x, y, r, s, p: 1j * (r + s) + y),
    # complex arithmetic
    "add": (lambda X, Y, R, S, P: X + Y, lambda x, y, r, s, p: x + y),
    "sub": (lambda X, Y, R, S, P: X - Y, lambda x, y, r, s, p: x - y),
    "mul": (lambda X, Y, R, S, P: X * Y, lambda x, y, r, s, p: x * y),
    "div": (lambda X, Y, R, S, P: X / (Y + 3), lambda x, y, r, s, p: x / (y + 3)),
    "neg": (lambda X, Y, R, S, P: -X + Y, lambda x, y, r, s, p: -x + y),
    "pow": (lambda X, Y, R, S, P: (X - Y) ** 3, lambda x, y, r, s, p: (x - y) ** 3),
    "pow_neg": (lambda X, Y, R, S, P: (X + 3) ** -2 * Y, lambda x, y, r, s, p: (x + 3) ** -2 * y),
    "pow0": (lambda X, Y, R, S, P: X ** 0 * Y, lambda x, y, r, s, p: y + 0 * x),
    "square": (lambda X, Y, R, S, P: (X * Y).square(), lambda x, y, r, s, p: (x * y) ** 2),
    "inv": (lambda X, Y, R, S, P: (X + Y + 4).inv(), lambda x, y, r, s, p: 1 / (x + y + 4)),
    # with real LazyTensors (both orders)
    "mul_real": (lambda X, Y, R, S, P: X * S + R * Y, lambda x, y, r, s, p: x * s + r * y),
    "add_real": (lambda X, Y, R, S, P: (X + S) - (R - Y), lambda x, y, r, s, p: (x + s) - (r - y)),
    "sub_real": (lambda X, Y, R, S, P: S - X, lambda x, y, r, s, p: s - x),
    "div_real": (lambda X, Y, R, S, P: X / (S * S + 1) + R / (Y + 3),
                 lambda x, y, r, s, p: x / (s * s + 1) + r / (y + 3)),
    "real_scalar_lt": (lambda X, Y, R, S, P: (R * S).sum() * Y,
                       lambda x, y, r, s, p: (r * s).sum(-1, keepdim=True) * y),
    # with Python numbers (int, float, complex; both orders)
    "numbers": (lambda X, Y, R, S, P: 2 * X + Y * 1.5 - 0.25,
                lambda x, y, r, s, p: 2 * x + y * 1.5 - 0.25),
    "complex_numbers": (lambda X, Y, R, S, P: (0.5 + 2j) * X - Y / (1 - 1j) + 3j - X * 2.5j,
                        lambda x, y, r, s, p: (0.5 + 2j) * x - y / (1 - 1j) + 3j - x * 2.5j),
    "rdiv_number": (lambda X, Y, R, S, P: 1 / (X + 3) - (2 + 1j) / (Y - 3),
                    lambda x, y, r, s, p: 1 / (x + 3) - (2 + 1j) / (y - 3)),
    "real_with_complex_number": (lambda X, Y, R, S, P: R * 1j + S - (0.5 - 1j) / (R * R + 1) + 2j * S,
                                 lambda x, y, r, s, p: r * 1j + s - (0.5 - 1j) / (r * r + 1) + 2j * s),
    "real_rsub_complex_number": (lambda X, Y, R, S, P: (1j - R) * S + (S + 2) / 1j,
                                 lambda x, y, r, s, p: (1j - r) * s + (s + 2) / 1j),
    # complex parameter, vector ops and broadcasting
    "param": (lambda X, Y, R, S, P: P * X + Y / P, lambda x, y, r, s, p: p * x + y / p),
    "vsum": (lambda X, Y, R, S, P: (X * Y).sum(-1), lambda x, y, r, s, p: (x * y).sum(-1, keepdim=True)),
    "scalar_times_vector": (lambda X, Y, R, S, P: (X * Y).sum() * X - Y.sum(dim=-1),
                            lambda x, y, r, s, p: (x * y).sum(-1, keepdim=True) * x
                            - y.sum(-1, keepdim=True)),
    "getitem": (lambda X, Y, R, S, P: X[1] * Y[0:2] + X[..., -1],
                lambda x, y, r, s, p: x[..., 1:2] * y[..., 0:2] + x[..., 2:3]),
    "elem_extract": (lambda X, Y, R, S, P: X.elem(2) * Y.extract(1, 2),
                     lambda x, y, r, s, p: x[..., 2:3] * y[..., 1:3]),
    "concat": (lambda X, Y, R, S, P: X.concat(Y * S).concat(R),
               lambda x, y, r, s, p: torch.cat(torch.broadcast_tensors(x, y * s, r.to(x.dtype)), -1)),
    "kernel": (lambda X, Y, R, S, P: (-((X - Y).abs() ** 2).sum()).exp() * (R * S).sum().exp1j() * Y,
               lambda x, y, r, s, p: torch.exp(-(torch.abs(x - y) ** 2).sum(-1, keepdim=True))
               * torch.exp(1j * (r * s).sum(-1, keepdim=True)) * y),
}

SIZES = [(1, 7), (7, 257), (257, 1)]
BATCHES = [(), (2,)]


def make_data(M, N, batch=(), dtype=torch.complex128, requires_grad=False):
    rdtype = torch.float64 if dtype == torch.complex128 else torch.float32
    b_y = batch[:-1] + (1,) if batch else ()  # y broadcasts along the last batch dimension
    data = dict(
        x=torch.randn(*batch, M, 1, D, dtype=dtype) * 0.7,
        y=torch.randn(*b_y, 1, N, D, dtype=dtype) * 0.7,
        r=torch.randn(*batch, M, 1, D, dtype=rdtype),
        s=torch.randn(*b_y, 1, N, D, dtype=rdtype),
        p=torch.randn(D, dtype=dtype) + 1.5,
    )
    for v in data.values():
        v.requires_grad_(requires_grad)
    return data


def lazy(data, lib=pkt):
    conv = (lambda t: t) if lib is pkt else (lambda t: t.detach().numpy())
    return [lib.LazyTensor(conv(data[k])) for k in "xyrsp"]


def dense(data):
    x, y, r, s, p = (data[k] for k in "xyrsp")
    return x, y, r, s, p


def assert_close(a, b, **tol):
    tol = tol or TOL
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a)
    b = b.detach()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    torch.testing.assert_close(a.detach(), b, **tol)


# ---------------------------------------------------------------------------
# construction and metadata
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("lib", [pkt, pkn], ids=["torch", "numpy"])
@pytest.mark.parametrize("cdtype", ["complex64", "complex128"])
def test_construction_dispatch(lib, cdtype):
    z = np.random.randn(5, 1, 4) + 1j * np.random.randn(5, 1, 4)
    z = z.astype(cdtype)
    arr = torch.from_numpy(z) if lib is pkt else z
    Z = lib.LazyTensor(arr)
    assert type(Z) is lib.ComplexLazyTensor
    assert isinstance(Z, lib.LazyTensor) and Z.is_complex
    assert not lib.LazyTensor(arr.real.copy() if lib is pkn else arr.real.contiguous()).is_complex
    assert Z.shape == (5, 1, 4) and Z.ndim == 4
    expected = getattr(torch, cdtype) if lib is pkt else np.dtype(cdtype)
    assert Z.dtype == expected
    assert Z.formula.dim == 8  # real parts then imaginary parts
    assert "ComplexLazyTensor" in repr(Z) and cdtype in repr(Z)
    assert lib.Vi(arr[:, 0, :]).is_complex and lib.Vj(arr[:, 0, :]).shape == (1, 5, 4)
    assert lib.Pm(arr[0, 0, :]).shape == (1, 1, 4)
    assert type(lib.ComplexLazyTensor(arr)) is lib.ComplexLazyTensor
    assert type(lib.LazyTensor()) is lib.LazyTensor
    assert type(lib.LazyTensor(is_complex=True)) is lib.ComplexLazyTensor


@pytest.mark.parametrize("lib", [pkt, pkn], ids=["torch", "numpy"])
def test_is_complex_flag_and_numbers(lib):
    x = np.random.randn(6, 1, 2)
    arr = torch.from_numpy(x) if lib is pkt else x
    Z = lib.LazyTensor(arr, is_complex=True)
    assert Z.is_complex and Z.shape == (6, 1, 2)
    res = (Z * (1 + 2j)).sum(dim=0)
    ref = (x * (1 + 2j)).sum(0)
    np.testing.assert_allclose(np.asarray(res), ref, rtol=1e-12)
    c = lib.LazyTensor(0.5 - 1.25j)
    assert c.is_complex and c.ndim == 1 and c.shape == (1, 1)
    assert lib.Pm(2j).is_complex
    assert lib.LazyTensor(3.0, is_complex=True).is_complex
    out = (lib.LazyTensor(arr) * c + lib.LazyTensor(2.0, is_complex=True)).sum(dim=0)
    np.testing.assert_allclose(np.asarray(out), (x * (0.5 - 1.25j) + 2.0).sum(0), rtol=1e-12)


def test_shape_of_complex_scalar_formula():
    d = make_data(4, 5)
    X, Y, *_ = lazy(d)
    assert (X * Y).shape == (4, 5, 3)
    assert (X * Y).sum().shape == (4, 5)
    assert (X * Y).real.shape == (4, 5, 3) and not (X * Y).real.is_complex
    assert (X * Y).t().shape == (5, 4, 3)


# ---------------------------------------------------------------------------
# values: every case, both reduction axes, several sizes, with and without batch
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("batch", BATCHES, ids=["nobatch", "batch"])
@pytest.mark.parametrize("M,N", SIZES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_values_torch(case, M, N, batch):
    lf, df = CASES[case]
    data = make_data(M, N, batch)
    F = lf(*lazy(data))
    ref = df(*dense(data))
    nb = len(batch)
    for dim in (0, 1):
        assert_close(F.sum(dim=nb + dim), ref.sum(nb + dim))
    if M * N < 2000:
        expected = ref.expand(*(F.shape if F.ndim > 1 else F.shape + (1,)))
        assert_close(F.dense(), expected if F.ndim > 1 else expected[..., 0])


@pytest.mark.parametrize("case", ["mul", "div_real", "complex_numbers", "exp1j", "abs", "angle", "vsum",
                                  "kernel", "concat"])
@pytest.mark.parametrize("batch", BATCHES, ids=["nobatch", "batch"])
def test_values_numpy(case, batch):
    lf, df = CASES[case]
    data = make_data(7, 257, batch)
    F = lf(*lazy(data, pkn))
    ref = df(*dense(data))
    nb = len(batch)
    for dim in (0, 1):
        res = F.sum(dim=nb + dim)
        assert isinstance(res, np.ndarray)
        assert_close(res, ref.sum(nb + dim))


@pytest.mark.parametrize("lib", [pkt, pkn], ids=["torch", "numpy"])
def test_single_precision(lib):
    data = make_data(7, 257, dtype=torch.complex64)
    X, Y, R, S, P = lazy(data, lib)
    x, y, r, s, p = dense(data)
    res = ((X * Y).exp() * S + 1j * R).sum(dim=1)
    ref = (torch.exp(x * y) * s + 1j * r).sum(1)
    assert str(res.dtype).endswith("complex64")
    assert_close(res, ref, rtol=1e-4, atol=1e-4)


def test_tiled_reduction(tiny_tiles):
    data = make_data(300, 200, (2,))
    X, Y, R, S, P = lazy(data)
    x, y, r, s, p = dense(data)
    res = ((X * Y).exp() * S).sum(dim=2, backend=tiny_tiles)
    assert_close(res, (torch.exp(x * y) * s).sum(2))


def test_out_argument():
    data = make_data(7, 9)
    X, Y, *_ = lazy(data)
    out = torch.empty(7, D, dtype=torch.complex128)
    res = (X * Y).sum(dim=1, out=out)
    assert res is out
    assert_close(out, (data["x"] * data["y"]).sum(1))


def test_transpose():
    data = make_data(7, 9)
    X, Y, *_ = lazy(data)
    F = X * Y.conj()
    assert_close(F.t().sum(dim=1), F.sum(dim=0))
    assert_close(F.T.sum(dim=0), F.sum(dim=1))


def test_sumsoftmaxweight_complex_weight():
    data = make_data(7, 257, (2,))
    X, Y, R, S, P = lazy(data)
    x, y, r, s, p = dense(data)
    res = (-((R - S) ** 2).sum()).sumsoftmaxweight(Y * X, dim=2)
    w = torch.softmax(-((r - s) ** 2).sum(-1, keepdim=True), dim=2)
    assert_close(res, (w * (y * x)).sum(2))


# ---------------------------------------------------------------------------
# K @ v
# ---------------------------------------------------------------------------
def _scalar_data(M, N, batch=()):
    x = torch.randn(*batch, M, 1, 1, dtype=torch.complex128) * 0.5
    y = torch.randn(*batch, 1, N, 1, dtype=torch.complex128) * 0.5
    return x, y


@pytest.mark.parametrize("vkind", ["complex", "real"])
@pytest.mark.parametrize("vshape", ["vector", "matrix"])
@pytest.mark.parametrize("M,N", [(1, 7), (7, 257), (257, 1)])
def test_matmul_complex_kernel(vkind, vshape, M, N):
    x, y = _scalar_data(M, N)
    dtype = torch.complex128 if vkind == "complex" else torch.float64
    v = torch.randn(N, dtype=dtype) if vshape == "vector" else torch.randn(N, 2, dtype=dtype)
    K = (pkt.LazyTensor(x) - pkt.LazyTensor(y)).exp()
    Kd = torch.exp(x - y)[..., 0]
    assert_close(K @ v, Kd @ v.to(torch.complex128))


@pytest.mark.parametrize("lib", [pkt, pkn], ids=["torch", "numpy"])
def test_matmul_real_kernel_complex_vector(lib):
    x = torch.randn(7, 1, 2, dtype=torch.float64)
    y = torch.randn(1, 257, 2, dtype=torch.float64)
    v = torch.randn(257, 3, dtype=torch.complex128)
    conv = (lambda t: t) if lib is pkt else (lambda t: t.numpy())
    K = (-lib.LazyTensor(conv(x)).sqdist(lib.LazyTensor(conv(y)))).exp()
    Kd = torch.exp(-((x - y) ** 2).sum(-1)).to(torch.complex128)
    assert_close(K @ conv(v), Kd @ v)


def test_matmul_batch():
    x, y = _scalar_data(7, 257, (2,))
    v = torch.randn(2, 257, 3, dtype=torch.complex128)
    K = (pkt.LazyTensor(x) * pkt.LazyTensor(y).conj()).exp()
    assert_close(K @ v, torch.exp(x * y.conj())[..., 0] @ v)


# ---------------------------------------------------------------------------
# gradients: torch autograd through the reductions vs autograd on dense tensors
# ---------------------------------------------------------------------------
def _loss(out, g):
    if out.is_complex():
        return (out * g.conj()).real.sum()
    return (out * g).sum()


def _check_grads(lazy_out, dense_out, inputs):
    g = torch.randn_like(dense_out)
    lazy_grads = torch.autograd.grad(_loss(lazy_out, g), inputs, allow_unused=True)
    dense_grads = torch.autograd.grad(_loss(dense_out, g), inputs, allow_unused=True)
    for name, a, b, t in zip("xyrsp", lazy_grads, dense_grads, inputs):
        a = torch.zeros_like(t) if a is None else a
        b = torch.zeros_like(t) if b is None else b
        assert a.dtype == t.dtype, name
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9, msg=f"gradient w.r.t. {name}")


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients(case, dim):
    lf, df = CASES[case]
    data = make_data(7, 31, requires_grad=True)
    inputs = [data[k] for k in "xyrsp"]
    _check_grads(lf(*lazy(data)).sum(dim=dim), df(*dense(data)).sum(dim), inputs)


@pytest.mark.parametrize("case", ["mul", "div", "kernel", "abs", "angle", "exp1j", "mul_real"])
def test_gradients_batch(case):
    lf, df = CASES[case]
    data = make_data(5, 9, (2,), requires_grad=True)
    inputs = [data[k] for k in "xyrsp"]
    _check_grads(lf(*lazy(data)).sum(dim=2), df(*dense(data)).sum(2), inputs)


def test_gradient_matmul_vector():
    x, y = _scalar_data(7, 13)
    x.requires_grad_(True)
    v = torch.randn(13, 2, dtype=torch.complex128, requires_grad=True)
    K = (pkt.LazyTensor(x) - pkt.LazyTensor(y)).exp()
    _check_grads(K @ v, torch.exp(x - y)[..., 0] @ v, [x, v])


def test_second_order_real_input():
    r = torch.randn(6, 1, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 8, 2, dtype=torch.complex128)
    out = (pkt.LazyTensor(r).exp1j() * pkt.LazyTensor(y)).sum(dim=1)
    ref = (torch.exp(1j * r) * y).sum(1)
    (g1,) = torch.autograd.grad(out.abs().sum(), [r], create_graph=True)
    (g2,) = torch.autograd.grad(ref.abs().sum(), [r], create_graph=True)
    torch.testing.assert_close(g1, g2)
    h1 = torch.autograd.grad(g1.sum(), [r])[0]
    h2 = torch.autograd.grad(g2.sum(), [r])[0]
    torch.testing.assert_close(h1, h2)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,call", [
    ("min", lambda Z: Z.min(dim=1)),
    ("argmin", lambda Z: Z.argmin(dim=0)),
    ("max_argmax", lambda Z: Z.max_argmax(dim=1)),
    ("Kmin", lambda Z: Z.Kmin(2, dim=1)),
    ("argKmin", lambda Z: Z.argKmin(2, dim=1)),
    ("max_sumshiftexp", lambda Z: Z.max_sumshiftexp(dim=1)),
    ("sumsoftmaxweight", lambda Z: Z.sumsoftmaxweight(Z, dim=1)),
    ("solve", lambda Z: Z.solve(torch.randn(4, 1))),
    ("log", lambda Z: Z.log()),
    ("sqnorm2", lambda Z: Z.sqnorm2()),
    ("sqdist", lambda Z: Z.sqdist(Z)),
    ("grad", lambda Z: Z.grad(Z, 1.0)),
])
def test_unsupported_methods(name, call):
    Z = pkt.LazyTensor(torch.randn(3, 1, 2, dtype=torch.complex128)) * pkt.LazyTensor(
        torch.randn(1, 4, 2, dtype=torch.complex128))
    with pytest.raises(FormulaError, match=f"{name} is not supported for complex LazyTensors"):
        call(Z)


def test_ordering_errors_say_why():
    Z = pkn.LazyTensor(np.ones((3, 1, 1), dtype=np.complex128))
    with pytest.raises(FormulaError, match="not ordered"):
        Z.argmin(dim=0)
    for op in (lambda: Z < 1, lambda: Z == Z, lambda: Z | Z):
        with pytest.raises(FormulaError, match="not supported for complex"):
            op()


def test_other_errors():
    z = torch.randn(3, 1, 2, dtype=torch.complex128)
    r = torch.randn(3, 1, 2, dtype=torch.float64)
    Z, R = pkt.LazyTensor(z), pkt.LazyTensor(r)
    for bad in (Z.real2complex, Z.imag2complex, Z.exp1j):
        with pytest.raises(FormulaError, match="complex LazyTensor"):
            bad()
    with pytest.raises(FormulaError, match="integer powers"):
        Z ** 0.5
    with pytest.raises(FormulaError, match="complex"):
        R.sqdist(Z)  # real-only operation with a complex operand
    with pytest.raises(FormulaError, match="complex"):
        R.concat(Z)
    with pytest.raises(FormulaError, match="incompatible"):
        Z + pkt.LazyTensor(torch.randn(1, 4, 3, dtype=torch.complex128))
    # a raw 3-D array is wrapped as pykeops does (LazyTensor(z)), not refused
    torch.testing.assert_close((Z * z).sum(dim=0), (Z * pkt.LazyTensor(z)).sum(dim=0))
    with pytest.raises(DTypeError):
        Z * pkt.LazyTensor(torch.randn(3, 1, 2, dtype=torch.float32))
    with pytest.raises(DTypeError, match="float32 or float64"):
        pkt.LazyTensor(r.half()).exp1j()
    with pytest.raises(DTypeError, match="complex64 or complex128"):
        pkn.LazyTensor(np.zeros((3, 1, 2), dtype=np.clongdouble))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ComplexHalf support is experimental"
        chalf = torch.zeros(3, 1, 2, dtype=torch.complex32)
    with pytest.raises(DTypeError, match="complex64 or complex128"):
        pkt.LazyTensor(chalf)
    with pytest.raises(DTypeError, match="float32 or float64"):
        pkt.LazyTensor(r.half(), is_complex=True)
    with pytest.raises(ShapeError, match="complex LazyTensor placeholder"):
        pkt.LazyTensor((0, 2), is_complex=True)
    with pytest.raises(ShapeError, match="dimension >= 1"):
        pkt.LazyTensor((0, 0, 0), is_complex=True)
    with pytest.raises(ShapeError, match=r"\(3, 2\)"):
        pkt.LazyTensor(z[:, 0, :])  # 2-D without axis: the message shows the complex shape
    with pytest.raises(FormulaError, match="out of range"):
        Z[2]
    with pytest.raises(ShapeError, match="max_elements"):
        (Z * pkt.LazyTensor(z.transpose(0, 1))).dense(max_elements=10)
    assert issubclass(FormulaError, PolyKeopsError)


def test_numpy_front_end_stays_torch_free():
    z = np.random.randn(4, 1, 2) + 1j * np.random.randn(4, 1, 2)
    out = pkn.LazyTensor(z).exp().sum(dim=0)
    assert isinstance(out, np.ndarray) and out.dtype == np.complex128
    np.testing.assert_allclose(out, np.exp(z).sum(0), rtol=1e-12)


# ---------------------------------------------------------------------------
# complex placeholders (arrays bound when the reduction is called)
# ---------------------------------------------------------------------------
def _crandn(rng, *shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_complex_placeholders_numpy(backend):
    rng = np.random.default_rng(10)
    a, b, p = _crandn(rng, 6, 2), _crandn(rng, 5, 2), _crandn(rng, 2)
    z_i, w_j = pkn.Vi(0, 2, is_complex=True), pkn.Vj(1, 2, is_complex=True)
    q = pkn.Pm(2, 2, is_complex=True)
    assert isinstance(z_i, pkn.ComplexLazyTensor) and z_i.ndim == 2
    red = ((z_i * w_j).exp() * q).sum(1)
    assert callable(red)
    out = red(a, b, p, backend=backend)
    ref = (np.exp(a[:, None] * b[None]) * p).sum(1)
    assert out.dtype == np.complex128
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    # real results of complex placeholders, mixed with data and real placeholders
    x = rng.standard_normal((6, 1))
    red = ((z_i - w_j).abs() * q.real * pkn.Vi(x) * pkn.Vj(3, 1)).sum(0)
    y = rng.standard_normal((5, 1))
    np.testing.assert_allclose(red(a, b, p, y, backend=backend),
                               (np.abs(a[:, None] - b[None]) * p.real * x[:, None] * y[None]).sum(0),
                               rtol=1e-12)
    # LazyTensor((index, dim, category), is_complex=True) is the same placeholder
    red = (pkn.LazyTensor((0, 2, 0), is_complex=True) * pkn.LazyTensor(b[None])).sum(1)
    np.testing.assert_allclose(red(a, backend=backend), (a[:, None] * b[None]).sum(1), rtol=1e-12)


def test_complex_placeholders_torch_are_differentiable():
    g = torch.Generator().manual_seed(11)
    a = torch.randn(7, 1, dtype=torch.complex128, generator=g, requires_grad=True)
    b = torch.randn(4, 1, dtype=torch.complex128, generator=g)
    red = (pkt.Vi(0, 1, is_complex=True) * pkt.Vj(1, 1, is_complex=True)).exp().sum(1)
    out, ref = red(a, b), (a[:, None] * b[None]).exp().sum(1)
    torch.testing.assert_close(out, ref)
    (g1,) = torch.autograd.grad(out.abs().sum(), [a])
    (g2,) = torch.autograd.grad(ref.abs().sum(), [a])
    torch.testing.assert_close(g1, g2)


def test_complex_placeholder_errors():
    z = pkn.Vi(0, 1, is_complex=True)
    red = (z * pkn.Vj(1, 1, is_complex=True)).sum(1)
    with pytest.raises(DTypeError, match=r"argument 0 is a complex placeholder \(Vi\(0,1\)\).*\(3, 1\)"):
        red(np.ones((3, 1)), np.ones((2, 1), dtype=np.complex128))
    with pytest.raises(ShapeError, match=r"argument 0 .*Vi\(0,1\)\) has shape \(3, 2\).*complex dimension 1"):
        red(np.ones((3, 2), dtype=np.complex128), np.ones((2, 1), dtype=np.complex128))
    with pytest.raises(FormulaError, match="placeholder index 0 is used as a real and as a complex"):
        z + pkn.Vi(0, 2)


# ---------------------------------------------------------------------------
# complex logsumexp
# ---------------------------------------------------------------------------
def _wrapped_close(out, ref, tol):
    """Equal complex logarithms: real parts equal, imaginary parts equal modulo 2 pi."""
    out, ref = np.asarray(out), np.asarray(ref)
    np.testing.assert_allclose(out.real, ref.real, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.exp(1j * out.imag), np.exp(1j * ref.imag), rtol=tol, atol=tol)
    assert np.all(np.abs(out.imag) <= np.pi + 1e-12)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dim", [0, 1])
def test_complex_logsumexp_numpy(backend, dim):
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((31, 2)), rng.standard_normal((17, 2))
    phase = rng.standard_normal((31, 1))
    # large real parts: a naive exp overflows, the shifted sum does not
    Z = pkn.Vi(x).sqdist(pkn.Vj(y)) * 300 + pkn.Vi(phase).exp1j() * pkn.Vj(y)[0]
    zd = ((x[:, None] - y[None]) ** 2).sum(-1) * 300 + np.exp(1j * phase) * y[None, :, 0]
    out = Z.logsumexp(dim, backend=backend)
    assert out.shape == ((31, 1) if dim == 1 else (17, 1)) and out.dtype == np.complex128
    m = zd.real.max(dim, keepdims=True)
    ref = (m + np.log(np.exp(zd - m).sum(dim, keepdims=True))).reshape(out.shape)
    _wrapped_close(out, ref, 1e-10)
    # the same with placeholders: a callable
    red = (pkn.Vi(0, 1, is_complex=True) * pkn.Vj(1, 1, is_complex=True)).logsumexp(dim)
    a, b = _crandn(rng, 31, 1), _crandn(rng, 17, 1)
    zz = a[:, None, 0] * b[None, :, 0]
    m = zz.real.max(dim, keepdims=True)
    ref = (m + np.log(np.exp(zz - m).sum(dim, keepdims=True))).reshape(-1, 1)
    _wrapped_close(red(a, b, backend=backend), ref, 1e-12)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_complex_logsumexp_torch_gradients(backend):
    g = torch.Generator().manual_seed(13)
    a = torch.randn(2, 9, 1, 1, dtype=torch.complex128, generator=g, requires_grad=True)  # batch 2
    b = torch.randn(1, 1, 12, 1, dtype=torch.complex128, generator=g, requires_grad=True)
    out = (pkt.LazyTensor(a) * pkt.LazyTensor(b) * 4).logsumexp(2, backend=backend)
    ref = torch.logsumexp((a * b * 4)[..., 0], dim=2, keepdim=True)
    assert out.shape == (2, 9, 1) and out.dtype == torch.complex128
    torch.testing.assert_close(out.real, ref.real)
    torch.testing.assert_close(torch.exp(1j * out.imag), torch.exp(1j * ref.imag))
    w = torch.randn(out.shape, dtype=torch.complex128, generator=g)
    # exp(out) is the sum itself: no branch cut in the loss
    g1 = torch.autograd.grad((out.exp() * w).real.sum() + out.real.sum(), [a, b])
    g2 = torch.autograd.grad((ref.exp() * w).real.sum() + ref.real.sum(), [a, b])
    for u, v in zip(g1, g2):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("complex_weight", [False, True])
def test_complex_logsumexp_with_weight(backend, complex_weight):
    """log sum_j exp(z_ij) w_j, component-wise for a vector weight, with gradients."""
    g = torch.Generator().manual_seed(17)
    a = torch.randn(31, 1, 1, dtype=torch.complex128, generator=g, requires_grad=True)
    b = torch.randn(1, 257, 1, dtype=torch.complex128, generator=g)
    if complex_weight:
        w = torch.randn(1, 257, 3, dtype=torch.complex128, generator=g)
    else:
        w = torch.rand(1, 257, 2, dtype=torch.float64, generator=g) + 0.1
    w.requires_grad_(True)
    out = (pkt.LazyTensor(a) * pkt.LazyTensor(b)).logsumexp(1, weight=pkt.LazyTensor(w), backend=backend)
    ref = torch.log((torch.exp(a * b) * w).sum(1))
    assert out.shape == ref.shape and out.dtype == torch.complex128
    torch.testing.assert_close(out.exp(), ref.exp())
    cot = torch.randn(out.shape, dtype=torch.complex128, generator=g)
    g1 = torch.autograd.grad((out.exp() * cot).real.sum(), [a, w])
    g2 = torch.autograd.grad((ref.exp() * cot).real.sum(), [a, w])
    for u, v in zip(g1, g2):
        torch.testing.assert_close(u, v)
    numpy_out = (pkn.LazyTensor(a.detach().numpy()) * pkn.LazyTensor(b.numpy())).logsumexp(
        1, weight=pkn.LazyTensor(w.detach().numpy()), backend=backend
    )
    np.testing.assert_allclose(np.exp(numpy_out), ref.exp().detach().numpy(), rtol=1e-10)


def test_complex_logsumexp_of_minus_infinity_rows():
    z = np.array([[0.5 + 1j, -1 - 2j, 3 + 0.5j], [-np.inf, -np.inf + 1j, -np.inf]])
    with np.errstate(divide="ignore"):
        out = pkn.from_dense(z).logsumexp(1)[:, 0]
    _wrapped_close(out[:1], np.log(np.exp(z[0]).sum()), 1e-12)
    assert out[1].real == -np.inf
    zt = torch.from_numpy(z)
    out = pkt.from_dense(zt).logsumexp(1)[:, 0]
    assert out[1].real == -torch.inf and torch.isfinite(out[0])


def test_complex_logsumexp_errors():
    Z = pkn.LazyTensor(np.ones((3, 1, 2), dtype=np.complex128)) * pkn.LazyTensor(np.ones((1, 4, 2)))
    with pytest.raises(FormulaError, match="scalar formula.*complex dimension 2"):
        Z.logsumexp(1)
    with pytest.raises(FormulaError, match="weight may only use the placeholders"):
        Z[0].logsumexp(1, weight=pkn.Vj(0, 1))
    with pytest.raises(FormulaError, match="dim=-1 is not allowed"):
        Z[0].logsumexp(-1)
