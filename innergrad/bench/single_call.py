"""The single-call models of `innergrad bench --model hnn|field|dhnn|lnn`: one table, one entry per model.

A training step of such a model evaluates a learned scalar's input-gradient once per sample (no
recurrence): `dx/dt = J grad H` (hnn), forces `-grad E` (field), `J grad H + grad D` (dhnn), and
the Lagrangian's `q'' = (d2L/dq'2)^-1 (dL/dq - d2L/dq dq' q')` (lnn); then an MSE against a target
and a backward to every parameter. Each entry gives the model in the ways users write it (naive
autograd with `create_graph`, torch.func, JAX) and as the innergrad module; the harness
(`harness.py`) times them side by side, checks that every way gives the same loss and gradients,
and measures memory, as for the gradient-RNN.

A model of the family issue that is not in this version of the package (`ig.DissipativeHNN`,
`ig.LagrangianNet`) makes its innergrad ways report "n/a" with the reason; its user-written ways still run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Tensor = torch.Tensor


class Unsupported(Exception):
    """This way cannot run this configuration here (the harness reports it as n/a)."""


def _swap(g: Tensor) -> Tensor:
    """`J g = (g_p, -g_q)` for g = (g_q, g_p)."""
    n = g.shape[-1] // 2
    return torch.cat((g[..., n:], -g[..., :n]), -1)


class SingleCallModel:
    """One model of the table. `nets`: the scalar networks (ig.MLPs) in a fixed order; `out(...)`
    maps their gradients (and Hessians, for lnn) to the model's output."""

    name = ""
    defaults: dict[str, Any] = {}
    nets: tuple[str, ...] = ("H",)
    out_bias = True
    needs_hessian = False

    def make_nets(self, cfg) -> dict[str, torch.nn.Module]:
        from ..core.mlp import MLP

        return {n: MLP(cfg.dim, (cfg.width,) * cfg.layers, cfg.activation, out_bias=self.out_bias) for n in self.nets}

    def combine(self, grads: dict[str, Tensor], x: Tensor, hess: dict[str, Tensor] | None = None) -> Tensor:
        raise NotImplementedError

    def innergrad_model(self, nets: dict[str, torch.nn.Module], cfg, backend: str) -> torch.nn.Module:
        raise NotImplementedError

    def jax_combine(self, jnp, grads, x, hess=None):
        raise NotImplementedError


class HNN(SingleCallModel):
    name = "hnn"
    defaults = {"dim": 2, "B": 4096, "width": 200, "activation": "tanh"}
    out_bias = False  # the paper's H (and ig.HamiltonianNet's default)

    def combine(self, grads, x, hess=None):
        return _swap(grads["H"])

    def innergrad_model(self, nets, cfg, backend):
        from ..models.hamiltonian import HamiltonianNet

        return HamiltonianNet(cfg.dim, H=nets["H"], backend=backend)

    def jax_combine(self, jnp, grads, x, hess=None):
        n = x.shape[-1] // 2
        g = grads["H"]
        return jnp.concatenate([g[:, n:], -g[:, :n]], 1)


class Field(SingleCallModel):
    name = "field"
    nets = ("E",)
    defaults = {"dim": 64, "B": 1024, "width": 256, "activation": "softplus"}

    def combine(self, grads, x, hess=None):
        return -grads["E"]

    def innergrad_model(self, nets, cfg, backend):
        from ..models.conservative import ConservativeField

        class Forces(ConservativeField):  # the step trains on forces: (E, F) -> F
            def forward(self, x):
                return super().forward(x)[1]

        return Forces(nets["E"], backend=backend)

    def jax_combine(self, jnp, grads, x, hess=None):
        return -grads["E"]


class DHNN(SingleCallModel):
    name = "dhnn"
    nets = ("H", "D")
    defaults = {"dim": 2, "B": 4096, "width": 200, "activation": "tanh"}

    def combine(self, grads, x, hess=None):
        return _swap(grads["H"]) + grads["D"]

    def innergrad_model(self, nets, cfg, backend):
        try:
            from ..models import dissipative
        except ImportError:
            dissipative = None
        cls = getattr(dissipative, "DissipativeHNN", None)
        if cls is None:
            raise Unsupported("ig.DissipativeHNN is not in this version of innergrad")
        try:
            return cls(cfg.dim, H=nets["H"], D=nets["D"], backend=backend)
        except TypeError as e:
            raise Unsupported(f"ig.DissipativeHNN does not take this benchmark's arguments: {e}") from e

    def jax_combine(self, jnp, grads, x, hess=None):
        n = x.shape[-1] // 2
        g = grads["H"]
        return jnp.concatenate([g[:, n:], -g[:, :n]], 1) + grads["D"]


