"""The C++ CPU kernel of the "fused" backend: it builds, it is what runs, and it agrees with the Python loop
and with autograd (values, gradients, gradcheck, masks, modes, inference, batch blocks, edge shapes).

Every test that uses the `kernel` fixture sees the kernel's ops through a spy that counts its calls (and the
number of batch blocks each call ran), and asserts the counts: a silent fallback to the Python loop fails.
"""

import contextlib
import copy
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.autograd import gradcheck

import innergrad as ig
from innergrad.kernels import cpu as cpu_kernel
from innergrad.kernels import fused as fz
from innergrad.kernels.fused import FusedSequence, mlp_params, spec_of

from .problems import DTYPES, tol

KERNEL_ACTS = sorted(cpu_kernel.ACTIVATIONS)  # gelu, sigmoid, silu, softplus, tanh
LAYERS = [(16,), (9, 12), (8, 16, 5)]
BLOCKS = [1, 2]
DX, DH = 3, 5


def _compiler() -> str | None:
    return shutil.which("c++") or shutil.which("g++")


def test_kernel_builds_where_a_compiler_is_available():
    if os.environ.get("INNERGRAD_CPU_KERNEL", "1") == "0":
        pytest.skip("INNERGRAD_CPU_KERNEL=0 turns the kernel off in this run")
    if _compiler() is None:
        pytest.skip("no C++ compiler (c++ or g++) on PATH: the kernel cannot be built here")
    ops = cpu_kernel.ops()
    assert ops is not None, f"the C++ kernel did not build: {cpu_kernel.unavailable_reason()}"
    assert cpu_kernel.unavailable_reason() is None
    assert hasattr(ops, "fused_forward") and hasattr(ops, "fused_backward")
    for dt in DTYPES:
        assert cpu_kernel.supports("softplus", dt)
    assert not cpu_kernel.supports("elu", torch.float64) and not cpu_kernel.supports("tanh", torch.float16)


class _Spy:
    """Stands in for `torch.ops.innergrad_cpu`: forwards every call and records the blocks each one ran."""

    def __init__(self, ops):
        self.ops = ops
        self.forward_blocks: list[int] = []
        self.backward_blocks: list[int] = []

    def fused_forward(self, *args):
        self.forward_blocks.append(args[-1])  # (..., act, nblocks)
        return self.ops.fused_forward(*args)

    def fused_backward(self, *args):
        self.backward_blocks.append(args[-2])  # (..., act, nblocks, need_params)
        return self.ops.fused_backward(*args)

    def calls(self) -> tuple[int, int]:
        return len(self.forward_blocks), len(self.backward_blocks)


@pytest.fixture
def kernel(monkeypatch):
    """The kernel's ops behind a spy, with the fused backend set to use them; skips where there is no kernel."""
    ops = cpu_kernel.ops()
    if ops is None:
        pytest.skip(f"C++ CPU kernel unavailable: {cpu_kernel.unavailable_reason()}")
    spy = _Spy(ops)
    monkeypatch.setattr(cpu_kernel, "ops", lambda: spy)
    assert cpu_kernel.in_use()
    return spy


@contextlib.contextmanager
def _ran_kernel(spy: _Spy, forward: bool = True, backward: bool = True, blocks: int | None = None):
    """Asserts that the body called the kernel's forward (and backward) op, with `blocks` batch blocks."""
    f0, b0 = spy.calls()
    yield
    f1, b1 = spy.calls()
    assert (f1 > f0) == forward, f"kernel forward calls: {f1 - f0} (expected {'some' if forward else 'none'})"
    assert (b1 > b0) == backward, f"kernel backward calls: {b1 - b0} (expected {'some' if backward else 'none'})"
    if blocks is not None:
        assert set(spy.forward_blocks[f0:] + spy.backward_blocks[b0:]) == {blocks}


