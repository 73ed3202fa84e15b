"""The fused Triton gradient-RNN against the closed-form backend, in Triton's CPU interpreter.

The kernels run on CPU tensors under `TRITON_INTERPRET=1` (set per test and restored, so that the
rest of the suite is untouched; the kernel module is loaded per mode, see `triton_rnn._kernels`).
Sizes are tiny on purpose, and odd, so that every padded lane and masked row is exercised. A case
marked `cuda` compares the compiled kernels on a GPU when one is present.
"""

import pytest
import torch
from torch.autograd import gradcheck

pytest.importorskip("triton")

import innergrad as ig  # noqa: E402
from innergrad.core.activations import kernel_codes  # noqa: E402
from innergrad.core.backends import AUTO_ORDER, BACKENDS, choose_backend  # noqa: E402

tr = pytest.importorskip("innergrad.kernels.triton_rnn")

ACTS = list(kernel_codes("triton"))  # every activation the kernels accept (core's table)


@pytest.fixture
def interp(monkeypatch):
    """Run the triton backend on CPU through the interpreter for the duration of one test."""
    if torch.cuda.is_available():
        # Triton fixes the mode of its own library functions when it is first imported. On a GPU the
        # CUDA tests import it compiled, and on an H100 the first interpreted case then disagreed with
        # the closed form. The interpreter cases are for machines without a GPU (CI); with one, the
        # `cuda` cases below and the GradRNN tests run the compiled kernels against the closed form.
        pytest.skip("interpreter cases run without a GPU; the compiled-kernel cases cover this machine")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    backend = tr.TritonBackend()
    monkeypatch.setitem(BACKENDS, "triton", backend)
    with ig.settings(triton_interpret_on_cpu=True):
        yield backend


def _pair(dx=3, dh=5, w=12, act="softplus", dtype=torch.float64, seed=0, **kw):
    """A closed-form GradRNN and a triton GradRNN with the same weights."""
    torch.manual_seed(seed)
    ref = ig.GradRNN(dx, dh, hidden_layers=(w, w), activation=act, backend="closed_form", **kw).to(dtype)
    fused = ig.GradRNN(dx, dh, hidden_layers=(w, w), activation=act, backend="triton", **kw).to(dtype)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _train_grads(rnn, x, h0, **kw):
    """Outputs and the gradients of a loss on y and on every hidden state (exercises dL/dhs too)."""
    y, h, hs = rnn(x, h0, return_hidden=True, **kw)
    loss = (y**2).sum() + torch.sin(hs).sum() + (h**2).sum()
    leaves = [t for t in (x, h0) if t is not None and t.requires_grad] + list(rnn.parameters())
    return y, hs, torch.autograd.grad(loss, leaves)


def _assert_close_all(a, b, **tol):
    ya, ha, ga = a
    yb, hb, gb = b
    torch.testing.assert_close(ya, yb, **tol)
    torch.testing.assert_close(ha, hb, **tol)
    assert len(ga) == len(gb)
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p, q, **tol)


@pytest.mark.parametrize("act", ACTS)
def test_outputs_and_every_gradient_match_closed_form(interp, act):
    ref, fused = _pair(act=act)
    torch.manual_seed(1)
    x = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    _assert_close_all(_train_grads(fused, x, h0), _train_grads(ref, x, h0), rtol=1e-10, atol=1e-12)


def test_masks_and_lengths_match_closed_form(interp):
    ref, fused = _pair(act="tanh", learn_h0=True)
    with torch.no_grad():
        ref.h0.normal_()
        fused.h0.copy_(ref.h0)
    torch.manual_seed(2)
    x = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(4, 5) > 0.4
    mask[:, 0] = False  # a sample with no valid step: y = 0 everywhere, h stays h0
    mask[0, 1] = False  # a sample that starts late
    for kw in ({"mask": mask}, {"lengths": torch.tensor([0, 4, 2, 1, 3])}):
        _assert_close_all(_train_grads(fused, x, None, **kw), _train_grads(ref, x, None, **kw),
                          rtol=1e-10, atol=1e-12)