class LNN(SingleCallModel):
    """q'' = (d2L/dq'2)^-1 (dL/dq - d2L/dq dq' q'), output (q', q'')."""

    name = "lnn"
    nets = ("L",)
    defaults = {"dim": 4, "B": 256, "width": 128, "activation": "softplus"}
    needs_hessian = True

    def combine(self, grads, x, hess=None):
        n = x.shape[-1] // 2
        g, Hs = grads["L"], hess["L"]
        qd = x[:, n:]
        rhs = g[:, :n] - (Hs[:, n:, :n] @ qd.unsqueeze(-1)).squeeze(-1)
        qdd = torch.linalg.solve(Hs[:, n:, n:], rhs)
        return torch.cat([qd, qdd], -1)

    def innergrad_model(self, nets, cfg, backend):
        try:
            from ..models import lagrangian
        except ImportError:
            lagrangian = None
        cls = getattr(lagrangian, "LagrangianNet", None)
        if cls is None:
            raise Unsupported("ig.LagrangianNet is not in this version of innergrad")
        try:
            return cls(cfg.dim, L=nets["L"], backend=backend)
        except TypeError as e:
            raise Unsupported(f"ig.LagrangianNet does not take this benchmark's arguments: {e}") from e

    def jax_combine(self, jnp, grads, x, hess=None):
        n = x.shape[-1] // 2
        g, Hs = grads["L"], hess["L"]
        qd = x[:, n:]
        rhs = g[:, :n] - (Hs[:, n:, :n] @ qd[..., None])[..., 0]
        import jax

        qdd = jax.numpy.linalg.solve(Hs[:, n:, n:], rhs[..., None])[..., 0]
        return jnp.concatenate([qd, qdd], -1)


MODELS: dict[str, SingleCallModel] = {m.name: m for m in (HNN(), Field(), DHNN(), LNN())}


# --- the problem and the ways -------------------------------------------------------------------

def make_problem(cfg) -> dict[str, Any]:
    """Shared networks (same weights for every way), states x and targets, all (B, dim)."""
    model = MODELS[cfg.model]
    dt, dev = getattr(torch, cfg.dtype), torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    nets = {k: v.to(dev, dt) for k, v in model.make_nets(cfg).items()}
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.B, cfg.dim, generator=g).to(dev, dt)
    target = torch.randn(cfg.B, cfg.dim, generator=g).to(dev, dt)
    return {"model": model, "nets": nets, "x": x, "target": target,
            "state": {k: {n: t.detach().clone() for n, t in v.state_dict().items()} for k, v in nets.items()}}


def _fresh_nets(pb) -> dict[str, torch.nn.Module]:
    import copy

    nets = {k: copy.deepcopy(v) for k, v in pb["nets"].items()}
    for k, v in nets.items():
        v.load_state_dict(pb["state"][k])
    return nets


def mse(out: Tensor, target: Tensor) -> Tensor:
    """The benchmark's loss: mean squared error."""
    return ((out - target) ** 2).mean()


_loss = mse


def training_step(forward: Callable[[], Tensor], params: list[Tensor], target: Tensor):
    """`step() -> (loss, [p.grad])`: clear the gradients, the MSE of `forward()`, one backward."""

    def step():
        for p in params:
            p.grad = None
        loss = _loss(forward(), target)
        loss.backward()
        return loss.detach(), [p.grad for p in params]

    return step


def _params(nets) -> list[Tensor]:
    return [p for k in sorted(nets) for p in nets[k].parameters()]


def way_naive(pb, cfg):
    """`torch.autograd.grad(net(x).sum(), x, create_graph=True)`, as users write it (Hessian rows likewise)."""
    model, x = pb["model"], pb["x"]
    nets = _fresh_nets(pb)

    def forward():
        xx = x.detach().requires_grad_()
        grads, hess = {}, {}
        for k, net in nets.items():
            (g,) = torch.autograd.grad(net(xx).sum(), xx, create_graph=True)
            grads[k] = g
            if model.needs_hessian:
                rows = [torch.autograd.grad(g[:, i].sum(), xx, create_graph=True)[0] for i in range(x.shape[1])]
                hess[k] = torch.stack(rows, 1)
        return model.combine(grads, xx, hess)

    return training_step(forward, _params(nets), pb["target"]), None


