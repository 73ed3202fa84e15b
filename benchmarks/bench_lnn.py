"""One training step of a Lagrangian network, three ways, side by side: `python benchmarks/bench_lnn.py --help`.

Step = q'' = (d2L/dq'2)^-1 (dL/dq - d2L/dq'dq q') per sample, MSE of (q', q'') against a target, backward
to L's parameters, Adam. L = MLP (dim -> width x layers -> 1, softplus, no output bias) + |q'|^2 / 2 (the
kinetic term of `ig.LagrangianNet`), the same weights and batch for every way:

- `innergrad`: `ig.LagrangianNet` (closed-form gradient and Hessian of the MLP, `torch.linalg.solve_ex`);
- `torch_func`: `vmap` over the batch of `jacfwd(grad(L))` (gradient and Hessian from one pass), plain
  `torch.linalg.solve`, `loss.backward()` through it;
- `jax`: `jit(value_and_grad(loss))` with `vmap(jax.hessian(L))` inside and Adam in the same jit
  (skipped when jax is not installed).

Before timing, each way's loss and parameter gradients at the same weights are checked against
innergrad's (relative difference printed; the table says "ok" under --tol). Times are medians over
--reps rounds that interleave the ways (round-robin), so a shared machine's load hits all alike.
Also times the D-HNN's choices (`ig.DissipativeHNN`: two closed-form MLPs, or `shared=True`, one MLP with two
outputs in closed form; against one two-output MLP differentiated by autograd), which its docstring cites.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

import innergrad as ig


def make_data(B: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = dim // 2
    x = torch.cat([torch.rand(B, n, generator=g) * 6.28 - 3.14, torch.randn(B, n, generator=g)], -1)
    y = torch.randn(B, dim, generator=g)
    return x, y


# -- the three ways -------------------------------------------------------------------------------


class InnergradWay:
    name = "innergrad"

    def __init__(self, model: ig.LagrangianNet, lr: float):
        self.model = model
        self.opt = torch.optim.Adam(model.parameters(), lr)

    def loss(self, x, y):
        return ((self.model(x) - y) ** 2).mean()

    def loss_and_grads(self, x, y):
        loss = self.loss(x, y)
        grads = torch.autograd.grad(loss, list(self.model.L.parameters()))
        return float(loss.detach()), [g.detach().clone() for g in grads]

    def step(self, x, y):
        loss = self.loss(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


class TorchFuncWay(InnergradWay):
    name = "torch_func"

    def loss(self, x, y):
        mlp, n = self.model.L, x.shape[-1] // 2

        def lagrangian(z):
            return mlp(z.unsqueeze(0))[0] + 0.5 * (z[n:] ** 2).sum()

        def grad_twice(z):
            g = torch.func.grad(lagrangian)(z)
            return g, g

        H, g = torch.func.vmap(torch.func.jacfwd(grad_twice, has_aux=True))(x)
        v = x[:, n:]
        rhs = g[:, :n] - (H[:, n:, :n] @ v.unsqueeze(-1)).squeeze(-1)
        qdd = torch.linalg.solve(H[:, n:, n:], rhs)
        return ((torch.cat([v, qdd], -1) - y) ** 2).mean()


class JaxWay:
    name = "jax"

    def __init__(self, model: ig.LagrangianNet, lr: float):
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        mlp = model.L
        self.params = [(jnp.asarray(lin.weight.detach().numpy()), jnp.asarray(lin.bias.detach().numpy()))
                       for lin in mlp.layers] + [jnp.asarray(mlp.out.weight.detach().numpy()[0])]
        n = model.dim // 2

        def lagrangian(params, z):
            h = z
            for W, b in params[:-1]:
                h = jax.nn.softplus(W @ h + b)
            return params[-1] @ h + 0.5 * jnp.sum(z[n:] ** 2)

        def qdd(params, z):
            g = jax.grad(lagrangian, 1)(params, z)
            H = jax.hessian(lagrangian, 1)(params, z)
            return jnp.linalg.solve(H[n:, n:], g[:n] - H[n:, :n] @ z[n:])

        def loss(params, x, y):
            pred = jnp.concatenate([x[:, n:], jax.vmap(qdd, (None, 0))(params, x)], -1)
            return jnp.mean((pred - y) ** 2)

        b1, b2, eps = 0.9, 0.999, 1e-8

        @jax.jit
        def step(params, m, v, t, x, y):
            value, grads = jax.value_and_grad(loss)(params, x, y)
            m = jax.tree_util.tree_map(lambda a, g: b1 * a + (1 - b1) * g, m, grads)
            v = jax.tree_util.tree_map(lambda a, g: b2 * a + (1 - b2) * g * g, v, grads)
            scale = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
            params = jax.tree_util.tree_map(lambda p, a, s: p - scale * a / (jnp.sqrt(s) + eps), params, m, v)
            return params, m, v, value

        self._loss_and_grads = jax.jit(jax.value_and_grad(loss))
        self._step = step
        zeros = jax.tree_util.tree_map(jnp.zeros_like, self.params)
        self.m, self.v, self.t = zeros, zeros, 0

    def loss_and_grads(self, x, y):
        value, grads = self._loss_and_grads(self.params, self.jnp.asarray(x.numpy()), self.jnp.asarray(y.numpy()))
        flat = []
        for item in grads:
            flat.extend(item if isinstance(item, tuple) else (item.reshape(1, -1),))
        return float(value), [torch.from_numpy(self.jax.device_get(a).copy()) for a in flat]

    def step(self, x, y):
        self.t += 1
        self.params, self.m, self.v, value = self._step(self.params, self.m, self.v, self.t,
                                                        self.jnp.asarray(x.numpy()), self.jnp.asarray(y.numpy()))
        value.block_until_ready()


# -- D-HNN: two closed-form MLPs against one MLP with two outputs -------------------------------------


class TwoHeads(nn.Module):
    def __init__(self, dim, width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                                 nn.Linear(width, 2, bias=False))

    def forward(self, x):
        x = x if x.requires_grad else x.detach().requires_grad_()
        out = self.net(x)
        gh, = torch.autograd.grad(out[:, 0].sum(), x, create_graph=True)
        gd, = torch.autograd.grad(out[:, 1].sum(), x, create_graph=True)
        return ig.models.hamiltonian.symplectic_gradient(gh) + gd


def dhnn_ways(dim, width, lr):
    torch.manual_seed(0)
    return {"dhnn_two_mlps": InnergradWay(ig.DissipativeHNN(dim, (width, width)), lr),
            "dhnn_shared": InnergradWay(ig.DissipativeHNN(dim, (width, width), shared=True), lr),
            "dhnn_one_mlp_2_outputs": InnergradWay(TwoHeads(dim, width), lr)}


# -- timing -----------------------------------------------------------------------------------------


def rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = math.sqrt(sum(float(((x.double() - y.double().reshape(x.shape)) ** 2).sum()) for x, y in zip(a, b)))
    return num / max(math.sqrt(sum(float((x.double() ** 2).sum()) for x in a)), 1e-30)


def time_ways(ways: dict, x, y, reps: int, warmup: int) -> dict[str, float]:
    for w in ways.values():
        for _ in range(warmup):
            w.step(x, y)
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(reps):
        for k, w in ways.items():
            t0 = time.perf_counter()
            w.step(x, y)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def lnn_ways(dim, width, layers, lr, with_jax):
    torch.manual_seed(0)
    model = ig.LagrangianNet(dim, (width,) * layers, activation="softplus")
    twin = ig.LagrangianNet(dim, (width,) * layers, activation="softplus")
    twin.load_state_dict(model.state_dict())
    ways = {"innergrad": InnergradWay(model, lr), "torch_func": TorchFuncWay(twin, lr)}
    if with_jax:
        try:
            ways["jax"] = JaxWay(model, lr)
        except ImportError:
            print("(jax not installed: `pip install jax jaxlib` adds its column)")
    return ways


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[256, 4096])
    p.add_argument("--dim", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tol", type=float, default=1e-4, help="largest relative difference of loss and gradients")
    p.add_argument("--no-jax", action="store_true")
    p.add_argument("--no-dhnn", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"LNN step: dim {a.dim}, MLP {a.layers}x{a.width} softplus, Adam; median of {a.reps} interleaved rounds; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'batch':>6} {'way':<24} {'ms/step':>9} {'vs innergrad':>13} {'loss, grads vs innergrad':>26}")
    for B in a.batch:
        x, y = make_data(B, a.dim)
        ways = lnn_ways(a.dim, a.width, a.layers, 1e-3, not a.no_jax)
        ref_loss, ref_grads = ways["innergrad"].loss_and_grads(x, y)
        checks = {}
        for k, w in ways.items():
            loss, grads = w.loss_and_grads(x, y)
            d = max(abs(loss - ref_loss) / abs(ref_loss), rel_diff(ref_grads, grads))
            checks[k] = f"{d:.1e} {'ok' if d <= a.tol else 'DIFFERS'}"
        med = time_ways(ways, x, y, a.reps, a.warmup)
        for k in ways:
            ratio = med[k] / med["innergrad"]
            print(f"{B:>6} {k:<24} {1e3 * med[k]:>9.2f} {ratio:>12.2f}x {checks[k]:>26}")
    if not a.no_dhnn:
        print("\nD-HNN step: dim 2, MLPs 2x200 tanh: two MLPs (closed form), one with two outputs in closed form "
              "(shared=True), one with two outputs by autograd")
        for B in a.batch:
            x, y = make_data(B, 2)
            ways = dhnn_ways(2, 200, 1e-3)
            med = time_ways(ways, x, y, a.reps, a.warmup)
            for k in ways:
                print(f"{B:>6} {k:<24} {1e3 * med[k]:>9.2f} {med[k] / med['dhnn_two_mlps']:>12.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