def test_batch_first_and_float32(interp):
    ref, fused = _pair(dx=2, dh=3, w=16, act="softplus", dtype=torch.float32, batch_first=True)
    x = torch.randn(5, 3, 2, requires_grad=True)  # (B, T, D)
    _assert_close_all(_train_grads(fused, x, None), _train_grads(ref, x, None), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "setting",
    [
        {"recompute": True},
        {"scratch_bytes": 1},
        {"block_b": 32},
        {"hoist": False},
        {"width_block": 16},
        {"width_block": 16, "recompute": True},
    ],
)
def test_recompute_chunks_and_block_shape_give_the_same_gradients(interp, setting):
    ref, fused = _pair(act="silu", w=40 if "width_block" in setting else 12)
    torch.manual_seed(3)
    x = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(5, 4) > 0.3
    with ig.settings(**{f"triton_{k}": v for k, v in setting.items()}):
        got = _train_grads(fused, x, h0, mask=mask)
    _assert_close_all(got, _train_grads(ref, x, h0, mask=mask), rtol=1e-10, atol=1e-12)


def test_detached_mode_matches_closed_form(interp):
    ref, fused = _pair(act="tanh", mode="detached")
    torch.manual_seed(4)
    x = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 1], [1, 0, 1, 1]], dtype=torch.bool)

    def run(rnn):
        y, _, hs = rnn(x, h0, mask=mask, return_hidden=True)
        loss = (y**3).sum() + hs.sum()  # hs is constant except where it is still h0
        return y, hs, torch.autograd.grad(loss, [x, h0, *rnn.parameters()])

    _assert_close_all(run(fused), run(ref), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_inference_computes_hidden_states_without_a_graph(interp, ctx):
    ref, fused = _pair(act="softplus")
    x = torch.randn(3, 4, 3, dtype=torch.float64)
    with ctx():
        y, h, hs = fused(x, return_hidden=True)
    y_ref, h_ref, hs_ref = ref(x, return_hidden=True)
    assert not y.requires_grad and not hs.requires_grad
    torch.testing.assert_close(y, y_ref.detach())
    torch.testing.assert_close(hs, hs_ref.detach())


@pytest.mark.parametrize("precision,tol", [("ieee", 1e-5), ("tf32", 1e-5), ("bf16", 3e-2)])
def test_float32_precisions_against_the_float64_reference(interp, precision, tol):
    """The interpreter computes tf32 dots in fp32; bf16 operands are really rounded."""
    ref, _ = _pair(dx=4, dh=6, w=16, act="softplus")
    _, fused = _pair(dx=4, dh=6, w=16, act="softplus", dtype=torch.float32)
    torch.manual_seed(5)
    x = torch.randn(3, 4, 4, dtype=torch.float64)
    with ig.settings(triton_precision=precision):
        got = _train_grads(fused, x.float(), None)
    want = _train_grads(ref, x, None)
    for a, b in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        err = (a.double() - b).norm() / b.norm()
        assert err < tol, f"{precision}: relative error {err:.2e}"


def test_gradcheck_of_the_fused_op(interp):
    torch.manual_seed(6)
    mlp = ig.MLP((2, 3), hidden_layers=(4, 4), activation="softplus").double()
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[1, 1], [1, 0], [0, 1]], dtype=torch.bool)
    params = tuple(mlp.parameters())

    def fn(x, h0, *ps):  # gradcheck perturbs ps in place, and they are the module's own parameters
        return tr.fused_gradrnn(mlp, x, h0, valid=valid)

    assert gradcheck(fn, (x, h0, *params))