def way_torch_func(pb, cfg):
    """`vmap(grad(functional_call(net)))` per sample (`vmap(hessian(...))` for the Hessian)."""
    from torch.func import functional_call, grad, hessian, vmap

    model, x = pb["model"], pb["x"]
    nets = _fresh_nets(pb)
    params = {k: dict(v.named_parameters()) for k, v in nets.items()}

    def forward():
        grads, hess = {}, {}
        for k, net in nets.items():
            def scalar(xi, net=net, p=params[k]):
                return functional_call(net, p, (xi.unsqueeze(0),)).reshape(())

            grads[k] = vmap(grad(scalar))(x)
            if model.needs_hessian:
                hess[k] = vmap(hessian(scalar))(x)
        return model.combine(grads, x, hess)

    return training_step(forward, _params(nets), pb["target"]), None


def _build(pb, cfg, backend: str):
    """`(innergrad module with backend, its scalar networks by name)`, weights from the problem."""
    from ..core.backends import BACKENDS

    if backend != "auto":
        b = BACKENDS.get(backend)
        if b is None:
            raise Unsupported(f"backend {backend!r} is not registered here")
        for net in pb["nets"].values():
            check = b.hessian_unsupported if pb["model"].needs_hessian else b.unsupported
            why = check(net, (pb["x"],), (0,))
            if why:
                raise Unsupported(why)
    nets = _fresh_nets(pb)
    return pb["model"].innergrad_model(nets, cfg, backend), nets


def innergrad_way(pb, cfg, backend: str, fused_at_any_batch: bool = False):
    """The innergrad module with `backend`; `fused_at_any_batch`: the fused single-call operator even
    under `fused_call_min_rows` (the "fused" way shows the operator at every size)."""
    from ..core.settings import settings

    m, nets = _build(pb, cfg, backend)
    x = pb["x"]

    def forward():
        if fused_at_any_batch:
            with settings(fused_call_min_rows=0):
                return m(x)
        return m(x)

    return training_step(forward, _params(nets), pb["target"]), m


def compiled_user_step(loss_of: Callable[[Tensor, Tensor], Tensor], params: list[Tensor], x: Tensor,
                       target: Tensor) -> Callable:
    """A training step as a user compiles it: `torch.compile(fullgraph=True)` of forward, loss and
    `backward()` together; returns `step() -> (loss, [p.grad])`."""

    def user_step(x, target):
        loss = loss_of(x, target)
        loss.backward()
        return loss.detach()

    compiled = torch.compile(user_step, fullgraph=True)

    def step():
        for p in params:
            p.grad = None
        # Dynamo traces backward() only with this switch (read when it traces: the first call).
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            loss = compiled(x, target)
        return loss, [p.grad for p in params]

    return step


def way_compiled_user_step(pb, cfg):
    """torch.compile(fullgraph=True) of the user's whole step (forward, loss, backward()) around the
    default innergrad module (backend "auto")."""
    m, nets = _build(pb, cfg, "auto")
    return compiled_user_step(lambda x, t: _loss(m(x), t), _params(nets), pb["x"], pb["target"]), m


def jax_setup(cfg, activations: tuple[str, ...] = ()):
    """`(jax, jax.numpy, device, activation function)` for a JAX way; Unsupported where JAX, its device
    or a JAX version of the activation is missing. float64 configurations turn on JAX's x64."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as e:
        raise Unsupported("JAX is not installed") from e
    if cfg.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    kind = "gpu" if cfg.device.startswith("cuda") else "cpu"
    try:
        dev = jax.devices(kind)[0]
    except RuntimeError as e:
        raise Unsupported(f"JAX has no {kind} device here") from e
    acts = {"softplus": jax.nn.softplus, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "silu": jax.nn.silu,
            "gelu": lambda a: jax.nn.gelu(a, approximate=False), "sin": jnp.sin, "elu": jax.nn.elu,
            "relu": jax.nn.relu}
    if cfg.activation not in acts:
        raise Unsupported(f"no JAX version of activation {cfg.activation!r}")
    return jax, jnp, dev, acts[cfg.activation]


def jax_mlp(act, layers: int):
    """An `ig.MLP`'s forward in JAX over a dict of its parameters (torch names): `(..., in) -> (...)`."""

    def mlp(pr, z):
        for k in range(layers):
            z = act(z @ pr[f"layers.{k}.weight"].T + pr[f"layers.{k}.bias"])
        out = z @ pr["out.weight"].T
        return (out + pr["out.bias"] if "out.bias" in pr else out)[..., 0]

    return mlp