@contextlib.contextmanager
def _python_loop(monkeypatch, spy: _Spy):
    """The fused backend with the kernel off; asserts that the Python loop ran and the kernel did not."""
    rows = []
    real = fz.forward_rows
    with monkeypatch.context() as m, cpu_kernel.python_loop():
        m.setattr(fz, "forward_rows", lambda *a, **k: rows.append(1) or real(*a, **k))
        before = spy.calls()
        yield
    assert spy.calls() == before, "the kernel ran inside cpu_kernel.python_loop()"
    assert rows, "the fused backend's Python loop did not run"


@contextlib.contextmanager
def _threads(n: int, monkeypatch, min_rows: int = 2):
    """n > 1: n intra-op threads and small blocks, so the kernel splits the batch; restores the threads."""
    if n > 1:
        with ig.settings(threads=n, cpu_min_rows_per_thread=min_rows, cpu_kernel_min_rows=min_rows):
            yield
    else:
        yield


def _mlp(act, layers, dtype, out_bias=True, seed=0, std=0.6):
    """An ig.MLP whose weights are drawn wider than PyTorch's default, so pre-activations reach the curved
    part of every activation (|a| of order 1 to 3) and the s'' terms of the backward matter."""
    torch.manual_seed(seed)
    F = ig.MLP((DX, DH), layers, act, out_bias=out_bias)
    with torch.no_grad():
        for p in F.parameters():
            p.normal_(0.0, std)
    return F.to(dtype)


def _rnn(F, backend, mode="exact", **kw):
    return ig.GradRNN(DX, DH, F=copy.deepcopy(F), mode=mode, backend=backend, **kw)


def _data(T, B, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)

    return r(T, B, DX), r(B, DH), r(T, B), r(T, B, DH)  # x, h0, target, weights on hs


def _train(model, x, h0, target, hw, h0_grad=True, **kw):
    """y, hs and the gradients of a training-like loss on both y and hs, by name."""
    x = x.clone().requires_grad_()
    wrt = {"x": x}
    if h0 is not None:
        h0 = h0.clone().requires_grad_(h0_grad)
        if h0_grad:
            wrt["h0"] = h0
    y, h, hs = model(x, h0, return_hidden=True, **kw)
    loss = ((y - target) ** 2).mean() + 0.1 * (hs * hw).sum() + 0.05 * (h**2).sum()
    wrt.update((n, p) for n, p in model.named_parameters() if p.requires_grad)
    grads = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True, materialize_grads=True)
    return {"y": y.detach(), "hs": hs.detach(), **{f"grad {n}": g for n, g in zip(wrt, grads)}}


def _assert_close(got: dict, want: dict, dtype, nonzero=True):
    """Each tensor within atol + rtol * max|want| (`problems.tol`), and (nonzero) no all-zero reference."""
    assert got.keys() == want.keys()
    t = tol(dtype)
    for name, v in want.items():
        u = got[name]
        assert u.shape == v.shape and u.dtype == v.dtype, name
        scale = v.abs().max().item()
        if nonzero:
            assert scale > 0, f"{name}: the reference is all zeros, the comparison would be vacuous"
        err = (u - v).abs().max().item()
        assert err <= t["atol"] + t["rtol"] * scale, f"{name}: max difference {err:.3e} (scale {scale:.3e})"


# --- agreement: kernel vs Python loop vs autograd ------------------------------------------------------


