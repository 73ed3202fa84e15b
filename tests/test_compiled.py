"""The compiled GradRNN: compiled steps, CUDA-graph replay (emulated on CPU), checks and fallbacks."""

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn

import innergrad as ig
from innergrad.models import compiled as C

DT = torch.float64
# "aot_eager" traces the same graphs as inductor (make_fx, AOTAutograd) without generating code.
QUICK = "aot_eager"


class Custom(nn.Module):
    """An F with no closed form: the compiled path traces value and gradient with make_fx."""

    def __init__(self, dx=3, dh=2, w=8):
        super().__init__()
        self.l1, self.l2 = nn.Linear(dx + dh, w), nn.Linear(w, 1)

    def forward(self, x, h):
        z = torch.cat([x, h], -1)
        return self.l2(torch.tanh(self.l1(z)) * torch.sigmoid(z.sum(-1, keepdim=True))).squeeze(-1)


def _models(F=None, mode="exact", backend="auto", **kw):
    torch.manual_seed(0)
    ref = ig.GradRNN(3, 2, (8,), "tanh", F=copy.deepcopy(F), mode=mode, backend="autograd", **kw).to(DT)
    m = ig.GradRNN(3, 2, (8,), "tanh", F=copy.deepcopy(F), mode=mode, backend=backend, **kw).to(DT)
    m.load_state_dict(ref.state_dict())
    return ref, m


def _outputs(model, x, mask=None):
    y, h, hs = model(x, mask=mask, return_hidden=True)
    loss = ((y - 0.5) ** 2).mean() + (hs.sum() if hs.requires_grad else 0)
    wrt = [x, *model.parameters()]
    return [y, hs, *torch.autograd.grad(loss, wrt, allow_unused=True, materialize_grads=True)]


def _close(a, b, tol=1e-10):
    for u, v in zip(a, b):
        assert (u - v).abs().max() <= tol * (v.abs().max() + 1e-30)


@pytest.mark.parametrize("F", [None, Custom()], ids=["closed_form", "traced"])
@pytest.mark.parametrize("mode", ["exact", "detached"])
def test_compiled_steps_match_eager(F, mode):
    ref, m = _models(F, mode, backend="closed_form" if F is None else "auto")
    ig.compile(m, backend=QUICK)
    x = torch.randn(5, 4, 3, dtype=DT, requires_grad=True)
    mask = torch.rand(5, 4) > 0.3
    for _ in range(2):  # the second call reuses the compiled step
        _close(_outputs(m, x, mask), _outputs(ref, x, mask))
    (rec,) = [s for s in m.compiled.stats if s["train"]]
    assert rec["strategy"] == "compiled_steps" and rec["fallback"] is None
    assert rec["check_max_rel_err"] < 1e-10 and rec["compile_s"] > 0


def test_compiled_step_function_directly():
    torch.manual_seed(1)
    F = Custom().to(DT)
    step = C.compiled_step(F, "exact", backend=QUICK)
    x, h = torch.randn(4, 3, dtype=DT), torch.randn(4, 2, dtype=DT, requires_grad=True)
    y, g = step(x, h)
    y2, g2 = ig.value_and_grad(F, x, h, argnums=1, backend="autograd")
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(g, g2)
    assert g.requires_grad  # first-order graph: training differentiates it once more


def test_compile_on_cpu_with_an_mlp_uses_the_fused_path_unchanged():
    ref, m = _models(backend="auto")
    ig.compile(m)
    x = torch.randn(4, 3, 3, dtype=DT, requires_grad=True)
    _close(_outputs(m, x), _outputs(ref, x))
    assert m.compiled.stats == []  # nothing to compile: the whole-sequence op is the loop


@pytest.mark.parametrize("F", [None, Custom()], ids=["fused", "traced"])
@pytest.mark.parametrize("mode", ["exact", "detached"])
def test_graph_replay_plumbing_emulated_on_cpu(F, mode):
    """The CUDA-graph path's static buffers, copies and gradient routing, with replays re-run."""
    ref, m = _models(F, mode, learn_h0=True)
    with torch.no_grad():
        m.h0.normal_()
        ref.h0.copy_(m.h0)
    ig.compile(m, backend=QUICK)
    m.compiled._emulate_graphs = True
    x = torch.randn(5, 4, 3, dtype=DT, requires_grad=True)
    mask = torch.rand(5, 4) > 0.3
    for _ in range(2):
        _close(_outputs(m, x, mask), _outputs(ref, x, mask))
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], ref(x)[0])
    assert all(s["strategy"].startswith("cuda_graphs+") for s in m.compiled.stats)
    assert all(s["fallback"] is None for s in m.compiled.stats)


def test_graphs_hold_one_call_at_a_time():
    _, m = _models()
    ig.compile(m)
    m.compiled._emulate_graphs = True
    x = torch.randn(3, 2, 3, dtype=DT)
    y1, _ = m(x)
    m(x)
    with pytest.raises(RuntimeError, match="backward before the next forward"):
        y1.sum().backward()


def test_a_failing_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(C, "compiled_step", broken)
    ref, m = _models(Custom())
    ig.compile(m)
    x = torch.randn(4, 3, 3, dtype=DT, requires_grad=True)
    with pytest.warns(ig.CompileFallbackWarning, match="no compiler here"):
        out = _outputs(m, x)
    _close(out, _outputs(ref, x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided once per signature: no second warning
        _outputs(m, x)
    assert m.compiled.stats[0]["fallback"].startswith("RuntimeError")


def test_a_mismatch_falls_back_to_eager(monkeypatch):
    real = C.compiled_step

    def wrong(F, mode, backend="inductor"):
        step = real(F, mode, backend)
        return lambda x_t, h: (lambda y, g: (y + 1e-3, g))(*step(x_t, h))

    monkeypatch.setattr(C, "compiled_step", wrong)
    ref, m = _models(Custom())
    ig.compile(m, backend=QUICK)
    x = torch.randn(4, 3, 3, dtype=DT, requires_grad=True)
    with pytest.warns(ig.CompileFallbackWarning, match="did not match eager"):
        out = _outputs(m, x)
    _close(out, _outputs(ref, x))


def test_compile_rejects_other_modules_and_survives_copies():
    with pytest.raises(TypeError, match="torch.compile"):
        ig.compile(nn.Linear(2, 2))
    m = ig.GradRNN(3, 2, (4,), compile=True)
    assert isinstance(m.compiled, C.CompiledSequence)
    m2 = copy.deepcopy(m)
    m3 = pickle.loads(pickle.dumps(m))
    assert m2.compiled is not m.compiled and m3.compiled.stats == []
    x = torch.randn(3, 2, 3)
    torch.testing.assert_close(m2(x)[0], m(x)[0])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("F", [None, Custom()], ids=["fused", "traced"])
def test_cuda_graphs_match_eager(F):
    ref, m = _models(F)
    ref, m = ref.cuda().float(), m.cuda().float()
    ig.compile(m, backend=QUICK)
    x = torch.randn(6, 8, 3, device="cuda", requires_grad=True)
    for _ in range(3):
        _close(_outputs(m, x), _outputs(ref, x), tol=1e-4)
    assert all(s["fallback"] is None for s in m.compiled.stats), m.compiled.stats
