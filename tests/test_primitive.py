"""The core primitive against closed forms, the autograd reference, gradcheck and its edge cases."""

import warnings

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import innergrad as ig
from innergrad.core.backends import BACKENDS

from .problems import DEVICES, DTYPES, PROBLEMS, TanhNet, ig_mlp, skip_unsupported, small_mlp, tol

BACKEND_NAMES = ["auto", *BACKENDS]


def _as_tuple(g):
    return g if isinstance(g, tuple) else (g,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_value_and_grad_matches_closed_form(problem, backend, dtype, device):
    p = PROBLEMS[problem](dtype, device)
    skip_unsupported(backend, p.f, p.args, p.argnums)
    value, g = ig.value_and_grad(p.f, *p.args, argnums=p.argnums, backend=backend)
    torch.testing.assert_close(value, p.value(p.args), **tol(dtype))
    for got, want in zip(_as_tuple(g), _as_tuple(p.grad(p.args))):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, **tol(dtype))


def _second_order_param_grads(f, args, argnums, backend):
    """d/dtheta of a loss on both the value and the gradient: exercises every second-order term."""
    params = [q for q in f.parameters()] if isinstance(f, nn.Module) else []
    value, g = ig.value_and_grad(f, *args, argnums=argnums, backend=backend)
    loss = (value**2).sum() + sum((gi**3).sum() for gi in _as_tuple(g))
    return torch.autograd.grad(loss, params + [a for a in args if a.requires_grad])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("make", [small_mlp, ig_mlp])
def test_backends_agree_with_autograd_reference_on_training_gradients(make, backend, dtype, device):
    p = make(dtype, device)
    skip_unsupported(backend, p.f, p.args, p.argnums)
    x, h = (a.clone().requires_grad_() for a in p.args)
    ref = _second_order_param_grads(p.f, (x, h), p.argnums, "autograd")
    got = _second_order_param_grads(p.f, (x, h), p.argnums, backend)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **tol(dtype))


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_gradcheck_and_gradgradcheck_through_inputs_and_parameters(backend):
    torch.manual_seed(0)
    mlp = ig.MLP((3, 2), hidden_layers=(5, 4), activation="softplus").double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    skip_unsupported(backend, mlp, (x, h), 1)
    if backend != "auto" and not BACKENDS[backend].double_backward:
        pytest.skip(f"{backend} declares no double backward")
    params = tuple(mlp.parameters())

    def fn(x, h, *ps):  # gradcheck perturbs ps in place, and they are the module's own parameters
        value, g = ig.value_and_grad(mlp, x, h, argnums=1, backend=backend)
        return value, g

    assert gradcheck(fn, (x, h, *params))
    assert gradgradcheck(fn, (x, h, *params))


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("name", ["quadratic", "softplus_sum", "oscillator"])
def test_gradcheck_closure_problems(name, backend):
    p = PROBLEMS[name](torch.float64, "cpu")
    skip_unsupported(backend, p.f, p.args, p.argnums)
    args = tuple(a.clone().requires_grad_() for a in p.args)

    def fn(*a):
        return ig.grad(p.f, *a, argnums=p.argnums, backend=backend)

    assert gradcheck(fn, args)
    assert gradgradcheck(fn, args)


# -- the places where plain autograd trips users ----------------------------------------------------