@pytest.mark.parametrize("blocks", BLOCKS)
@pytest.mark.parametrize("layers", LAYERS, ids=lambda s: f"L{len(s)}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", KERNEL_ACTS)
def test_kernel_matches_python_loop_and_autograd(kernel, monkeypatch, act, dtype, layers, blocks):
    F = _mlp(act, layers, dtype)
    T, B = 6, 9  # two blocks split 9 rows as 4 + 5
    x, h0, target, hw = _data(T, B, dtype)
    fused = _rnn(F, "fused")
    with _threads(blocks, monkeypatch):
        assert fz.cpu_blocks(B) == blocks
        with _ran_kernel(kernel, blocks=blocks):
            got = _train(fused, x, h0, target, hw)
        assert torch.get_num_threads() == blocks  # the kernel's OpenMP blocks leave the thread setting alone
        with _python_loop(monkeypatch, kernel):
            loop = _train(fused, x, h0, target, hw)
    want = _train(_rnn(F, "autograd"), x, h0, target, hw)
    assert set(want) == {"y", "hs", "grad x", "grad h0"} | {f"grad cell.F.{n}" for n, _ in F.named_parameters()}
    if dtype == torch.float64:
        _assert_close(got, loop, dtype)
        _assert_close(got, want, dtype)
        return
    # float32: all three against float64 autograd on the same (rounded) weights and data. Deep GELU
    # stacks with these wide weights amplify rounding about a thousandfold through the recurrence
    # (PyTorch's own float32 autograd is 2e-4 off there), so the bar is: within `tol`, or no worse
    # than 3x autograd's own float32 error.
    ref = _train(_rnn(F, "autograd").double(), x.double(), h0.double(), target.double(), hw.double())
    rtol = tol(dtype)["rtol"]
    for name, r in ref.items():
        scale = r.abs().max().item()
        assert scale > 0, f"{name}: the reference is all zeros, the comparison would be vacuous"
        err = {k: (v[name].double() - r).abs().max().item() / scale for k, v in
               (("kernel", got), ("loop", loop), ("autograd", want))}
        bar = max(rtol, 3 * err["autograd"])
        assert err["kernel"] <= bar and err["loop"] <= bar, f"{name}: relative errors {err} (bar {bar:.1e})"


# --- gradcheck of the kernel's backward ------------------------------------------------------------------


# Tighter than gradcheck's defaults (rtol 1e-3, which a gradient scaled by 1.001 would pass): in float64 the
# central difference with eps 1e-6 is accurate to ~1e-9 relative on these smooth, O(1) functions.
_GRADCHECK_TOL = {"eps": 1e-6, "atol": 1e-7, "rtol": 1e-5}


def _valid(T, B):
    """Invalid steps in the middle of a sequence, at its end, and at its start."""
    v = torch.ones(T, B, dtype=torch.bool)
    v[2, 1] = False  # a hole in the middle
    v[3:, 2] = False  # a sequence that ends early
    v[0, 3] = v[2:4, 3] = False  # starts late, and a two-step hole
    return v


@pytest.mark.parametrize("blocks", BLOCKS)
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("act", KERNEL_ACTS)
def test_gradcheck_through_the_kernel(kernel, monkeypatch, act, masked, blocks):
    dt = torch.float64
    F = _mlp(act, (4, 3), dt, std=0.7)
    spec = spec_of(F, DX)
    params = [p.detach().clone().requires_grad_() for p in mlp_params(F)]
    T, B = 5, 4
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, DX, generator=g, dtype=dt, requires_grad=True)
    h0 = torch.randn(B, DH, generator=g, dtype=dt, requires_grad=True)
    valid = _valid(T, B) if masked else None

    def fn(x, h0, *ps):
        return FusedSequence.apply(spec, valid, x, h0, *ps)

    with _threads(blocks, monkeypatch), _ran_kernel(kernel, blocks=blocks):
        assert gradcheck(fn, (x, h0, *params), **_GRADCHECK_TOL)


def test_gradcheck_one_layer_without_output_bias(kernel):
    dt = torch.float64
    F = _mlp("tanh", (6,), dt, out_bias=False)
    spec = spec_of(F, DX)
    assert not spec.has_out_bias
    params = [p.detach().clone().requires_grad_() for p in mlp_params(F)]
    x = torch.randn(3, 2, DX, dtype=dt, requires_grad=True)
    h0 = torch.randn(2, DH, dtype=dt, requires_grad=True)
    with _ran_kernel(kernel):
        assert gradcheck(lambda x, h0, *ps: FusedSequence.apply(spec, None, x, h0, *ps), (x, h0, *params),
                         **_GRADCHECK_TOL)


