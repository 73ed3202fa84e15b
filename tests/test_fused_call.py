"""The fused single-call operator (`kernels/fused_call.py`): `value_and_grad` of an `ig.MLP` in one node.

It agrees with the autograd backend in float64 (values, input and parameter gradients, double
backward) for every activation the kernels take, every depth and argnums, through the C++ kernel
and through the Python loop; the models reach it through the primitive; bad direct calls are
errors, not crashes. (tests/test_compose.py runs it under compile, vmap, functional_call, MAML and
gradient penalties.)
"""

import contextlib

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import innergrad as ig
from innergrad.kernels import cpu as cpu_kernel
from innergrad.kernels import fused_call as fc
from innergrad.kernels.fused import mlp_params

DT = torch.float64
KERNEL_ACTS = sorted(cpu_kernel.ACTIVATIONS)


@pytest.fixture(autouse=True, params=["kernel", "loop"])
def impl(request):
    """Every test runs through the C++ kernel and through the Python loop, the operator used at any batch."""
    if request.param == "kernel" and cpu_kernel.ops() is None:
        pytest.skip(f"C++ CPU kernel unavailable: {cpu_kernel.unavailable_reason()}")
    with ig.settings(fused_call_min_rows=0, cpu_kernel=request.param == "kernel"):
        yield request.param


@contextlib.contextmanager
def _ran(forward=True, backward=True):
    before = dict(fc.OP_CALLS)
    yield
    assert (fc.OP_CALLS["forward"] > before["forward"]) == forward, (before, fc.OP_CALLS)
    assert (fc.OP_CALLS["backward"] > before["backward"]) == backward, (before, fc.OP_CALLS)


def _mlp(act, layers, sizes=(3, 2), out_bias=True, seed=0):
    torch.manual_seed(seed)
    f = ig.MLP(sizes, layers, act, out_bias=out_bias)
    with torch.no_grad():  # wider than the default: pre-activations reach the curved part of s
        for p in f.parameters():
            p.normal_(0.0, 0.6)
    return f.to(DT)


def _inputs(sizes, B=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, s, generator=g, dtype=DT, requires_grad=True) for s in sizes]


def _train(f, xs, argnums, backend):
    """Value, gradients and the gradients of a loss on both, to the inputs and F's parameters."""
    y, gs = ig.value_and_grad(f, *xs, argnums=argnums, backend=backend)
    loss = (y**2).sum() + sum((torch.sin(g) * (i + 1)).sum() for i, g in enumerate(gs))
    return [y, *gs, *torch.autograd.grad(loss, [*xs, *f.parameters()], allow_unused=True, materialize_grads=True)]


def _close(got, want, rtol=1e-9, atol=1e-11):
    assert len(got) == len(want)
    for i, (u, v) in enumerate(zip(got, want)):
        torch.testing.assert_close(u, v, rtol=rtol, atol=atol, msg=f"output {i}")


@pytest.mark.filterwarnings("ignore::innergrad.SecondOrderWarning")
@pytest.mark.parametrize("act", [*KERNEL_ACTS, "elu"])
@pytest.mark.parametrize("layers", [(6,), (7, 5), (5, 6, 4)], ids=lambda s: f"L{len(s)}")
@pytest.mark.parametrize("argnums", [(0,), (1,), (0, 1)], ids=str)
def test_matches_autograd(impl, act, layers, argnums):
    f = _mlp(act, layers)
    xs = _inputs((3, 2))
    # (elu: the C++ kernel does not take it, so under "kernel" the closed form runs instead.)
    runs = impl == "loop" or act in KERNEL_ACTS
    with _ran(runs, runs):
        got = _train(f, xs, argnums, "fused")
    _close(got, _train(f, xs, argnums, "autograd"))


@pytest.mark.parametrize("out_bias", [True, False])
def test_one_input_and_blocks_over_threads(out_bias):
    f = _mlp("tanh", (8, 8), sizes=(4,), out_bias=out_bias)
    xs = _inputs((4,), B=37)
    with ig.settings(threads=2, cpu_kernel_min_rows=2, cpu_min_rows_per_thread=2, cpu_block_elements=64), _ran():
        got = _train(f, xs, 0, "fused")
    _close(got, _train(f, xs, 0, "autograd"))


def test_gradcheck_and_gradgradcheck():
    """First derivatives of the operator's node by finite differences; second ones (the closed-form
    recomputation its backward becomes under create_graph) too."""
    f = _mlp("softplus", (5, 4))
    params = [p.detach().requires_grad_() for p in mlp_params(f)]
    z = _inputs((5,), B=4)[0]

    def fn(z, *ps):
        y, gz, *_ = fc._FusedCallFn.apply("softplus", z, *ps)
        return y, gz

    assert gradcheck(fn, (z, *params))
    assert gradgradcheck(fn, (z, *params))


