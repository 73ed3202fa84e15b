"""The models compose with PyTorch: every backend under the ways users combine models (issue 16).

Rows of the matrix are usage patterns (eager training, torch.compile of a whole user step,
fullgraph, vmap over a stacked ensemble, functional_call under torch.func.grad, a MAML
meta-gradient, a gradient penalty, jacrev / vmap of a HamiltonianNet, autocast, forward-mode AD);
columns are backends. Every cell agrees with the autograd backend in eager mode (float64, 1e-5);
none of the registered backends refuses a pattern (a backend that declares it cannot serve a
context is refused with an error naming one that can: tested with a stand-in). README.md shows the
same matrix.
"""

import contextlib

import pytest
import torch
from torch.func import functional_call, jacrev, stack_module_state, vmap

import innergrad as ig
from innergrad.core.backends import BACKENDS, CONTEXTS, ClosedFormBackend, call_context, choose_backend
from innergrad.kernels import cpu as cpu_kernel
from innergrad.kernels import fused as fz
from innergrad.kernels import fused_call

DT = torch.float64
BACKEND_NAMES = ["auto", "fused", "closed_form", "autograd", "func"]
TOL = dict(rtol=1e-5, atol=1e-7)


def _rnn(backend, seed=0, dtype=DT):
    torch.manual_seed(seed)
    return ig.GradRNN(3, 4, (6, 5), backend=backend).to(dtype)


