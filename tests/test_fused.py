"""The "fused" whole-sequence backend: same loss and gradients as autograd, gradcheck, masks, modes.

Every test runs twice on CPU: through the C++ kernel and through the Python loop.
"""

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

import innergrad as ig
from innergrad.core.backends import AUTO_ORDER, BACKENDS, choose_backend
from innergrad.kernels import cpu as cpu_kernel
from innergrad.kernels import fused as fz
from innergrad.kernels.fused import (
    SECOND_DERIVATIVES,
    FusedSequence,
    mlp_params,
    run_fused_sequence,
    spec_of,
)

DT = torch.float64


@pytest.fixture(autouse=True, params=["kernel", "loop"])
def cpu_impl(request):
    """Every test runs on both CPU implementations: the C++ kernel and the Python loop."""
    if request.param == "kernel":
        if cpu_kernel.ops() is None:
            pytest.skip(f"C++ CPU kernel unavailable: {cpu_kernel.unavailable_reason()}")
        yield request.param
    else:
        with cpu_kernel.python_loop():
            yield request.param


def _pair(act="softplus", layers=(7, 5), mode="exact", dx=3, dh=4, seed=0, **kw):
    """A fused-backend GradRNN and an autograd-backend copy with the same weights."""
    torch.manual_seed(seed)
    a = ig.GradRNN(dx, dh, layers, act, mode=mode, backend="fused", **kw).to(DT)
    b = ig.GradRNN(dx, dh, layers, act, mode=mode, backend="autograd", **kw).to(DT)
    b.load_state_dict(a.state_dict())
    return a, b


def _train_grads(model, x, h0, target, mask=None, hidden_weight=None):
    """Loss on y (and on every h when `hidden_weight` is given) and its gradients to all inputs."""
    x = x.clone().requires_grad_()
    h0 = h0.clone().requires_grad_()
    y, h, hs = model(x, h0, mask=mask, return_hidden=True)
    loss = ((y - target) ** 2).mean() + 0.3 * (h**2).sum()
    if hidden_weight is not None and hs.requires_grad:
        loss = loss + (hs * hidden_weight).sum()
    wrt = [x, h0, *model.parameters()]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True, materialize_grads=True)
    return [loss.detach(), y.detach(), hs.detach(), *grads]


def _assert_same(a, b, tol=1e-10):
    for i, (u, v) in enumerate(zip(a, b)):
        scale = v.abs().max().item() + 1e-30
        err = (u - v).abs().max().item() / scale
        assert err < tol, f"output {i}: relative difference {err:.2e}"


@pytest.mark.filterwarnings("ignore::innergrad.SecondOrderWarning")  # relu is compared too
@pytest.mark.parametrize("act", sorted(SECOND_DERIVATIVES))
@pytest.mark.parametrize("layers", [(6,), (7, 5), (5, 6, 4)])
def test_matches_autograd_for_every_activation_and_depth(act, layers):
    fused, ref = _pair(act, layers)
    T, B = 5, 4
    x, h0 = torch.randn(T, B, 3, dtype=DT), torch.randn(B, 4, dtype=DT)
    target, hw = torch.randn(T, B, dtype=DT), torch.randn(T, B, 4, dtype=DT)
    got = _train_grads(fused, x, h0, target, hidden_weight=hw)
    _assert_same(got, _train_grads(ref, x, h0, target, hidden_weight=hw))


@pytest.mark.parametrize("mode", ["exact", "detached"])
@pytest.mark.parametrize("act", ["softplus", "gelu"])  # kept-output and kept-pre-activation forms
def test_masks_and_modes_match_autograd(mode, act):
    fused, ref = _pair(act, mode=mode)
    T, B = 6, 5
    x, h0 = torch.randn(T, B, 3, dtype=DT), torch.randn(B, 4, dtype=DT)
    target, hw = torch.randn(T, B, dtype=DT), torch.randn(T, B, 4, dtype=DT)
    mask = torch.rand(T, B) > 0.35
    mask[:2, 0] = False  # a sample that starts late: holds h0 (and its graph) for two steps
    mask[:, 1] = False  # a sample with no valid step at all
    got = _train_grads(fused, x, h0, target, mask, hw)
    want = _train_grads(ref, x, h0, target, mask, hw)
    _assert_same(got, want)


