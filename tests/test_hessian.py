"""Per-sample Hessians and Hessian-vector products: closed form and autodiff against torch.func,
finite differences, exact answers, gradcheck / gradgradcheck, and an optional JAX cross-check."""

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import innergrad as ig
from innergrad.core.backends import BACKENDS

from .problems import PROBLEMS, tol

SECOND_ORDER = ["auto", *(name for name, b in BACKENDS.items() if b.hessians)]
F64 = torch.float64


def _skip(backend, f, args, argnums):
    if backend not in ("auto",) and BACKENDS[backend].hessian_unsupported(f, args, argnums if isinstance(
            argnums, tuple) else (argnums,)):
        pytest.skip(f"{backend} cannot take second derivatives of this f")


def _reference(f, args, argnums):
    """torch.func: vmap over the batch of hessian(f on a batch of one)."""
    nums = argnums if isinstance(argnums, tuple) else (argnums,)

    def one(*sample):
        return f(*(a.unsqueeze(0) for a in sample)).reshape(())

    H = torch.func.vmap(torch.func.hessian(one, argnums=nums))(*args)
    return H if isinstance(argnums, tuple) else H[0][0]


def _mlp_case(activation, hidden, seed=0, B=4, sizes=(3, 2)):
    torch.manual_seed(seed)
    mlp = ig.MLP(sizes, hidden, activation).double()
    args = tuple(torch.randn(B, s, dtype=F64) for s in sizes)
    return mlp, args


def _flat(H, argnums):
    """Nested blocks -> one (B, n, n) matrix, to compare layouts with one call."""
    if not isinstance(argnums, tuple):
        return H
    return torch.cat([torch.cat(list(row), -1) for row in H], -2)


@pytest.mark.parametrize("backend", SECOND_ORDER)
@pytest.mark.parametrize("activation", ["softplus", "tanh", "silu", "gelu", "sin", "sigmoid"])
@pytest.mark.parametrize("hidden", [(), (6,), (5, 4), (4, 3, 5)])
def test_mlp_hessian_matches_torch_func(hidden, activation, backend):
    mlp, args = _mlp_case(activation, hidden)
    for argnums in (0, 1, (0, 1), (1, 0)):
        _skip(backend, mlp, args, argnums)
        got = ig.hessian(mlp, *args, argnums=argnums, backend=backend)
        want = _reference(mlp, args, argnums)
        torch.testing.assert_close(_flat(got, argnums), _flat(want, argnums), **tol(F64))


@pytest.mark.parametrize("hidden", [(), (6,), (5, 4)])
def test_mlp_curvature_along_per_sample_directions(hidden):
    """`value_grad_and_curvature`: T^T H T for shared unit columns plus per-sample directions (the LNN's use)."""
    mlp, (x,) = _mlp_case("softplus", hidden, sizes=(4,))
    extra = torch.randn(4, 2, 4, dtype=F64)
    value, grad, G = mlp.value_grad_and_curvature(x, cols=[2, 3], extra=extra, rows=3)
    H = _reference(mlp, (x,), 0)
    T = torch.cat([torch.eye(4, dtype=F64)[:, [2, 3]].expand(4, 4, 2), extra.transpose(-1, -2)], -1)
    torch.testing.assert_close(G, (T.transpose(-1, -2) @ H @ T)[:, :3], **tol(F64))
    torch.testing.assert_close(grad, torch.func.vmap(torch.func.grad(lambda z: mlp(z[None])[0]))(x), **tol(F64))
    torch.testing.assert_close(value, mlp(x))