def test_gradient_penalty_and_double_backward_match_autograd():
    f = _mlp("silu", (6, 6))
    xs = _inputs((3, 2))

    def penalty(backend):
        y, (gx, gh) = ig.value_and_grad(f, *xs, argnums=(0, 1), backend=backend)
        inner = (gx**2).sum() + (gh * y.unsqueeze(1)).sum()
        gps = torch.autograd.grad(inner, list(f.parameters()), create_graph=True)
        return torch.autograd.grad(sum((g**2).sum() for g in gps), [*xs, *f.parameters()])

    with _ran():  # the penalty's graph: the closed form's vjp; the outer backward: the backward operator
        got = penalty("fused")
    _close(got, penalty("autograd"))


def test_models_get_it_through_the_primitive():
    """HamiltonianNet, ConservativeField and ig.Gradient under "auto" run the fused operator."""
    torch.manual_seed(2)
    x, tgt = torch.randn(16, 4, dtype=DT), torch.randn(16, 4, dtype=DT)
    models = {
        "hnn": lambda b: ig.HamiltonianNet(4, (8, 8), backend=b),
        "field": lambda b: ig.ConservativeField(ig.MLP(4, (8, 8), "softplus"), backend=b),
        "gradient": lambda b: ig.Gradient(ig.MLP(4, (8,), "gelu"), backend=b),
    }
    for name, make in models.items():
        torch.manual_seed(3)
        a = make("auto").to(DT)
        b = make("autograd").to(DT)
        b.load_state_dict(a.state_dict())
        out = lambda m, name=name: m(x) if name == "hnn" else m(x)[1]  # noqa: E731
        with _ran():
            ((out(a) - tgt) ** 2).mean().backward()
        ((out(b) - tgt) ** 2).mean().backward()
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=f"{name}: {n}")


def test_inference_detached_mode_and_frozen_parameters():
    f = _mlp("tanh", (6, 6))
    xs = [x.detach() for x in _inputs((3, 2))]
    want = ig.value_and_grad(f, *xs, argnums=(0, 1), backend="autograd")
    with _ran(True, False), torch.no_grad():
        got = ig.value_and_grad(f, *xs, argnums=(0, 1), backend="fused")
    assert not got[0].requires_grad
    _close([got[0], *got[1]], [want[0], *want[1]])
    with _ran(False, False):  # detached mode: the closed form (the value keeps its graph)
        y, g = ig.value_and_grad(f, *xs, argnums=1, mode="detached", backend="fused")
    assert y.requires_grad and not g.requires_grad
    for p in f.parameters():
        p.requires_grad_(False)
    x = xs[0].clone().requires_grad_()
    with _ran():
        y, g = ig.value_and_grad(f, x, xs[1], argnums=0, backend="fused")
        (gx,) = torch.autograd.grad((g**2).sum() + y.sum(), x)
    y2, g2 = ig.value_and_grad(f, x, xs[1], argnums=0, backend="autograd")
    _close([gx], list(torch.autograd.grad((g2**2).sum() + y2.sum(), x)))


def test_declines_what_it_cannot_run():
    f = _mlp("tanh", (6,))
    x, h = (t.detach() for t in _inputs((3, 2)))
    assert fc.call_unsupported(f, (x, h)) is None
    assert "batches" in fc.call_unsupported(f, (x[0], h[0]))  # unbatched: closed form
    assert "float64" in fc.call_unsupported(f, (x.float(), h))
    assert "ig.MLP" in fc.call_unsupported(torch.nn.Linear(3, 1), (x,))
    with _ran(False, False):
        v, g = ig.value_and_grad(f, x[0], h[0], argnums=1, backend="fused")  # one unbatched sample
    assert v.shape == () and g.shape == (2,)


def test_batches_under_the_threshold_stay_on_the_closed_form():
    f = _mlp("tanh", (6,))
    xs = _inputs((3, 2), B=9)
    with ig.settings(fused_call_min_rows=10), _ran(False, False):
        _train(f, xs, 1, "fused")
    with ig.settings(fused_call_min_rows=9), _ran():
        _train(f, xs, 1, "fused")


def test_bad_direct_calls_are_errors_not_crashes():
    f = _mlp("tanh", (6, 5))
    ps = [p.detach() for p in mlp_params(f)]
    z = torch.randn(4, 5, dtype=DT)
    for bad_z, bad_ps, match in [
        (z[:, :4], ps, "W_1 must be"),
        (z.float(), ps, "every parameter"),
        (z[0], ps, "z must be"),
        (z, ps[:2], "params"),
        (z, [ps[0], ps[1], ps[2][:, :3], *ps[3:]], "W_2 must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            fc.mlp_value_and_grad(bad_z, bad_ps, "tanh", True)
    y, gz, S, Q = fc.mlp_value_and_grad(z, ps, "tanh", True)
    with pytest.raises(ValueError, match="rows"):
        fc.mlp_value_and_grad_backward(z, gz[:3], S, Q, ps, y, None, "tanh", True, True)
    with pytest.raises(ValueError, match="activation"):
        fc.mlp_value_and_grad(z, ps, "nope", True)