@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_argument_without_grad_and_caller_tensors_untouched(backend):
    p = ig_mlp(torch.float64, "cpu")
    x, h = p.args
    skip_unsupported(backend, p.f, p.args, 1)
    value, g = ig.value_and_grad(p.f, x, h, argnums=1, backend=backend)
    assert not x.requires_grad and not h.requires_grad and h.grad_fn is None and h.is_leaf
    torch.testing.assert_close(g, p.grad(p.args))
    assert g.requires_grad  # exact mode: differentiable w.r.t. f's parameters


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_non_leaf_argument_gives_partial_derivative_and_reaches_upstream(backend):
    p = ig_mlp(torch.float64, "cpu")
    x0, h0 = p.args
    s = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    h = h0 * s  # non-leaf, in a graph
    x = x0 + h.sum(-1, keepdim=True)  # x depends on h too: the gradient must still be the partial dF/dh
    skip_unsupported(backend, p.f, (x, h), 1)
    g = ig.grad(p.f, x, h, argnums=1, backend=backend)
    torch.testing.assert_close(g, p.grad((x.detach(), h.detach())))
    (ds,) = torch.autograd.grad(g.sum(), s)  # the graph reaches the upstream scale
    eps = 1e-6
    gp = ig.grad(p.f, x0 + (h0 * (1.5 + eps)).sum(-1, keepdim=True), h0 * (1.5 + eps), argnums=1)
    gm = ig.grad(p.f, x0 + (h0 * (1.5 - eps)).sum(-1, keepdim=True), h0 * (1.5 - eps), argnums=1)
    torch.testing.assert_close(ds, ((gp - gm).sum() / (2 * eps)).detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("ctx", ["no_grad", "inference_mode", "eval"])
def test_gradient_computed_without_grad_mode(backend, ctx):
    p = ig_mlp(torch.float64, "cpu")
    skip_unsupported(backend, p.f, p.args, 1)
    want = p.grad(p.args)
    if ctx == "eval":
        p.f.eval()
        value, g = ig.value_and_grad(p.f, *p.args, argnums=1, backend=backend)
        assert g.requires_grad
    else:
        cm = torch.no_grad() if ctx == "no_grad" else torch.inference_mode()
        with cm:
            x, h = (a.clone() for a in p.args)  # inference tensors under inference_mode
            value, g = ig.value_and_grad(p.f, x, h, argnums=1, backend=backend)
        assert not g.requires_grad and not value.requires_grad
    torch.testing.assert_close(g.detach(), want)
    torch.testing.assert_close(value.detach(), p.value(p.args))


def test_detached_mode_gives_parameters_only_first_order_terms():
    """Hand computation: f = w2 . tanh(W1 z + b1) + c; loss = sum(f) + sum(r * g)."""
    p = small_mlp(torch.float64, "cpu")
    net: TanhNet = p.f
    x, h = p.args
    r = torch.randn_like(h)
    value, g = ig.value_and_grad(net, x, h, argnums=1, mode="detached")
    assert value.requires_grad and not g.requires_grad
    loss = value.sum() + (r * g).sum()
    gW1, gb1, gw2, gc = torch.autograd.grad(loss, [net.W1, net.b1, net.w2, net.c])
    z = torch.cat([x, h], -1)
    s = torch.tanh(z @ net.W1.T + net.b1)
    with torch.no_grad():
        torch.testing.assert_close(gw2, s.sum(0))
        torch.testing.assert_close(gb1, (net.w2 * (1 - s**2)).sum(0))
        torch.testing.assert_close(gW1, (net.w2 * (1 - s**2)).T @ z)
        torch.testing.assert_close(gc, torch.tensor(float(len(x)), dtype=torch.float64))
    # Exact mode adds the second-order terms from r . g, so the weight gradients differ.
    value, g = ig.value_and_grad(net, x, h, argnums=1, mode="exact")
    gW1_exact, gb1_exact, gw2_exact, gc_exact = torch.autograd.grad(value.sum() + (r * g).sum(),
                                                                    [net.W1, net.b1, net.w2, net.c])
    assert not torch.allclose(gw2_exact, gw2) and not torch.allclose(gW1_exact, gW1)
    torch.testing.assert_close(gc_exact, gc)  # the constant never enters the gradient


def test_unused_input_gives_zeros_not_none():
    x = torch.randn(3, 2, dtype=torch.float64)
    y = torch.randn(3, 4, dtype=torch.float64)
    for backend in ("autograd", "func"):
        gx, gy = ig.grad(lambda a, b: (a**2).sum(-1), x, y, argnums=(0, 1), backend=backend)
        assert torch.equal(gy, torch.zeros_like(y))
        torch.testing.assert_close(gx, 2 * x)


def test_unbatched_scalar_function():
    x = torch.randn(4, dtype=torch.float64)
    for backend in ("autograd", "func"):
        v, g = ig.value_and_grad(lambda z: (z**3).sum(), x, backend=backend)
        assert v.dim() == 0
        torch.testing.assert_close(g, 3 * x**2)


def test_gradient_module_wraps_and_exposes_parameters():
    p = ig_mlp(torch.float64, "cpu")
    G = ig.Gradient(p.f, argnums=1)
    value, g = G(*p.args)
    torch.testing.assert_close(g, p.grad(p.args))
    assert set(map(id, G.parameters())) == set(map(id, p.f.parameters()))
    assert "argnums=1" in repr(G)


# -- batch coupling ----------------------------------------------------------------------------------

def test_batchnorm_in_training_mode_is_refused_with_a_fix():
    f = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(8, 3)
    with pytest.raises(ig.CouplingError, match=r"BatchNorm1d using batch statistics.*eval\(\)"):
        ig.grad(f, x)
    f.eval()  # running statistics: samples no longer interact
    g = ig.grad(f, x, backend="autograd")
    g_func = ig.grad(f, x, backend="func")
    torch.testing.assert_close(g, g_func)


def test_randomized_coupling_check_catches_batch_mixing():
    def mixing(x):  # centres by the batch mean: every sample feeds every output
        return ((x - x.mean(0)) ** 2).sum(-1)

    x = torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(ig.CouplingError, match="mixes samples.*backend='func'"):
        ig.grad(mixing, x, backend="autograd", debug=True)
    with pytest.warns(UserWarning, match="falling back .* 'func'"):
        g = ig.grad(mixing, x, debug=True)
    torch.testing.assert_close(g, ig.grad(mixing, x, backend="func"))
    # Independent samples pass the check silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ig.grad(lambda z: (z**2).sum(-1), x, debug=True)


def test_debug_flag_from_environment(monkeypatch):
    monkeypatch.setenv("INNERGRAD_DEBUG", "1")
    with pytest.raises(ig.CouplingError):
        ig.grad(lambda z: (z - z.mean(0)).pow(2).sum(-1), torch.randn(5, 2), backend="autograd")


# -- second-order warnings ---------------------------------------------------------------------------

def test_relu_warns_once_when_trained_through_the_gradient():
    f = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    x = torch.randn(4, 3)
    with pytest.warns(ig.SecondOrderWarning, match="ReLU.*softplus, SiLU, tanh or GELU"):
        ig.grad(f, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ig.grad(f, x)  # once only
        ig.grad(f, x, mode="detached")  # no second-order training: nothing to warn about
    mlp = ig.MLP(3, (8,), activation="relu")
    with pytest.warns(ig.SecondOrderWarning, match="relu"):
        ig.grad(mlp, x)


def test_no_warning_under_no_grad():
    f = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            ig.grad(f, torch.randn(4, 3))


# -- errors ------------------------------------------------------------------------------------------

def test_error_messages():
    f = ig.MLP((3, 2), (4,))
    x, h = torch.randn(5, 3), torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"unknown backend 'nope'; valid backends are \['auto', .*'autograd'"):
        ig.grad(f, x, h, argnums=1, backend="nope")
    with pytest.raises(ValueError, match=r"argnums=2 is out of range for 2 positional argument\(s\)"):
        ig.grad(f, x, h, argnums=2)
    with pytest.raises(ValueError, match="argnums must be an int or a non-empty tuple"):
        ig.grad(f, x, h, argnums=())
    with pytest.raises(TypeError, match=r"argument 1 has dtype torch.int64.*\.float\(\)"):
        ig.grad(f, x, torch.ones(5, 2, dtype=torch.long), argnums=1)
    with pytest.raises(TypeError, match="argument 1 has dtype torch.bool"):
        ig.grad(f, x, torch.ones(5, 2, dtype=torch.bool), argnums=1)
    with pytest.raises(TypeError, match="argument 0 must be a torch.Tensor"):
        ig.grad(lambda a: a, [1.0, 2.0])
    with pytest.raises(ValueError, match="mode must be one of"):
        ig.grad(f, x, h, argnums=1, mode="approx")
    with pytest.raises(TypeError, match="f must be callable"):
        ig.grad(3, x)
    for backend in ("autograd", "func"):
        with pytest.raises(ValueError, match=r"innergrad.grad: f must return one scalar per sample.*got shape \(5, 3\)|"
                                             r"innergrad.grad: f must return one scalar per sample.*\('B', 3\)"):
            ig.grad(lambda a: a * 2, x, backend=backend)
    with pytest.raises(ValueError, match=r"f returned 5 values .* argument 1 has shape \(4, 2\)"):
        ig.grad(lambda a, b: a.sum(-1) + b.sum(), x, torch.randn(4, 2), argnums=1, backend="autograd")
    with pytest.raises(ValueError, match="backend 'closed_form' cannot evaluate this f.*value_and_input_grad"):
        ig.grad(lambda a: a.sum(-1), x, backend="closed_form")
    with pytest.raises(ValueError, match="unknown backend"):
        ig.Gradient(f, backend="jax")


def test_backend_registry():
    assert ig.backends()[0] == "auto"
    assert {"autograd", "func", "closed_form"} <= set(ig.BACKENDS)
    with pytest.raises(ValueError, match="already registered"):
        ig.register_backend(ig.BACKENDS["autograd"])

    class Doubling(ig.Backend):
        name = "test_doubling"

        def value_and_grad(self, f, args, argnums, create_graph, keep_value_graph):
            v, g = ig.BACKENDS["autograd"].value_and_grad(f, args, argnums, create_graph, keep_value_graph)
            return v, tuple(2 * t for t in g)

    ig.register_backend(Doubling())
    try:
        x = torch.randn(3, 2)
        torch.testing.assert_close(ig.grad(lambda a: (a**2).sum(-1), x, backend="test_doubling"), 4 * x)
    finally:
        del ig.BACKENDS["test_doubling"]


# -- forward mode, Hessian-vector products, divergence ------------------------------------------------

def test_jvp_matches_closed_form():
    p = PROBLEMS["quadratic"](torch.float64, "cpu")
    x = p.args[0]
    v = torch.randn_like(x)
    out, t = ig.jvp(p.f, (x,), (v,))
    torch.testing.assert_close(out, p.f(x))
    torch.testing.assert_close(t, (p.grad(p.args) * v).sum(-1))
    with pytest.raises(ValueError, match="tangent 0 has shape"):
        ig.jvp(p.f, (x,), (v[:2],))
    with pytest.raises(ValueError, match="got 1 primals but 2 tangents"):
        ig.jvp(p.f, (x,), (v, v))


@pytest.mark.parametrize("method", ["auto", "forward", "reverse"])
@pytest.mark.parametrize("name", ["quadratic", "softplus_sum"])
def test_hvp_matches_closed_form(name, method):
    p = PROBLEMS[name](torch.float64, "cpu")
    v = torch.randn_like(p.args[0])
    torch.testing.assert_close(ig.hvp(p.f, p.args[0], v, method=method), p.hvp(p.args, v))


def test_hvp_of_mlp_matches_double_backward_and_trains():
    torch.manual_seed(0)
    mlp = ig.MLP(3, (8,), "tanh").double()
    x, v = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    fwd = ig.hvp(mlp, x, v, method="forward")
    rev = ig.hvp(mlp, x, v, method="reverse")
    torch.testing.assert_close(fwd, rev)
    assert fwd.requires_grad  # a loss on H v reaches the parameters
    with torch.no_grad():
        assert not ig.hvp(mlp, x, v).requires_grad
    with pytest.raises(ValueError, match="method must be"):
        ig.hvp(mlp, x, v, method="bogus")


def test_divergence_methods():
    torch.manual_seed(0)
    A = torch.randn(3, 3, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)

    def linear(z):
        return z @ A.T

    exact = ig.divergence(linear, x)
    torch.testing.assert_close(exact, torch.full((5,), torch.trace(A).item(), dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    est = ig.divergence(linear, x, method="hutchinson", num_samples=4000, generator=g)
    assert (est - exact).abs().max() < 0.15 * A.abs().sum()  # unbiased, statistical tolerance
    # For an elementwise field, Rademacher probes and the ones-tangent shortcut are both exact.
    ew = lambda z: torch.tanh(z) * 2  # noqa: E731
    want = (2 * (1 - torch.tanh(x) ** 2)).sum(-1)
    torch.testing.assert_close(ig.divergence(ew, x), want)
    torch.testing.assert_close(ig.divergence(ew, x, method="hutchinson", num_samples=3), want)
    torch.testing.assert_close(ig.divergence(ew, x, method="elementwise"), want)
    # The shortcut is wrong for a coupled field, which is why it is opt-in.
    assert not torch.allclose(ig.divergence(linear, x, method="elementwise"), exact)
    with pytest.raises(ValueError, match="method must be"):
        ig.divergence(linear, x, method="trace")
    with pytest.raises(ValueError, match="same shape"):
        ig.divergence(lambda z: z.sum(-1), x)
    with pytest.raises(ValueError, match="must be batched"):
        ig.divergence(linear, x[0])


def test_divergence_is_differentiable_for_training():
    torch.manual_seed(0)
    lin = nn.Linear(3, 3).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    div = ig.divergence(lambda z: torch.tanh(lin(z)), x)
    (gw,) = torch.autograd.grad(div.sum(), lin.weight)
    assert gw.abs().sum() > 0
    assert gradcheck(lambda z: ig.divergence(lambda q: torch.tanh(lin(q)), z),
                     (x.clone().requires_grad_(),))