def test_lengths_batch_first_and_learned_h0():
    fused, ref = _pair(batch_first=True, learn_h0=True)
    with torch.no_grad():
        fused.h0.normal_()
        ref.h0.copy_(fused.h0)
    x = torch.randn(4, 6, 3, dtype=DT)  # (B, T, D)
    lengths = torch.tensor([6, 3, 0, 1])
    outs = []
    for m in (fused, ref):
        y, h, hs = m(x, lengths=lengths, return_hidden=True)
        loss = (y**2).sum() + h.sum()
        outs.append([y, h, hs, *torch.autograd.grad(loss, list(m.parameters()))])
    _assert_same(outs[0], outs[1])


def test_gradcheck_of_the_function_wrt_x_h0_and_every_parameter():
    torch.manual_seed(3)
    F = ig.MLP((2, 3), (4, 3), "softplus").to(DT)
    spec = spec_of(F, 2)
    params = [p.detach().clone().requires_grad_() for p in mlp_params(F)]
    x = torch.randn(3, 2, 2, dtype=DT, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=DT, requires_grad=True)
    valid = torch.tensor([[True, True], [False, True], [True, False]])
    for v in (None, valid):
        assert gradcheck(lambda x, h0, *ps, v=v: FusedSequence.apply(spec, v, x, h0, *ps), (x, h0, *params))


def test_gradcheck_tanh_one_layer_no_out_bias():
    torch.manual_seed(4)
    F = ig.MLP((2, 2), (5,), "tanh", out_bias=False).to(DT)
    spec = spec_of(F, 2)
    params = [p.detach().clone().requires_grad_() for p in mlp_params(F)]
    x = torch.randn(4, 3, 2, dtype=DT, requires_grad=True)
    h0 = torch.randn(3, 2, dtype=DT, requires_grad=True)
    assert gradcheck(lambda x, h0, *ps: FusedSequence.apply(spec, None, x, h0, *ps), (x, h0, *params))


def test_double_backward_matches_autograd(cpu_impl):
    """A graph of the fused backward (create_graph=True) goes through the closed form and gives the
    autograd backend's second derivatives, while the first-order backward stays the fused one."""
    out = []
    for m in _pair():
        x = torch.randn(3, 2, 3, dtype=DT, generator=torch.Generator().manual_seed(1), requires_grad=True)
        mask = torch.tensor([[1, 1], [1, 0], [0, 1]], dtype=torch.bool)
        y, _ = m(x, mask=mask)
        grads = torch.autograd.grad((y**2).sum(), [x, *m.parameters()], create_graph=True)
        penalty = sum((g**2).sum() for g in grads)
        out.append([*grads, *torch.autograd.grad(penalty, [x, *m.parameters()])])
    _assert_same(out[0], out[1])
    assert BACKENDS["fused"].double_backward


def test_auto_picks_fused_for_an_mlp_and_falls_back_otherwise():
    assert "fused" in AUTO_ORDER and AUTO_ORDER.index("fused") < AUTO_ORDER.index("closed_form")
    x, h = torch.randn(4, 3), torch.randn(4, 2)
    assert choose_backend(ig.MLP((3, 2), (5,)), (x, h), (1,)).name == "fused"

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 1)

        def forward(self, x, h):
            return self.lin(torch.cat([x, h], -1)).squeeze(-1)

    assert choose_backend(Custom(), (x, h), (1,)).name != "fused"
    rnn = ig.GradRNN(3, 2, F=Custom())
    y, h_last = rnn(torch.randn(5, 4, 3))  # runs step by step
    assert y.shape == (5, 4) and h_last.shape == (4, 2)


