"""The gradient-RNN: a hand-unrolled reference, gradcheck through time, masks, modes and contexts."""

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import innergrad as ig
from innergrad.core.backends import BACKENDS, choose_backend

from .problems import DEVICES, DTYPES, tol

STEP_BACKENDS = ["auto", "closed_form", "autograd", "func"]


def _rnn(dtype=torch.float64, device="cpu", backend="auto", mode="exact", layers=(6,), act="tanh", seed=0, **kw):
    torch.manual_seed(seed)
    return ig.GradRNN(3, 2, hidden_layers=layers, activation=act, mode=mode, backend=backend, **kw).to(
        dtype=dtype, device=device
    )


def test_two_step_reference_with_hand_derived_gradients():
    """F = w2 . tanh(W1 [x; h] + b1) + c; L = sum_b (y_1 + y_2), h_0 = 0, every term written out."""
    rnn = _rnn()
    torch.manual_seed(1)
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    y, h2 = rnn(x)
    F = rnn.F
    W1, b1, w2, c = F.layers[0].weight, F.layers[0].bias, F.out.weight[0], F.out.bias[0]
    gW1, gb1, gw2, gc = torch.autograd.grad(y.sum(), [F.layers[0].weight, F.layers[0].bias, F.out.weight, F.out.bias])
    with torch.no_grad():
        dx = 3
        W1h = W1[:, dx:]
        h0 = torch.zeros(4, 2, dtype=torch.float64)
        z0 = torch.cat([x[0], h0], -1)
        s0 = torch.tanh(z0 @ W1.T + b1)
        d0 = 1 - s0**2
        v = w2 * d0  # dF/da at step 1
        h1 = v @ W1h
        z1 = torch.cat([x[1], h1], -1)
        s1 = torch.tanh(z1 @ W1.T + b1)
        d1 = 1 - s1**2
        u = (w2 * d1) @ W1h  # dy_2/dh_1 (= h_2)
        torch.testing.assert_close(y[0], s0 @ w2 + c)
        torch.testing.assert_close(y[1], s1 @ w2 + c)
        torch.testing.assert_close(h2, u)
        # Through h_1 = W1h^T (w2 * d0): dy_2/da_0 = (u W1h^T) * w2 * (-2 s0 d0).
        r = (u @ W1h.T) * w2 * (-2 * s0 * d0)
        want_w2 = s0.sum(0) + s1.sum(0) + (d0 * (u @ W1h.T)).sum(0)
        want_b1 = v.sum(0) + (w2 * d1).sum(0) + r.sum(0)
        want_W1 = v.T @ z0 + (w2 * d1).T @ z1 + r.T @ z0
        want_W1[:, dx:] += v.T @ u  # h_1 depends on W1h directly
        torch.testing.assert_close(gw2[0], want_w2)
        torch.testing.assert_close(gb1, want_b1)
        torch.testing.assert_close(gW1, want_W1)
        torch.testing.assert_close(gc[0], torch.tensor(8.0, dtype=torch.float64))


@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_gradcheck_through_a_short_sequence(backend):
    rnn = _rnn(backend=backend, layers=(4, 3), act="softplus")
    torch.manual_seed(2)
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    params = tuple(rnn.parameters())

    def fn(x, h0, *ps):
        y, h = rnn(x, h0=h0)
        return y, h

    assert gradcheck(fn, (x, h0, *params))
    # "auto" may pick a fused whole-sequence backend, which trains (one backward) but declares no
    # double backward; gradgradcheck applies to the backends that declare it.
    chosen = choose_backend(rnn.F, (x[0], h0), (1,)) if backend == "auto" else BACKENDS[backend]
    if chosen.double_backward:
        assert gradgradcheck(fn, (x, h0, *params))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_backends_agree_on_outputs_and_training_gradients(backend, dtype, device):
    ref = _rnn(dtype, device, "autograd", layers=(8, 8), act="softplus")
    rnn = _rnn(dtype, device, backend, layers=(8, 8), act="softplus")
    x = torch.randn(5, 4, 3, dtype=dtype, device=device)
    target = torch.randn(5, 4, dtype=dtype, device=device)
    out = []
    for m in (ref, rnn):
        y, h, hs = m(x, return_hidden=True)
        grads = torch.autograd.grad(((y - target) ** 2).mean(), list(m.parameters()))
        out.append((y, h, hs, grads))
    for a, b in zip(out[0][:3], out[1][:3]):
        torch.testing.assert_close(a, b, **tol(dtype))
    for a, b in zip(out[0][3], out[1][3]):
        torch.testing.assert_close(a, b, **tol(dtype))


def test_shapes_batch_first_and_hidden_sequence():
    rnn = _rnn(batch_first=True)
    x = torch.randn(4, 5, 3, dtype=torch.float64)  # (B, T, D)
    y, h, hs = rnn(x, return_hidden=True)
    assert y.shape == (4, 5) and h.shape == (4, 2) and hs.shape == (4, 5, 2)
    torch.testing.assert_close(hs[:, -1], h)
    y_tm, h_tm = _rnn()(x.transpose(0, 1))
    torch.testing.assert_close(y_tm.T, y)
    torch.testing.assert_close(h_tm, h)


def test_cell_is_one_step_of_the_sequence():
    rnn = _rnn()
    x = torch.randn(3, 4, 3, dtype=torch.float64)
    y, h, hs = rnn(x, return_hidden=True)
    cell = rnn.cell
    h_t = torch.zeros(4, 2, dtype=torch.float64)
    for t in range(3):
        y_t, h_t = cell(x[t], h_t)
        torch.testing.assert_close(y_t, y[t])
        torch.testing.assert_close(h_t, hs[t])