def test_double_backward_matches_the_closed_form(interp):
    """A graph of the kernels' backward (create_graph=True) is the closed-form recomputation: the
    second derivatives agree with the closed-form backend, the first-order gradients too."""
    out = []
    for rnn in _pair(act="tanh"):
        x = torch.randn(2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
        y, _ = rnn(x)
        grads = torch.autograd.grad((y**2).sum(), [x, *rnn.parameters()], create_graph=True)
        penalty = sum((g**2).sum() for g in grads)
        out.append([*grads, *torch.autograd.grad(penalty, [x, *rnn.parameters()])])
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_unsupported_models_fall_back_or_explain(interp):
    x, h = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    why = interp.unsupported
    assert why(ig.MLP((3, 5), (8, 8, 8)).double(), (x, h), (1,))
    assert why(ig.MLP((3, 5), (8, 16)).double(), (x, h), (1,))
    assert "activation" in why(ig.MLP((3, 5), (8, 8), activation="relu").double(), (x, h), (1,))
    assert why(ig.MLP((3, 5), (512, 512)).double(), (x, h), (1,))
    assert why(ig.MLP(8, (8, 8)).double(), (torch.randn(4, 8, dtype=torch.float64),), (0,))
    assert why(ig.MLP((3, 5), (8, 8)), (x, h), (1,))  # float32 model, float64 inputs
    assert why(ig.MLP((3, 5), (8, 8)).double(), (x, h), (1,)) is None
    # "auto" passes a model the kernels do not take to the next backend, and takes one they do
    assert choose_backend(ig.MLP((3, 5), (8, 8, 8)).double(), (x, h), (1,)).name != "triton"
    assert choose_backend(ig.MLP((3, 5), (8, 8)).double(), (x, h), (1,)).name == "triton"
    # and an explicit choice says why
    bad = ig.GradRNN(3, 5, hidden_layers=(8, 6), backend="triton").double()
    with pytest.raises(ValueError, match="equal width"):
        bad(torch.randn(2, 4, 3, dtype=torch.float64))


def test_registered_first_for_auto_but_never_chosen_on_cpu_by_default():
    assert "triton" in ig.backends() and AUTO_ORDER[0] == "triton"
    assert BACKENDS["triton"].double_backward
    f = ig.MLP((3, 5), (8, 8))
    args = (torch.randn(4, 3), torch.randn(4, 5))
    assert "cuda" in BACKENDS["triton"].unsupported(f, args, (1,))
    assert choose_backend(f, args, (1,)).name != "triton"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision,tol", [("ieee", 1e-5), ("tf32", 5e-3), ("bf16", 5e-2)])
def test_compiled_kernels_on_cuda(precision, tol):
    ref, fused = _pair(dx=8, dh=32, w=128, act="softplus")
    ref, fused = ref.cuda(), fused.float().cuda()
    torch.manual_seed(7)
    x = torch.randn(16, 300, 8, dtype=torch.float64, device="cuda")
    with ig.settings(triton_precision=precision):
        got = _train_grads(fused, x.float(), None)
    want = _train_grads(ref, x, None)
    for a, b in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        err = (a.double() - b).norm() / b.norm()
        assert err < tol, f"{precision}: relative error {err:.2e}"


# --- the fused single-call operator's Triton kernels (kernels/triton_call.py) ---------------------

@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("layers", [(7,), (6, 5), (5, 6, 4)], ids=lambda s: f"L{len(s)}")
def test_single_call_kernels_match_autograd(interp, monkeypatch, act, layers):
    """`ig.value_and_grad` of an ig.MLP through the single-call operator's Triton kernels (interpreter):
    value, input gradients, and the gradients of a loss on both, against autograd in float64."""
    from innergrad.kernels import triton_call

    calls = []
    for name in ("forward", "backward"):
        real = getattr(triton_call, name)
        monkeypatch.setattr(triton_call, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a))
    torch.manual_seed(0)
    f = ig.MLP((3, 2), layers, act).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h = torch.randn(9, 2, generator=g, dtype=torch.float64, requires_grad=True)

    def run(backend):
        with ig.settings(fused_call_min_rows=0):
            y, (gx, gh) = ig.value_and_grad(f, x, h, argnums=(0, 1), backend=backend)
            loss = (y**2).sum() + gx.sin().sum() + (gh**3).sum()
            return [y, gx, gh, *torch.autograd.grad(loss, [x, h, *f.parameters()])]

    got = run("fused")
    assert calls == ["forward", "backward"]
    for a, b in zip(got, run("autograd")):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)], ids=str)
@pytest.mark.parametrize("act", ACTS)
def test_single_call_kernels_on_cuda_against_float64(act, dtype, tol):
    """The compiled single-call kernels on a GPU: a HamiltonianNet step (B=1000, width 96, 3 layers)
    against the float64 closed form on CPU."""
    from innergrad.kernels import fused_call

    torch.manual_seed(0)
    ref = ig.HamiltonianNet(6, (96, 96, 96), act, backend="closed_form").double()
    gpu = ig.HamiltonianNet(6, (96, 96, 96), act).to("cuda", dtype)
    gpu.load_state_dict(ref.state_dict())
    x, tgt = torch.randn(1000, 6, dtype=torch.float64), torch.randn(1000, 6, dtype=torch.float64)

    def step(m, x, tgt):
        out = m(x)
        loss = ((out - tgt) ** 2).mean()
        return [out, *torch.autograd.grad(loss, list(m.parameters()))]

    before = dict(fused_call.OP_CALLS)
    with ig.settings(fused_call_min_rows=0):
        got = step(gpu, x.to("cuda", dtype), tgt.to("cuda", dtype))
    assert fused_call.OP_CALLS["backward"] > before["backward"]
    for a, b in zip(got, step(ref, x, tgt)):
        err = (a.double().cpu() - b).norm() / b.norm()
        assert err < tol, f"{act} {dtype}: relative error {err:.2e}"