def test_small_single_calls_defer_to_the_closed_form():
    """Under `fused_call_min_rows` rows a single call runs the closed form (tests/test_fused_call.py
    covers the fused single-call operator)."""
    from innergrad.kernels import fused_call

    torch.manual_seed(5)
    F = ig.MLP((3, 2), (6, 6)).to(DT)
    x, h = torch.randn(4, 3, dtype=DT), torch.randn(4, 2, dtype=DT)
    before = dict(fused_call.OP_CALLS)
    with ig.settings(fused_call_min_rows=5):
        v1, g1 = ig.value_and_grad(F, x, h, argnums=1, backend="fused")
    assert fused_call.OP_CALLS == before
    v2, g2 = ig.value_and_grad(F, x, h, argnums=1, backend="autograd")
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(g1, g2)


def test_inference_and_frozen_parameters(monkeypatch):
    fused, ref = _pair()
    x = torch.randn(4, 3, 3, dtype=DT)
    calls = []
    real = fz.sequence_forward
    monkeypatch.setattr(fz, "sequence_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.inference_mode():
        y1, h1 = fused(x)
        x_inf = torch.randn(4, 3, 3, dtype=DT)
    assert calls  # the fused path ran under inference_mode (not the step-by-step fallback)
    y3, _ = fused(x_inf)  # an inference tensor outside inference_mode, with parameters needing grad
    y3.sum().backward()
    with torch.no_grad():
        y2, h2 = ref(x)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(h1, h2)
    for m in (fused, ref):
        m.requires_grad_(False)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    gs = [torch.autograd.grad(m(xi)[0].sum(), xi)[0] for m, xi in zip((fused, ref), xs)]
    torch.testing.assert_close(gs[0], gs[1])


def test_run_sequence_declines_what_it_cannot_run():
    b = BACKENDS["fused"]
    F = ig.MLP((3, 2), (5,))
    x, h0 = torch.randn(4, 2, 3), torch.zeros(2, 2)
    assert b.run_sequence(F, x.double(), h0, None, "exact") is None  # mixed dtypes
    assert b.run_sequence(ig.MLP((5,), (5,)), torch.randn(4, 2, 5), h0, None, "exact") is None
    y, hs = b.run_sequence(F, x, h0, None, "exact")
    assert y.shape == (4, 2) and hs.shape == (4, 2, 2)


def test_float32_training_step_agrees_with_autograd():
    torch.manual_seed(6)
    a = ig.GradRNN(8, 32, (64, 64), backend="fused")
    b = ig.GradRNN(8, 32, (64, 64), backend="autograd")
    b.load_state_dict(a.state_dict())
    x, target = torch.randn(16, 32, 8), torch.randn(16, 32)
    grads = []
    for m in (a, b):
        loss = ((m(x)[0] - target) ** 2).mean()
        grads.append(torch.autograd.grad(loss, list(m.parameters())))
    for u, v in zip(*grads):
        assert (u - v).abs().max() <= 1e-4 * v.abs().max()


def test_direct_call_matches_module():
    fused, _ = _pair()
    x, h0 = torch.randn(3, 2, 3, dtype=DT), torch.randn(2, 4, dtype=DT)
    y, hs = run_fused_sequence(fused.F, x, h0, None, "exact")
    y2, _, hs2 = fused(x, h0, return_hidden=True)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(hs, hs2)


def test_only_the_last_state_in_the_loss():
    """y unused: its incoming gradient is None (not a tensor of zeros) and must be handled."""
    fused, ref = _pair()
    x = torch.randn(4, 3, 3, dtype=DT)
    grads = [torch.autograd.grad(m(x)[1].pow(2).sum(), list(m.parameters()), allow_unused=True,
                                 materialize_grads=True) for m in (fused, ref)]
    _assert_same(grads[0], grads[1])


def test_batch_split_across_cpu_threads_matches(monkeypatch):
    """Blocks of the batch on worker threads (the CPU default for large batches) give the same result."""
    threads = torch.get_num_threads()
    with ig.settings(threads=3, cpu_min_rows_per_thread=2, cpu_kernel_min_rows=2):
        fused, ref = _pair()
        T, B = 5, 7
        x, h0 = torch.randn(T, B, 3, dtype=DT), torch.randn(B, 4, dtype=DT)
        target, hw = torch.randn(T, B, dtype=DT), torch.randn(T, B, 4, dtype=DT)
        mask = torch.rand(T, B) > 0.3
        got = _train_grads(fused, x, h0, target, mask, hw)
        assert torch.get_num_threads() == 3  # the workers' single-thread setting does not leak
        with torch.inference_mode():
            y_inf = fused(x, h0, mask=mask)[0]
    assert torch.get_num_threads() == threads  # the block restores the thread count
    _assert_same(got, _train_grads(ref, x, h0, target, mask, hw))
    torch.testing.assert_close(y_inf, got[1])


def test_workspace_never_hands_out_a_buffer_in_use(cpu_impl):
    ws = fz.Workspace(max_bytes=64 << 20)
    like = torch.empty(0)
    shape = (4, 256, 512)  # 2 MiB: above the size the workspace keeps
    a = ws.empty(shape, like)
    b = ws.empty(shape, like)
    assert a.data_ptr() != b.data_ptr()  # `a` is alive: `b` must not share it
    view_of_b = b[1:]
    ptr_b = b.data_ptr()
    del a, b
    c = ws.empty(shape, like)  # `a`'s buffer is free again; `b`'s is still held by a view
    assert c.data_ptr() != ptr_b
    del view_of_b
    d = ws.empty(shape, like)
    assert d.data_ptr() == ptr_b  # now reused
    small = ws.empty((3, 4), like)
    assert small.shape == (3, 4) and len(ws._bufs) == 2  # small ones are not kept
    huge = ws.empty((2, 64 << 20), like.new_empty(0, dtype=torch.uint8))  # 128 MiB > the 64 MiB cap
    assert huge.numel() == 128 << 20 and len(ws._bufs) == 2  # ... nor ones over the cap
    del huge
    ws.clear()
    assert ws._bufs == []


def test_interleaved_graphs_keep_their_own_saved_activations(cpu_impl):
    """Two graphs alive at once, backward in the other order: each must see its own saved buffers."""
    torch.manual_seed(9)
    a = ig.GradRNN(4, 8, (64, 64), backend="fused")
    b = ig.GradRNN(4, 8, (64, 64), backend="autograd")
    b.load_state_dict(a.state_dict())
    xs = [torch.randn(40, 64, 4) for _ in range(2)]  # saved activations of 640 KiB-1 MiB per layer
    fz.WORKSPACE.MIN_BYTES, old = 0, fz.WORKSPACE.MIN_BYTES  # make every saved buffer a workspace one
    try:
        losses = [(a(x)[0] ** 2).mean() for x in xs]
        got = [torch.autograd.grad(loss, list(a.parameters())) for loss in reversed(losses)][::-1]
        again = torch.autograd.grad((a(xs[0])[0] ** 2).mean(), list(a.parameters()))  # after reuse
    finally:
        fz.WORKSPACE.MIN_BYTES = old
    for x, g in zip(xs, got):
        ref = torch.autograd.grad((b(x)[0] ** 2).mean(), list(b.parameters()))
        for u, v in zip(g, ref):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-6)
    for u, v in zip(again, got[0]):
        torch.testing.assert_close(u, v)


def test_torch_compile_of_a_model_around_the_fused_op(cpu_impl):
    """torch.compile of a user's model traces the fused operators (no graph break) and agrees with eager."""
    torch._dynamo.reset()
    torch.manual_seed(10)
    m = ig.GradRNN(4, 8, (16, 16), backend="fused")
    x = torch.randn(5, 3, 4)
    want = m(x)[0]
    want_g = torch.autograd.grad(want.pow(2).sum(), list(m.parameters()))
    got = torch.compile(m)(x)[0]
    got_g = torch.autograd.grad(got.pow(2).sum(), list(m.parameters()))
    torch.testing.assert_close(got, want)
    for u, v in zip(got_g, want_g):
        torch.testing.assert_close(u, v)