def _data(seed=1, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    x, target = torch.randn(5, 3, 3, generator=g, dtype=DT), torch.randn(5, 3, generator=g, dtype=DT)
    return x.to(dtype), target.to(dtype)


def _loss(model, x, target, params=None):
    y, h = model(x) if params is None else functional_call(model, params, (x,))
    return ((y - target) ** 2).mean() + (h**2).mean()


def _close(got, want, **tol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **(tol or TOL))


@contextlib.contextmanager
def _fused_ran(expected: bool = True):
    """Asserts that the fused operators' real implementations ran (forward and backward) or not."""
    before = dict(fz.OP_CALLS)
    yield
    ran = fz.OP_CALLS["forward"] > before["forward"] and fz.OP_CALLS["backward"] > before["backward"]
    assert ran == expected, f"fused operator calls: {before} -> {fz.OP_CALLS}"


def _uses_fused(backend: str) -> bool:
    return backend in ("auto", "fused")


# --- patterns: each returns the tensors compared with the autograd backend -------------------

def eager_step(backend):
    m = _rnn(backend)
    x, target = _data()
    _loss(m, x, target).backward()
    return [p.grad for p in m.parameters()]


def functional_grad(backend):
    """functional_call under torch.func.grad: the functional training step."""
    m = _rnn(backend)
    x, target = _data()
    params = {k: v.detach() for k, v in m.named_parameters()}
    grads = torch.func.grad(lambda p: _loss(m, x, target, p))(params)
    return [grads[k] for k in params]


def vmap_ensemble(backend):
    """Three models stacked (stack_module_state), run by vmap(functional_call), trained by backward();
    then the same ensemble's per-member gradients by vmap(grad)."""
    models = [_rnn(backend, seed=s) for s in range(3)]
    x, target = _data()
    params, buffers = stack_module_state(models)
    base = models[0]

    def loss(p, b, x):
        return _loss(base, x, target, {**p, **b})

    y = vmap(lambda p, b, x: functional_call(base, (p, b), (x,))[0], in_dims=(0, 0, None))(params, buffers, x)
    ((y - target) ** 2).sum().backward()
    per_member = vmap(torch.func.grad(loss), in_dims=(0, 0, None))(
        {k: v.detach() for k, v in params.items()}, buffers, x)
    return [y.detach(), *(params[k].grad for k in params), *per_member.values()]


def vmap_shared_model(backend):
    """One model vmapped over stacked batches of data, trained by backward()."""
    m = _rnn(backend)
    (x1, t1), (x2, t2) = _data(1), _data(2)
    y = vmap(lambda x: m(x)[0])(torch.stack([x1, x2]))
    ((y - torch.stack([t1, t2])) ** 2).sum().backward()
    return [y.detach(), *(p.grad for p in m.parameters())]


def maml(backend):
    """A MAML meta-gradient: one inner SGD step with create_graph=True, the outer loss on new data."""
    m = _rnn(backend)
    x, target = _data(1)
    x2, target2 = _data(2)
    names, params = zip(*m.named_parameters())
    inner = torch.autograd.grad(_loss(m, x, target), params, create_graph=True)
    adapted = {n: p - 0.1 * g for n, p, g in zip(names, params, inner)}
    return list(torch.autograd.grad(_loss(m, x2, target2, adapted), params))


def gradient_penalty(backend):
    m = _rnn(backend)
    x, target = _data()
    x.requires_grad_()
    loss = _loss(m, x, target)
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    (loss + (gx**2).sum()).backward()
    return [p.grad for p in m.parameters()]


def hamiltonian_jacrev_vmap(backend):
    torch.manual_seed(3)
    hnn = ig.HamiltonianNet(2, (8, 8), backend=backend).to(DT)
    xs = torch.randn(4, 2, dtype=DT)
    return [vmap(hnn)(xs), vmap(jacrev(hnn))(xs), jacrev(lambda x: hnn(x).sum(0))(xs)]


def forward_mode(backend):
    """torch.func.jvp through a GradRNN (forward-mode AD)."""
    m = _rnn(backend)
    x, _ = _data()
    return list(torch.func.jvp(lambda x: m(x)[0], (x,), (torch.ones_like(x),)))


# Single calls (`ig.value_and_grad` of an `ig.MLP`): a HamiltonianNet, whose "fused" / "auto" backend
# runs the fused single-call operator (`kernels/fused_call.py`; the module fixture below lets it take
# these tiny batches).

def _hnn(backend, seed=0):
    torch.manual_seed(seed)
    return ig.HamiltonianNet(4, (6, 5), backend=backend).to(DT)


def _states(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(7, 4, generator=g, dtype=DT), torch.randn(7, 4, generator=g, dtype=DT)


def _hloss(model, x, target, params=None):
    out = model(x) if params is None else functional_call(model, params, (x,))
    return ((out - target) ** 2).mean()


def hnn_eager(backend):
    m = _hnn(backend)
    _hloss(m, *_states()).backward()
    return [p.grad for p in m.parameters()]


def hnn_functional_grad(backend):
    m = _hnn(backend)
    params = {k: v.detach() for k, v in m.named_parameters()}
    grads = torch.func.grad(lambda p: _hloss(m, *_states(), p))(params)
    return [grads[k] for k in params]


def hnn_vmap_ensemble(backend):
    models = [_hnn(backend, seed=s) for s in range(3)]
    x, target = _states()
    params, buffers = stack_module_state(models)
    out = vmap(lambda p, b, x: functional_call(models[0], (p, b), (x,)), in_dims=(0, 0, None))(params, buffers, x)
    ((out - target) ** 2).sum().backward()
    per_member = vmap(torch.func.grad(lambda p, b, x: _hloss(models[0], x, target, {**p, **b})),
                      in_dims=(0, 0, None))({k: v.detach() for k, v in params.items()}, buffers, x)
    return [out.detach(), *(params[k].grad for k in params), *per_member.values()]


def hnn_vmap_data(backend):
    m = _hnn(backend)
    (x1, t1), (x2, t2) = _states(1), _states(2)
    out = vmap(m)(torch.stack([x1, x2]))
    ((out - torch.stack([t1, t2])) ** 2).sum().backward()
    return [out.detach(), *(p.grad for p in m.parameters())]


def hnn_maml(backend):
    m = _hnn(backend)
    names, params = zip(*m.named_parameters())
    inner = torch.autograd.grad(_hloss(m, *_states(1)), params, create_graph=True)
    adapted = {n: p - 0.1 * g for n, p, g in zip(names, params, inner)}
    return list(torch.autograd.grad(_hloss(m, *_states(2), adapted), params))


def hnn_gradient_penalty(backend):
    m = _hnn(backend)
    x, target = _states()
    x.requires_grad_()
    loss = _hloss(m, x, target)
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    (loss + (gx**2).sum()).backward()
    return [p.grad for p in m.parameters()]


def hnn_forward_mode(backend):
    m = _hnn(backend)
    x, _ = _states()
    return list(torch.func.jvp(m, (x,), (torch.ones_like(x),)))


PATTERNS = {
    "eager": eager_step,
    "functional_call + torch.func.grad": functional_grad,
    "vmap ensemble": vmap_ensemble,
    "vmap over data, one model": vmap_shared_model,
    "MAML meta-gradient": maml,
    "gradient penalty": gradient_penalty,
    "HamiltonianNet jacrev / vmap": hamiltonian_jacrev_vmap,
    "forward-mode AD (jvp)": forward_mode,
    "single call: eager": hnn_eager,
    "single call: functional_call + torch.func.grad": hnn_functional_grad,
    "single call: vmap ensemble": hnn_vmap_ensemble,
    "single call: vmap over data": hnn_vmap_data,
    "single call: MAML meta-gradient": hnn_maml,
    "single call: gradient penalty": hnn_gradient_penalty,
    "single call: forward-mode AD (jvp)": hnn_forward_mode,
}


@pytest.fixture(autouse=True)
def _fused_single_calls_at_any_batch():
    """The fused single-call operator takes these tiny batches too (by default small ones go to the
    closed form, which is as fast there)."""
    with ig.settings(fused_call_min_rows=0):
        yield


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_matrix(backend, pattern):
    _close(PATTERNS[pattern](backend), PATTERNS[pattern]("autograd_eager_reference"))


@pytest.fixture(autouse=True)
def _reference_backend(monkeypatch):
    """`backend="autograd_eager_reference"`: the autograd backend, named apart so that a failure shows
    which side of a comparison broke."""
    monkeypatch.setitem(BACKENDS, "autograd_eager_reference", BACKENDS["autograd"])


# --- what "auto" chooses, and that the default's fused operators really run -------------------------

def test_auto_chooses_by_context():
    f = ig.MLP((3, 4), (6, 5)).to(DT)
    args = (torch.randn(2, 3, dtype=DT), torch.randn(2, 4, dtype=DT))
    pick = lambda *ctx: choose_backend(f, args, (1,), context=frozenset(ctx)).name  # noqa: E731
    assert pick() == "fused"
    assert pick("vmap") == "fused" and pick("compile") == "fused" and pick("create_graph") == "fused"
    assert pick("grad_transform") == "closed_form"  # fused works there too, but recomputes its backward
    assert pick("forward_ad") == "closed_form"  # no forward-mode formula for the fused operators
    assert call_context() == frozenset()
    seen = []
    vmap(lambda t: seen.append(call_context()) or t)(torch.zeros(2))
    torch.func.grad(lambda t: seen.append(call_context()) or t.sum())(torch.zeros(2))
    torch.func.jvp(lambda t: seen.append(call_context()) or t, (torch.zeros(2),), (torch.zeros(2),))
    assert seen == [{"vmap"}, {"grad_transform"}, {"forward_ad"}]


def test_default_model_runs_the_fused_operators_under_vmap_and_double_backward():
    with _fused_ran():
        vmap_ensemble("auto")
    with _fused_ran():
        vmap_shared_model("auto")
    with _fused_ran():
        maml("auto")
    with _fused_ran(False):  # a torch.func gradient transform: the step-by-step closed form
        functional_grad("auto")


@contextlib.contextmanager
def _fused_call_ran(expected: bool = True):
    before = dict(fused_call.OP_CALLS)
    yield
    ran = fused_call.OP_CALLS["forward"] > before["forward"] and fused_call.OP_CALLS["backward"] > before["backward"]
    assert ran == expected, f"fused single-call operator calls: {before} -> {fused_call.OP_CALLS}"


def test_default_single_calls_run_the_fused_operator_under_vmap_and_double_backward():
    for pattern in (hnn_eager, hnn_vmap_ensemble, hnn_vmap_data, hnn_maml, hnn_gradient_penalty):
        with _fused_call_ran():
            pattern("auto")
    with _fused_call_ran(False):  # a torch.func gradient transform: the closed form ("auto" picks it there)
        hnn_functional_grad("auto")
    with _fused_call_ran(False):  # forward-mode AD: no formula for the operator, the closed form runs
        hnn_forward_mode("fused")


def _compiled_hnn_step(backend, compiler):
    m = _hnn(backend)
    x, target = _states()

    def step(x, target):
        loss = _hloss(m, x, target)
        loss.backward()
        return loss.detach()

    torch._dynamo.reset()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        torch.compile(step, fullgraph=True, backend=compiler)(x, target)
    return [p.grad for p in m.parameters()]


@pytest.mark.slow
def test_compiled_hnn_step_runs_the_fused_single_call_operator():
    """torch.compile (inductor, fullgraph) of a HamiltonianNet training step: the fused single-call
    operators are nodes of the compiled graph (their real implementations run) and the gradients are
    the autograd backend's."""
    with _fused_call_ran():
        got = _compiled_hnn_step("auto", "inductor")
    _close(got, hnn_eager("autograd"))


def test_compiled_hnn_step_every_backend_aot_eager():
    for backend in ("fused", "closed_form"):
        _close(_compiled_hnn_step(backend, "aot_eager"), hnn_eager("autograd"))


def test_fused_under_forward_mode_runs_step_by_step():
    """The fused operators have no forward-mode formula: an explicit backend="fused" then runs the
    sequence through its closed-form steps (the matrix checks the values) without its operators."""
    with _fused_ran(False):
        forward_mode("fused")


def test_explicit_backend_that_cannot_serve_the_context_names_one_that_can(monkeypatch):
    class NoVmap(ClosedFormBackend):
        name = "no_vmap"
        contexts = frozenset(CONTEXTS) - {"vmap"}

    monkeypatch.setitem(BACKENDS, "no_vmap", NoVmap())
    f = ig.MLP((3, 4), (5,)).to(DT)
    x, h = torch.randn(2, 6, 3, dtype=DT), torch.randn(2, 6, 4, dtype=DT)
    ig.grad(f, x[0], h[0], argnums=1, backend="no_vmap")  # fine outside vmap
    with pytest.raises(ValueError, match=r"backend 'no_vmap'.*torch.func.vmap.*backend='fused'"):
        vmap(lambda x, h: ig.grad(f, x, h, argnums=1, backend="no_vmap"))(x, h)
    rnn = ig.GradRNN(3, 4, (5,), backend="no_vmap").to(DT)
    with pytest.raises(ValueError, match=r"GradRNN: backend 'no_vmap'.*backend='fused'"):
        vmap(lambda x: rnn(x)[0])(x.unsqueeze(1))


def test_autocast_bf16_on_cpu_trains_every_backend():
    """Under CPU autocast (bf16) every backend trains; the fused operators run in the inputs' float32
    (no autocast rule), the others in bf16 where autocast says so: all near the float64 reference."""
    want = eager_step("autograd")
    for backend in BACKEND_NAMES:
        m = _rnn(backend, dtype=torch.float32)
        x, target = _data(dtype=torch.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(m, x, target)
        loss.backward()
        for g, w in zip((p.grad for p in m.parameters()), want):
            assert torch.isfinite(g).all()
            assert (g.double() - w).norm() <= 0.05 * w.norm(), backend


# --- torch.compile of a whole user training step ------------------------------------------------------

def _compiled_step(backend, fullgraph, compiler):
    m = _rnn(backend)
    x, target = _data()

    def step(x, target):
        loss = _loss(m, x, target)
        loss.backward()
        return loss.detach()

    torch._dynamo.reset()
    cfg = torch._dynamo.config.patch(trace_autograd_ops=True) if fullgraph else contextlib.nullcontext()
    with cfg:
        torch.compile(step, fullgraph=fullgraph, backend=compiler)(x, target)
    return [p.grad for p in m.parameters()]


@pytest.mark.slow
@pytest.mark.parametrize("fullgraph", [False, True], ids=["graph-breaks-allowed", "fullgraph"])
def test_compiled_user_step_with_the_default_runs_the_fused_kernel(fullgraph, monkeypatch):
    """torch.compile (inductor) of forward + loss + backward() with a default GradRNN: the fused
    operators run inside the compiled code (their call counters move; with fullgraph=True there is no
    graph break, so they are nodes of the compiled graph), the C++ kernel under them where it is
    built, and the gradients are the autograd backend's."""
    kernel_calls = []
    if cpu_kernel.ops() is not None:
        real = fz.kernel_for
        monkeypatch.setattr(fz, "kernel_for", lambda *a: kernel_calls.append(a) or real(*a))
    with _fused_ran():
        got = _compiled_step("auto", fullgraph, "inductor")
    assert kernel_calls or cpu_kernel.ops() is None
    _close(got, eager_step("autograd"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["fused", "closed_form", "autograd", "func"])
def test_compiled_user_step_every_backend(backend):
    """Each backend under torch.compile of a whole training step, fullgraph (aot_eager: the same
    tracing as inductor without its code generation, to keep the suite short)."""
    _close(_compiled_step(backend, True, "aot_eager"), eager_step("autograd"))


def test_torch_export_of_a_default_gradrnn_keeps_the_fused_operator():
    """torch.export traces the fused forward operator through its fake implementation: the exported
    program holds it as one node and computes what the eager model does."""
    m = _rnn("auto").eval()
    x, _ = _data()
    with torch.no_grad():
        want = m(x)
    ep = torch.export.export(m, (x,), strict=False)
    ops = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert "innergrad.fused_rnn_forward.default" in ops
    _close(ep.module()(x), want)