@pytest.mark.parametrize("backend", SECOND_ORDER)
def test_exact_hessians_of_non_mlp_functions(backend):
    for name in ("quadratic", "lagrangian"):
        p = PROBLEMS[name](F64, "cpu")
        _skip(backend, p.f, p.args, p.argnums)
        got = ig.hessian(p.f, *p.args, argnums=p.argnums, backend=backend)
        torch.testing.assert_close(_flat(got, p.argnums), _flat(p.hessian(p.args), p.argnums), **tol(F64))
        v, g, H = ig.value_grad_and_hessian(p.f, *p.args, argnums=p.argnums, backend=backend)
        torch.testing.assert_close(v, p.value(p.args))
        for a, b in zip(g if isinstance(g, tuple) else (g,), p.grad(p.args) if isinstance(g, tuple) else (
                p.grad(p.args),)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("activation", ["softplus", "tanh"])
def test_hessian_matches_finite_differences_of_the_gradient(activation):
    mlp, (x, h) = _mlp_case(activation, (6, 5))
    H = ig.hessian(mlp, x, h, argnums=(0, 1))
    eps = 1e-6
    for i, a in enumerate((x, h)):
        for j in range(a.shape[1]):
            da = torch.zeros_like(a)
            da[:, j] = eps
            shifted = [[x, h], [x, h]]
            shifted[0][i], shifted[1][i] = a + da, a - da
            gp = ig.grad(mlp, *shifted[0], argnums=(0, 1), backend="autograd")
            gm = ig.grad(mlp, *shifted[1], argnums=(0, 1), backend="autograd")
            for k in range(2):  # column j of block (k, i)
                fd = (gp[k] - gm[k]) / (2 * eps)
                torch.testing.assert_close(H[k][i][:, :, j].detach(), fd, rtol=1e-6, atol=1e-7)


def _loss_on_hessian(f, args, argnums, backend):
    v, g, H = ig.value_grad_and_hessian(f, *args, argnums=argnums, backend=backend)
    Hf = _flat(H, argnums)
    return (Hf**2).sum() + (Hf.sum(-1) * v.unsqueeze(-1)).sum()


@pytest.mark.parametrize("backend", SECOND_ORDER)
@pytest.mark.parametrize("activation", ["softplus", "tanh", "silu"])
def test_parameter_gradients_through_the_hessian(activation, backend):
    """A loss on H trains f through third derivatives: agree with torch.func and finite differences."""
    mlp, args = _mlp_case(activation, (5, 4), seed=1)
    _skip(backend, mlp, args, (0, 1))
    params = list(mlp.parameters())
    loss = _loss_on_hessian(mlp, args, (0, 1), backend)
    got = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)

    H = _reference(mlp, args, (0, 1))
    Hf = _flat(H, (0, 1))
    ref = (Hf**2).sum() + (Hf.sum(-1) * mlp(*args).unsqueeze(-1)).sum()
    want = torch.autograd.grad(ref, params, allow_unused=True, materialize_grads=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol(F64))
    # Finite differences on a few weights of the second layer (the third-derivative terms live there).
    W = mlp.layers[1].weight
    for idx in ((0, 0), (2, 3), (3, 1)):
        with torch.no_grad():
            old = W[idx].item()
            W[idx] = old + 1e-6
            lp = _loss_on_hessian(mlp, args, (0, 1), backend)
            W[idx] = old - 1e-6
            lm = _loss_on_hessian(mlp, args, (0, 1), backend)
            W[idx] = old
        torch.testing.assert_close(got[2][idx], (lp - lm) / 2e-6, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", SECOND_ORDER)
def test_gradcheck_and_gradgradcheck_through_inputs_and_parameters(backend):
    mlp, (x, h) = _mlp_case("softplus", (4, 3), B=3)
    _skip(backend, mlp, (x, h), (0, 1))
    x.requires_grad_()
    h.requires_grad_()
    params = tuple(mlp.parameters())[:-1]  # the output bias never enters a Hessian

    def fn(x, h, *ps):
        H = ig.hessian(mlp, x, h, argnums=(0, 1), backend=backend)
        return _flat(H, (0, 1))

    assert gradcheck(fn, (x, h, *params))
    assert gradgradcheck(fn, (x, h, *params))


@pytest.mark.parametrize("backend", SECOND_ORDER)
def test_gradcheck_non_mlp(backend):
    p = PROBLEMS["lagrangian"](F64, "cpu")
    _skip(backend, p.f, p.args, (0, 1))
    args = tuple(a.clone().requires_grad_() for a in p.args)

    def fn(q, v):
        return _flat(ig.hessian(p.f, q, v, argnums=(0, 1), backend=backend), (0, 1))

    assert gradcheck(fn, args)
    assert gradgradcheck(fn, args)


class _Cube(torch.autograd.Function):
    """x^3 with a backward but no jvp: forward mode cannot pass it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a):
        return a**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return 3 * a**2 * g


class _OldStyleCube(torch.autograd.Function):
    """The same without setup_context: no torch.func transform can pass it, plain autograd can."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a**3

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return 3 * a**2 * g


@pytest.mark.parametrize("fn", [_Cube, _OldStyleCube])
def test_reverse_mode_fallback(fn):
    x = torch.randn(4, 3, dtype=F64)

    def f(z):
        return fn.apply(z).sum(-1)

    torch.testing.assert_close(ig.hessian(f, x), torch.diag_embed(6 * x))
    v = torch.randn_like(x)
    torch.testing.assert_close(ig.hvp(f, x, v), 6 * x * v)
    torch.testing.assert_close(ig.hvp(f, x, v, method="reverse"), 6 * x * v)
    if fn is _Cube:
        torch.testing.assert_close(ig.hessian(f, x, backend="func"), torch.diag_embed(6 * x))


# -- hvp: closed form and argnums ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", SECOND_ORDER)
def test_hvp_with_argnums_on_a_two_input_lagrangian(backend):
    mlp, (q, qd) = _mlp_case("softplus", (6, 5), sizes=(2, 2))
    for f in (mlp, PROBLEMS["lagrangian"](F64, "cpu").f):
        _skip(backend, f, (q, qd), (0, 1))
        H = ig.hessian(f, q, qd, argnums=(0, 1), backend="func")
        w, u = torch.randn_like(q), torch.randn_like(qd)
        mv = lambda M, a: (M @ a.unsqueeze(-1)).squeeze(-1)  # noqa: E731
        got = ig.hvp(f, (q, qd), u, argnums=1, backend=backend)
        torch.testing.assert_close(got, mv(H[1][1], u))
        a, b = ig.hvp(f, (q, qd), (w, u), argnums=(0, 1), backend=backend)
        torch.testing.assert_close(a, mv(H[0][0], w) + mv(H[0][1], u))
        torch.testing.assert_close(b, mv(H[1][0], w) + mv(H[1][1], u))
        assert got.requires_grad == isinstance(f, nn.Module)  # parameters: a graph to train


def test_hvp_closed_form_is_chosen_and_trains_like_autograd():
    mlp, (x,) = _mlp_case("tanh", (7, 5), sizes=(3,))
    v = torch.randn_like(x)
    params = list(mlp.parameters())[:-1]
    out = {}
    for backend in ("closed_form", "autograd"):
        hv = ig.hvp(mlp, x, v, backend=backend)
        out[backend] = (hv, torch.autograd.grad((hv**2).sum(), params))
    torch.testing.assert_close(out["closed_form"][0], out["autograd"][0])
    for a, b in zip(out["closed_form"][1], out["autograd"][1]):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        assert not ig.hvp(mlp, x, v).requires_grad


def test_modes_and_grad_mode():
    mlp, (x, h) = _mlp_case("softplus", (5,))
    with torch.no_grad():
        H = ig.hessian(mlp, x, h, argnums=1)
        assert not H.requires_grad
    torch.testing.assert_close(H, _reference(mlp, (x, h), 1))
    v, g, H = ig.value_grad_and_hessian(mlp, x, h, argnums=1, mode="detached")
    assert v.requires_grad and not g.requires_grad and not H.requires_grad
    with torch.inference_mode():
        H2 = ig.hessian(mlp, x.clone(), h.clone(), argnums=1)
    torch.testing.assert_close(H2, H)


def test_unbatched_function():
    x = torch.randn(3, dtype=F64)
    for backend in ("autograd", "func"):
        torch.testing.assert_close(ig.hessian(lambda z: (z**3).sum(), x, backend=backend), torch.diag(6 * x))


def test_auto_picks_closed_form_for_mlp_and_autograd_otherwise():
    from innergrad.core.backends import choose_backend

    mlp, args = _mlp_case("softplus", (4,))
    assert choose_backend(mlp, args, (0,), hessians=True).name == "closed_form"
    assert choose_backend(lambda a, b: mlp(a, b), args, (0,), hessians=True).name == "autograd"


# -- errors ------------------------------------------------------------------------------------------

def test_errors_are_one_line_and_name_the_fix():
    x = torch.randn(5, 3)
    for fn in (lambda: ig.hessian(lambda a: a * 2, x), lambda: ig.hvp(lambda a: a * 2, x, x),
               lambda: ig.hessian(lambda a: a * 2, x, backend="func")):
        with pytest.raises(ValueError, match=r"f must return one scalar per sample.*Reduce") as e:
            fn()
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"innergrad.hvp: v has shape \(5, 2\) but argument 0 has \(5, 3\)"):
        ig.hvp(lambda a: a.sum(-1), x, torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"innergrad.hvp: got 1 tangent\(s\) for argnums=\(0, 1\)"):
        ig.hvp(lambda a, b: a.sum(-1), (x, x), x, argnums=(0, 1))
    with pytest.raises(ValueError, match=r"backend 'closed_form' cannot evaluate this f.*value_grad_and_hessian"):
        ig.hessian(lambda a: a.sum(-1), x, backend="closed_form")
    if "fused" in BACKENDS:
        mlp = ig.MLP(3, (4,))
        with pytest.raises(ValueError, match="backend 'fused' cannot evaluate this f: it computes no Hessians"):
            ig.hessian(mlp, x, backend="fused")
    with pytest.raises(ValueError, match="argnums=3 is out of range"):
        ig.hessian(lambda a: a.sum(-1), x, argnums=3)


# -- optional cross-check with JAX ---------------------------------------------------------------------

def test_mlp_hessian_agrees_with_jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    mlp, (x,) = _mlp_case("softplus", (6, 5), sizes=(4,))
    Ws = [(lin.weight.detach().numpy(), lin.bias.detach().numpy()) for lin in mlp.layers]
    w_out = mlp.out.weight.detach().numpy()[0]

    def f(z):
        for W, b in Ws:
            z = jax.nn.softplus(W @ z + b)
        return w_out @ z

    want = jax.vmap(jax.hessian(f))(jnp.asarray(x.numpy()))
    got = ig.hessian(mlp, x).detach().numpy()
    assert abs(got - jax.device_get(want)).max() < 1e-10