def jax_step(vg, params, precision: str, dev, grad_list: Callable[[Any], list], device: torch.device):
    """A JAX way's step around a jitted `value_and_grad` `vg`: timed with its results ready, and its
    `convert` to (loss, gradients in the torch parameters' order) on `device` for the agreement check."""
    import jax
    import numpy as np

    def step():
        with jax.default_matmul_precision(precision):
            val, grads = vg(params)
        jax.block_until_ready(grads)
        return val, grads

    def convert(out):
        val, grads = out
        return torch.tensor(float(val)), [torch.from_numpy(np.array(g)).to(device) for g in grad_list(grads)]

    step.convert = convert  # type: ignore[attr-defined]
    step.jax_device = dev  # type: ignore[attr-defined]
    return step


def way_jax(pb, cfg, precision: str = "highest"):
    """`jax.jit(jax.value_and_grad(loss))` with `vmap(grad(net))` (and `vmap(hessian(net))`) inside."""
    import numpy as np

    jax, jnp, dev, act = jax_setup(cfg)
    model, L = pb["model"], cfg.layers

    def put(t):
        return jax.device_put(np.asarray(t.detach().cpu().numpy()), dev)

    order = sorted(pb["nets"])
    names = {k: [n for n, _ in pb["nets"][k].named_parameters()] for k in order}
    params = {k: {n: put(t) for n, t in pb["state"][k].items()} for k in order}
    x, target = put(pb["x"]), put(pb["target"])

    net = jax_mlp(act, L)

    def loss(ps):
        grads = {k: jax.vmap(jax.grad(lambda z, k=k: net(ps[k], z)))(x) for k in order}
        hess = {k: jax.vmap(jax.hessian(lambda z, k=k: net(ps[k], z)))(x) for k in order} \
            if model.needs_hessian else None
        return ((model.jax_combine(jnp, grads, x, hess) - target) ** 2).mean()

    vg = jax.jit(jax.value_and_grad(loss))
    step = jax_step(vg, params, precision, dev, lambda g: [g[k][n] for k in order for n in names[k]],
                    pb["x"].device)
    return step, None


def way_fused_loop(pb, cfg):
    from ..core.settings import settings

    if not cfg.device.startswith("cpu"):
        raise Unsupported("the fused backend's Python loop is its CPU fallback")
    step, m = innergrad_way(pb, cfg, "fused", fused_at_any_batch=True)

    def inside():
        with settings(cpu_kernel=False):
            return step()

    return inside, m


def way_fused(pb, cfg):
    return innergrad_way(pb, cfg, "fused", fused_at_any_batch=True)


def _backend_way(name):
    def way(pb, cfg):
        return innergrad_way(pb, cfg, name)

    way.__name__ = f"way_{name}"
    return way


def way_matmul_floor(pb, cfg):
    """The products of the fused single-call step per scalar network (its forward: u W_k^T per layer,
    the chain's g W_k, g_1 W_1; its backward: gzb W_1^T, the chain's qb W_k^T and ab W_k, dL/dz, and
    two weight-gradient products per layer), through torch.mm: the step's matmul floor."""
    from .harness import matmul_floor_step

    if pb["model"].needs_hessian:
        raise Unsupported("no matmul floor for the Hessian models")
    B, D, w, L = cfg.B, cfg.dim, cfg.width, cfg.layers
    fwd = [(B, D, w, False)] + [(B, w, w, False)] * (L - 1) * 2 + [(B, w, D, False)]
    bwd = [(B, D, w, False)] + [(B, w, w, False)] * (L - 1) * 2 + [(B, w, D, False), (w, B, D, True), (w, B, D, True)]
    bwd += [(w, B, w, True)] * (L - 1) * 2
    step = matmul_floor_step((fwd + bwd) * len(pb["nets"]), 1, cfg.device, getattr(torch, cfg.dtype),
                             "the fused operator's products")
    return step, None


#: Ways of the single-call models (the harness's way names; those not listed do not apply).
WAY_FUNCS: dict[str, Callable] = {
    "naive": way_naive,
    "torch_func": way_torch_func,
    "autograd": _backend_way("autograd"),
    "func": _backend_way("func"),
    "closed_form": _backend_way("closed_form"),
    "auto": _backend_way("auto"),
    "fused": way_fused,
    "fused_loop": way_fused_loop,
    "triton": _backend_way("triton"),
    "compiled_user_step": way_compiled_user_step,
    "jax": way_jax,
    "matmul_floor": way_matmul_floor,
}

__all__ = ["MODELS", "WAY_FUNCS", "make_problem", "SingleCallModel"]