def test_lengths_and_mask_stop_the_sequence():
    rnn = _rnn()
    torch.manual_seed(3)
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 0])
    y, h, hs = rnn(x, lengths=lengths, return_hidden=True)
    for b, n in enumerate(lengths.tolist()):
        if n:
            y_b, h_b = rnn(x[:n, b : b + 1])
            torch.testing.assert_close(y[:n, b], y_b[:, 0])
            torch.testing.assert_close(h[b], h_b[0])
        else:
            torch.testing.assert_close(h[b], torch.zeros(2, dtype=torch.float64))
        assert torch.all(y[n:, b] == 0)
    # Steps past the end get no gradient: their inputs cannot change the loss.
    (gx,) = torch.autograd.grad(y.sum() + h.sum(), x)
    assert torch.all(gx[2:, 1] == 0) and torch.all(gx[:, 2] == 0) and gx[:2, 1].abs().sum() > 0
    mask = torch.arange(5).unsqueeze(1) < lengths.unsqueeze(0)
    y_m, h_m = rnn(x, mask=mask)
    torch.testing.assert_close(y_m, y)
    torch.testing.assert_close(h_m, h)


def test_mask_errors():
    rnn = _rnn()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"lengths must be integers in \[0, T=4\]"):
        rnn(x, lengths=torch.tensor([5, 1]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        rnn(x, lengths=torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="give lengths or mask, not both"):
        rnn(x, lengths=torch.tensor([1, 1]), mask=torch.ones(4, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask must have shape \(4, 2\)"):
        rnn(x, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, input_size\)"):
        rnn(x[0])
    with pytest.raises(ValueError, match="input_size=3"):
        rnn(torch.randn(4, 2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 2\)"):
        rnn(x, h0=torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="mode must be one of"):
        ig.GradRNN(3, 2, mode="approx")


def test_exact_and_detached_agree_where_they_should_and_differ_where_they_should():
    exact, detached = _rnn(mode="exact"), _rnn(mode="detached")
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    target = torch.randn(4, 3, dtype=torch.float64)
    ye, he = exact(x)
    yd, hd = detached(x)
    torch.testing.assert_close(ye, yd)  # the forward pass is the same function
    torch.testing.assert_close(he, hd)
    assert not hd.requires_grad
    # With one step the loss only sees y_1 = F(x_1, h_0): no gradient flows through h, so they agree.
    g1e = torch.autograd.grad(((exact(x[:1])[0] - target[:1]) ** 2).sum(), list(exact.parameters()))
    g1d = torch.autograd.grad(((detached(x[:1])[0] - target[:1]) ** 2).sum(), list(detached.parameters()))
    for a, b in zip(g1e, g1d):
        torch.testing.assert_close(a, b)
    # Over several steps exact mode adds the terms through h_1..h_{T-1}, so the first layer differs.
    ge = torch.autograd.grad(((ye - target) ** 2).sum(), list(exact.parameters()))
    gd = torch.autograd.grad(((yd - target) ** 2).sum(), list(detached.parameters()))
    assert not torch.allclose(ge[0], gd[0])
    # Detached equals exact with every h_t replaced by a constant.
    h = torch.zeros(3, 2, dtype=torch.float64)
    loss = 0
    for t in range(4):
        y_t, h_next = ig.value_and_grad(exact.F, x[t], h.detach(), argnums=1, mode="exact")
        loss = loss + ((y_t - target[t]) ** 2).sum()
        h = h_next.detach()
    gref = torch.autograd.grad(loss, list(exact.parameters()))
    for a, b in zip(gd, gref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("ctx", ["no_grad", "inference_mode", "eval"])
def test_inference_still_computes_hidden_states(backend, ctx):
    rnn = _rnn(backend=backend)
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    y_ref, h_ref, hs_ref = rnn(x, return_hidden=True)
    if ctx == "eval":
        rnn.eval()
        y, h, hs = rnn(x, return_hidden=True)
    else:
        with (torch.no_grad() if ctx == "no_grad" else torch.inference_mode()):
            y, h, hs = rnn(x, return_hidden=True)
        assert not y.requires_grad and not h.requires_grad
    torch.testing.assert_close(hs.detach(), hs_ref.detach())
    torch.testing.assert_close(y.detach(), y_ref.detach())
    assert hs.abs().sum() > 0


def test_learnable_h0_and_custom_F():
    rnn = _rnn(learn_h0=True)
    assert rnn.h0 is not None and rnn.h0.requires_grad
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    y, _ = rnn(x)
    (g,) = torch.autograd.grad(y.sum(), rnn.h0)
    assert g.abs().sum() > 0

    class Bilinear(nn.Module):  # F(x, h) = x^T A h + |h|^2 / 2: dF/dh = A^T x + h
        def __init__(self):
            super().__init__()
            self.A = nn.Parameter(torch.randn(3, 2, dtype=torch.float64))

        def forward(self, x, h):
            return ((x @ self.A) * h).sum(-1) + 0.5 * (h * h).sum(-1)

    F = Bilinear()
    rnn = ig.GradRNN(3, 2, F=F)
    assert rnn.F is F
    y, h, hs = rnn(x, return_hidden=True)
    h_prev = torch.zeros(2, 2, dtype=torch.float64)
    for t in range(3):
        h_prev = x[t] @ F.A + h_prev
        torch.testing.assert_close(hs[t], h_prev)


def test_relu_gradrnn_warns():
    with pytest.warns(ig.SecondOrderWarning, match="relu"):
        ig.GradRNN(3, 2, activation="relu")