# --- masks, lengths and modes ------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", BLOCKS)
@pytest.mark.parametrize("how", ["lengths", "mask"])
@pytest.mark.parametrize("mode", ["exact", "detached"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_masks_and_modes_match_autograd(kernel, monkeypatch, dtype, mode, how, blocks):
    F = _mlp("softplus", (7, 6), dtype)
    T, B = 6, 7
    x, h0, target, hw = _data(T, B, dtype, seed=3)
    if how == "lengths":
        kw = {"lengths": torch.tensor([6, 3, 0, 1, 5, 6, 2])}
    else:
        mask = torch.ones(T, B, dtype=torch.bool)
        mask[:2, 0] = False  # starts late: holds h0 (and, in detached mode, h0's graph) for two steps
        mask[:, 1] = False  # no valid step at all
        mask[2:4, 2] = False  # a hole in the middle
        mask[4:, 3] = False  # ends early
        mask[[0, 3, 5], 5] = False
        kw = {"mask": mask}
    with _threads(blocks, monkeypatch), _ran_kernel(kernel, backward=mode == "exact", blocks=blocks):
        got = _train(_rnn(F, "fused", mode), x, h0, target, hw, **kw)
    want = _train(_rnn(F, "autograd", mode), x, h0, target, hw, **kw)
    _assert_close(got, want, dtype)
    valid = torch.arange(T).unsqueeze(1) < kw["lengths"] if how == "lengths" else kw["mask"]
    assert (got["y"][~valid] == 0).all()


# --- inference -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", BLOCKS)
@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("act", KERNEL_ACTS)
def test_inference_matches_autograd(kernel, monkeypatch, act, context, blocks):
    dt = torch.float64
    F = _mlp(act, (8, 6, 5), dt)  # three layers: the unsaved pre-activations alternate between two buffers
    T, B = 5, 6
    x, h0, _, _ = _data(T, B, dt, seed=4)
    mask = torch.rand(T, B, generator=torch.Generator().manual_seed(5)) > 0.3
    want = [t.detach() for t in _rnn(F, "autograd")(x, h0, mask=mask, return_hidden=True)]
    ctx = torch.no_grad() if context == "no_grad" else torch.inference_mode()
    fused = _rnn(F, "fused")
    with _threads(blocks, monkeypatch), _ran_kernel(kernel, backward=False, blocks=blocks), ctx:
        got = fused(x, h0, mask=mask, return_hidden=True)
    assert not any(t.requires_grad for t in got)
    _assert_close(dict(zip("yhH", got)), dict(zip("yhH", want)), dt)


# --- edge cases ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("T", "B", "threads", "blocks"),
    [(4, 1, 1, 1), (4, 1, 2, 1), (1, 5, 1, 1), (1, 5, 2, 2), (5, 5, 2, 2), (3, 7, 3, 3)],
    ids=["B1", "B1-2threads", "T1", "T1-2blocks", "B5-2blocks", "B7-3blocks"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_small_and_uneven_shapes(kernel, monkeypatch, dtype, T, B, threads, blocks):
    """B=1, T=1, and batches that do not divide into the blocks (5 = 2 + 3, 7 = 2 + 2 + 3)."""
    F = _mlp("tanh", (6, 5), dtype)
    x, h0, target, hw = _data(T, B, dtype, seed=6)
    with _threads(threads, monkeypatch):
        assert fz.cpu_blocks(B) == blocks
        with _ran_kernel(kernel, blocks=blocks):
            got = _train(_rnn(F, "fused"), x, h0, target, hw)
    _assert_close(got, _train(_rnn(F, "autograd"), x, h0, target, hw), dtype)


@pytest.mark.parametrize("blocks", BLOCKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_no_output_bias(kernel, monkeypatch, dtype, blocks):
    F = _mlp("sigmoid", (8, 7), dtype, out_bias=False)
    assert F.out.bias is None
    x, h0, target, hw = _data(5, 6, dtype, seed=7)
    with _threads(blocks, monkeypatch), _ran_kernel(kernel, blocks=blocks):
        got = _train(_rnn(F, "fused"), x, h0, target, hw)
    _assert_close(got, _train(_rnn(F, "autograd"), x, h0, target, hw), dtype)


@pytest.mark.parametrize("blocks", BLOCKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batch_first_mask_and_learned_h0(kernel, monkeypatch, dtype, blocks):
    """batch_first=True: x (and the mask) reach the kernel as non-contiguous transposes; h0 is an expanded
    learned parameter (a zero-stride view whose gradient sums over the batch)."""
    F = _mlp("softplus", (6, 6), dtype)
    T, B = 5, 6
    x, _, target, hw = _data(T, B, dtype, seed=8)
    xb, target, hw = x.transpose(0, 1).contiguous(), target.t(), hw.transpose(0, 1)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 2:] = False
    mask[4, :2] = False
    models = [_rnn(F, b, batch_first=True, learn_h0=True) for b in ("fused", "autograd")]
    with torch.no_grad():
        models[0].h0.normal_(0.0, 0.8, generator=torch.Generator().manual_seed(9))
        models[1].h0.copy_(models[0].h0)
    outs = []
    for m in models:
        m.to(dtype)
        spied = _ran_kernel(kernel, blocks=blocks) if m is models[0] else contextlib.nullcontext()
        with _threads(blocks, monkeypatch), spied:
            outs.append(_train(m, xb, None, target, hw, mask=mask))
    assert "grad h0" in outs[0]  # the learned h0 parameter
    _assert_close(*outs, dtype)


def test_non_contiguous_time_major_input(kernel):
    dt = torch.float64
    F = _mlp("tanh", (7,), dt)
    T, B = 4, 5
    wide = torch.randn(T, B, 2 * DX, dtype=dt)
    x = wide[..., ::2]  # every other feature: a strided view
    assert not x.is_contiguous()
    _, h0, target, hw = _data(T, B, dt, seed=10)
    with _ran_kernel(kernel):
        got = _train(_rnn(F, "fused"), x, h0, target, hw)
    _assert_close(got, _train(_rnn(F, "autograd"), x, h0, target, hw), dt)


@pytest.mark.parametrize("loss_on", ["y", "h_last", "sums"])
def test_partial_losses_and_frozen_parameters(kernel, monkeypatch, loss_on):
    """Only y or only the last h in the loss (the other output's gradient is None), or plain sums (zero-stride
    incoming gradients); parameters frozen (the kernel's need_params=False), gradients to x and h0 only."""
    dt = torch.float64
    F = _mlp("softplus", (8, 5), dt)
    x, h0, _, _ = _data(5, 6, dt, seed=11)
    outs = []
    for backend in ("fused", "autograd"):
        model = _rnn(F, backend).requires_grad_(False)
        xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_()
        spied = _ran_kernel(kernel, blocks=2) if backend == "fused" else contextlib.nullcontext()
        with _threads(2, monkeypatch), spied:
            y, h, hs = model(xi, hi, return_hidden=True)
            loss = {"y": (y**2).sum(), "h_last": (h**3).sum(), "sums": y.sum() + hs.sum()}[loss_on]
            outs.append(dict(zip(["x", "h0"], torch.autograd.grad(loss, [xi, hi]))))
    _assert_close(*outs, dt)


# --- INNERGRAD_CPU_KERNEL=0 ---------------------------------------------------------------------------------------

_KERNEL_OFF = """
import warnings
import torch
import innergrad as ig
from innergrad.kernels import cpu as cpu_kernel
from innergrad.kernels import fused as fz

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert cpu_kernel.ops() is None
assert not [w for w in caught if "C++" in str(w.message)], [str(w.message) for w in caught]
why = cpu_kernel.unavailable_reason()
assert why is not None and "INNERGRAD_CPU_KERNEL" in why, why
rows = []
real = fz.forward_rows
fz.forward_rows = lambda *a, **k: rows.append(1) or real(*a, **k)
torch.manual_seed(0)
a = ig.GradRNN(3, 4, (8, 6), backend="fused").double()
b = ig.GradRNN(3, 4, (8, 6), backend="autograd").double()
b.load_state_dict(a.state_dict())
x = torch.randn(5, 3, 3, dtype=torch.float64)
outs = []
for m in (a, b):
    y, h = m(x)
    loss = ((y - 1) ** 2).sum() + h.pow(2).sum()
    outs.append([y, h, *torch.autograd.grad(loss, list(m.parameters()))])
assert rows, "the fused backend's Python loop did not run"
for u, v in zip(*outs):
    torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-10)
print("KERNEL OFF OK:", why)
"""


def test_env_variable_turns_the_kernel_off():
    env = {**os.environ, "INNERGRAD_CPU_KERNEL": "0"}
    res = subprocess.run([sys.executable, "-c", _KERNEL_OFF], env=env, cwd=Path(__file__).parents[1],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "KERNEL OFF OK" in res.stdout


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    """No compiler (or any build error): one RuntimeWarning naming the cause and the fix, then the Python loop."""
    def no_compiler():
        raise RuntimeError("Ninja is required to load C++ extensions\nerror: c++: command not found")

    monkeypatch.setattr(cpu_kernel, "_state", {})
    monkeypatch.setattr(cpu_kernel, "build", no_compiler)
    with pytest.warns(RuntimeWarning, match=r"could not be built \(RuntimeError: error: c\+\+: command not found\)"):
        assert cpu_kernel.ops() is None
    assert "command not found" in cpu_kernel.unavailable_reason()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert cpu_kernel.ops() is None
        torch.manual_seed(0)
        a = ig.GradRNN(3, 4, (8,), backend="fused").double()
        b = ig.GradRNN(3, 4, (8,), backend="autograd").double()
        b.load_state_dict(a.state_dict())
        x = torch.randn(4, 2, 3, dtype=torch.float64)
        torch.testing.assert_close(a(x)[0], b(x)[0])


# --- float32 softplus accuracy ------------------------------------------------------------------------------------


def test_float32_softplus_accuracy_over_a_wide_range(kernel):
    """y_1 = softplus(a) and h_1 = sigmoid(a) for pre-activations a on a grid over [-30, 30].

    F has one hidden unit with W_1 = [1 | 1], b_1 = 0, w_o = 1, b_o = 0 and h0 = 0, so a = x exactly, and the
    products around the activation (by 1, plus 0) are exact: the kernel's error is that of its elementwise code.
    The reference is float64 autograd on the same float32-rounded inputs (so input rounding, which a condition
    number of up to 30 would amplify for softplus(-30) ~ exp(-30), does not count).

    Tolerance 4 float32 ulps (4 * 2^-23 ~ 4.8e-7) relative: the kernel's Cephes exp is within ~1 ulp, its
    degree-9 log1p polynomial within ~2e-7 relative, and one division and one addition add half an ulp each
    (measured: 1.3e-7 for y, 1.5e-7 for h, the same as torch's own float32 softplus and sigmoid). A scaling
    bug, a wrong polynomial coefficient or a wrong branch (e * r vs r) gives errors of 1e-6 or far more.
    """
    grid = torch.linspace(-30.0, 30.0, 2401, dtype=torch.float32)
    grid = torch.cat([grid, torch.tensor([0.0, 1e-6, -1e-6, 1e-3, -1e-3, 0.5, -0.5, 17.0, -87.0, 90.0])])
    B = grid.numel()
    F = ig.MLP((1, 1), (1,), "softplus")
    with torch.no_grad():
        F.layers[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
        F.layers[0].bias.zero_()
        F.out.weight.fill_(1.0)
        F.out.bias.zero_()
    x = grid.view(1, B, 1)
    with _ran_kernel(kernel, backward=False), torch.no_grad():
        y, hs = fz.run_fused_sequence(F, x, torch.zeros(B, 1), None, "exact")
    ref = ig.GradRNN(1, 1, F=copy.deepcopy(F).double(), backend="autograd")
    y64, _, hs64 = ref(x.double(), return_hidden=True)
    a = grid.double()
    # The reference is what it should be (torch's softplus switches to the identity above 20, within 2e-9).
    torch.testing.assert_close(y64[0].detach(), torch.logaddexp(a, torch.zeros_like(a)), rtol=1e-8, atol=0)
    eps = torch.finfo(torch.float32).eps
    for name, got, want in [("y", y[0], y64[0]), ("h", hs[0, :, 0], hs64[0, :, 0])]:
        want = want.detach()
        assert (want > 0).all()
        rel = ((got.double() - want) / want).abs()
        assert rel.max() <= 4 * eps, f"{name}: relative error {rel.max():.2e} at a = {a[rel.argmax()].item()}"
