"""HamiltonianNet against known Hamiltonians, and the integrators' order, symplecticity and gradients."""

import math
import warnings

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call

import innergrad as ig
from innergrad.core.backends import BACKENDS

from .problems import skip_unsupported

BACKEND_NAMES = ["auto", *BACKENDS]


def _skip_unsupported(backend, f, args):
    skip_unsupported(backend, f, args if isinstance(args, tuple) else (args,))


class QuadraticH(nn.Module):
    """H(x) = 1/2 x^T A x: J grad H = J A x exactly."""

    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A)

    def forward(self, x):
        return 0.5 * ((x @ self.A) * x).sum(-1)


def _J(n, dtype=torch.float64):
    z, i = torch.zeros(n, n, dtype=dtype), torch.eye(n, dtype=dtype)
    return torch.cat((torch.cat((z, i), 1), torch.cat((-i, z), 1)), 0)


def pendulum_field(x):
    """H = 3 (1 - cos q) + p^2 (separable): (2p, -3 sin q)."""
    return torch.stack((2 * x[..., 1], -3 * torch.sin(x[..., 0])), -1)


def pendulum_H(x):
    return 3 * (1 - torch.cos(x[..., 0])) + x[..., 1] ** 2


def tiny_hnn(dim=2, hidden=(8,), seed=0, **kw):
    torch.manual_seed(seed)
    return ig.HamiltonianNet(dim, hidden, **kw).double()


# ---------------------------------------------------------------- HamiltonianNet


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_known_quadratic_hamiltonian_gives_J_grad_H(backend):
    g = torch.Generator().manual_seed(0)
    n = 3
    M = torch.randn(2 * n, 2 * n, generator=g, dtype=torch.float64)
    A = M @ M.T + torch.eye(2 * n, dtype=torch.float64)
    x = torch.randn(7, 2 * n, generator=g, dtype=torch.float64)
    net = ig.HamiltonianNet(2 * n, H=QuadraticH(A), backend=backend)
    _skip_unsupported(backend, net.H, x)
    H, dxdt = net.value_and_time_derivative(x)
    torch.testing.assert_close(dxdt, x @ A @ _J(n).T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(H, 0.5 * ((x @ A) * x).sum(-1))
    torch.testing.assert_close(net(x), dxdt)


def test_spring_hamiltonian_gives_2p_minus_2q():
    class Spring(nn.Module):
        def forward(self, x):
            return (x**2).sum(-1)

    x = torch.tensor([[0.3, -0.7], [1.0, 2.0]], dtype=torch.float64)
    out = ig.HamiltonianNet(2, H=Spring())(x)
    torch.testing.assert_close(out, torch.stack((2 * x[:, 1], -2 * x[:, 0]), -1))


@pytest.mark.parametrize("backend", [b for b in BACKEND_NAMES if b != "auto"])
def test_every_backend_gives_the_same_derivatives_and_parameter_gradients(backend):
    net = tiny_hnn(dim=4, hidden=(16, 16))
    x = torch.randn(9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _skip_unsupported(backend, net.H, x)
    target = torch.randn(9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def run(b):
        net.backend = b
        net.zero_grad()
        out = net(x)
        ((out - target) ** 2).mean().backward()
        return out.detach(), [p.grad.clone() for p in net.parameters()]

    ref_out, ref_grads = run("autograd")
    out, grads = run(backend)
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-11)
    for g_, r_ in zip(grads, ref_grads):
        torch.testing.assert_close(g_, r_, rtol=1e-8, atol=1e-10)


def test_default_network_is_the_papers_and_qualifies_for_closed_form():
    from innergrad.core.backends import choose_backend

    net = ig.HamiltonianNet(2)
    assert isinstance(net.H, ig.MLP)
    assert [lin.out_features for lin in net.H.layers] == [200, 200]
    assert net.H.out.bias is None and net.H.activation_name == "tanh"
    x = torch.zeros(3, 2)
    assert BACKENDS["closed_form"].unsupported(net.H, (x,), (0,)) is None
    # "auto" may prefer a faster registered path, but never the generic autograd ones.
    assert choose_backend(net.H, (x,), (0,)).name not in ("autograd", "func")


def test_learned_flow_conserves_the_learned_energy():
    # dH/dt = grad H . J grad H = 0 for any H: the structure, not the training, conserves energy.
    net = tiny_hnn(dim=4, hidden=(16,))
    x = torch.randn(20, 4, dtype=torch.float64).requires_grad_()
    (gradH,) = torch.autograd.grad(net.hamiltonian(x).sum(), x)
    dHdt = (gradH * net(x)).sum(-1)
    assert dHdt.abs().max() < 1e-12


def test_any_leading_shape_and_single_states():
    net = tiny_hnn(dim=2)
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    out = net(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out[1], net(x[1]))
    torch.testing.assert_close(net(x[1, 2]), out[1, 2])
    assert net.hamiltonian(x).shape == (3, 5)
    assert net.hamiltonian(x[0, 0]).shape == ()


def test_bad_dimensions_are_explained():
    with pytest.raises(ValueError, match="even"):
        ig.HamiltonianNet(3)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        ig.HamiltonianNet(4, (8,))(torch.zeros(2, 3))


def test_detached_mode_gives_a_constant_derivative():
    net = tiny_hnn(mode="detached")
    out = net(torch.randn(4, 2, dtype=torch.float64))
    assert not out.requires_grad


def test_training_on_spring_derivatives_learns_the_field():
    torch.manual_seed(0)
    net = ig.HamiltonianNet(2, (32,))
    x = torch.rand(256, 2) * 2 - 1
    dx = torch.stack((2 * x[:, 1], -2 * x[:, 0]), -1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(300):
        loss = ((net(x) - dx) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-2 * first


# ---------------------------------------------------------------- integrators


def _energy_error(dt, steps):
    x0 = torch.tensor([[1.5, 0.0], [0.3, 1.0]], dtype=torch.float64)
    traj = ig.leapfrog(pendulum_field, x0, dt, steps)
    return (pendulum_H(traj) - pendulum_H(x0)).abs().max().item()


def test_leapfrog_conserves_energy_to_second_order_without_drift():
    e1, e2 = _energy_error(0.02, 500), _energy_error(0.01, 1000)  # same horizon, t = 10
    assert 3.5 < e1 / e2 < 4.5
    # Symplectic: the error stays bounded over a 10x longer horizon instead of growing.
    assert _energy_error(0.02, 5000) < 1.5 * e1


def test_rk4_drifts_where_leapfrog_does_not():
    x0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    dt, steps = 0.2, 2000
    drift_rk4 = (pendulum_H(ig.rk4(pendulum_field, x0, dt, steps))[-1] - pendulum_H(x0)).abs().item()
    drift_lf = (pendulum_H(ig.leapfrog(pendulum_field, x0, dt, steps))[-1] - pendulum_H(x0)).abs().item()
    assert drift_lf < drift_rk4


def test_leapfrog_is_time_reversible():
    x0 = torch.tensor([[1.2, -0.4], [0.1, 0.9]], dtype=torch.float64)
    fwd = ig.leapfrog(pendulum_field, x0, 0.05, 400)[-1]
    back = ig.leapfrog(pendulum_field, fwd, -0.05, 400)[-1]
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-11)


def test_implicit_leapfrog_is_reversible_for_a_learned_non_separable_H():
    net = tiny_hnn(hidden=(8,), seed=3)
    x0 = torch.randn(3, 2, dtype=torch.float64)
    fwd = ig.leapfrog(net, x0, 0.05, 20, implicit_iters=25)[-1]
    back = ig.leapfrog(net, fwd, -0.05, 20, implicit_iters=25)[-1]
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-9)


def _reference(x0, T):
    # RK4 at a tiny step is exact to ~1e-14 here.
    return ig.rk4(pendulum_field, x0, T / 4000, 4000)[-1]


@pytest.mark.parametrize("method, order", [("rk4", 4), ("leapfrog", 2), ("euler", 1)])
def test_integrators_converge_at_their_order(method, order):
    x0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    T = 2.0
    ref = _reference(x0, T)
    errs = [(ig.integrate(pendulum_field, x0, T / n, n, method)[-1] - ref).norm().item() for n in (100, 200)]
    ratio = errs[0] / errs[1]
    assert 0.75 * 2**order < ratio < 1.25 * 2**order, (errs, ratio)


def test_rollout_matches_integrate_and_handles_uneven_times():
    x0 = torch.tensor([[1.0, 0.5], [0.2, -0.3]], dtype=torch.float64)
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    out = ig.rollout(pendulum_field, x0, t, method="rk4", substeps=4)
    assert out.shape == (5, 2, 2)
    torch.testing.assert_close(out, ig.rk4(pendulum_field, x0, 1 / 16, 16)[::4])
    uneven = ig.rollout(pendulum_field, x0, [0.0, 0.1, 0.5, 1.5], method="rk4", substeps=50)
    torch.testing.assert_close(uneven[-1], _reference(x0, 1.5), rtol=0, atol=1e-6)
    assert torch.equal(ig.rollout(pendulum_field, x0, [0.0])[0], x0)


def test_rollout_of_a_batch_equals_single_rollouts():
    net = tiny_hnn(dim=4, hidden=(8,))
    x0 = torch.randn(3, 4, dtype=torch.float64)
    t = torch.linspace(0, 0.5, 6, dtype=torch.float64)
    batch = net.rollout(x0, t, method="leapfrog", substeps=2)
    for i in range(3):
        torch.testing.assert_close(batch[:, i], net.rollout(x0[i : i + 1], t, substeps=2)[:, 0])


@pytest.mark.parametrize("method", ["leapfrog", "rk4"])
def test_rollouts_are_differentiable_gradcheck(method):
    net = tiny_hnn(hidden=(3,), seed=1)
    x0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    t = [0.0, 0.1, 0.2, 0.3]
    assert gradcheck(lambda x: net.rollout(x, t, method=method), (x0,))

    # ... and w.r.t. the parameters of H, through the second derivatives.
    params = dict(net.named_parameters())
    name = "H.layers.0.weight"
    w = params[name].detach().clone().requires_grad_()

    def through_weight(w_):
        return functional_call(net, {**params, name: w_}, (x0.detach(),))

    assert gradcheck(through_weight, (w,))
    assert gradcheck(
        lambda w_: ig.rollout(lambda x: functional_call(net, {**params, name: w_}, (x,)), x0.detach(), t, method),
        (w,),
    )


def test_integrator_errors_are_explained():
    with pytest.raises(ValueError, match="even"):
        ig.leapfrog(lambda x: x, torch.zeros(2, 3), 0.1, 1)
    with pytest.raises(ValueError, match="method"):
        ig.rollout(pendulum_field, torch.zeros(1, 2), [0, 1], method="midpoint")
    with pytest.raises(ValueError, match="same shape"):
        ig.rk4(lambda x: x[:, :1], torch.zeros(1, 2), 0.1, 1)
    with pytest.raises(ValueError, match="1-D"):
        ig.rollout(pendulum_field, torch.zeros(1, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="substeps"):
        ig.rollout(pendulum_field, torch.zeros(1, 2), [0, 1], substeps=0)
    with pytest.raises(TypeError, match="floating"):
        ig.rk4(pendulum_field, torch.zeros(1, 2, dtype=torch.long), 0.1, 1)


def test_leapfrog_symplectic_map_preserves_area():
    # The one-step map of a symplectic integrator has Jacobian determinant 1 (in 2-D: area).
    x = torch.tensor([0.7, -0.2], dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda z: ig.leapfrog(pendulum_field, z[None], 0.3, 5)[-1, 0], x)
    assert math.isclose(torch.linalg.det(J).item(), 1.0, rel_tol=0, abs_tol=1e-12)
    Jrk = torch.autograd.functional.jacobian(lambda z: ig.rk4(pendulum_field, z[None], 0.3, 5)[-1, 0], x)
    assert abs(torch.linalg.det(Jrk).item() - 1.0) > 1e-6


# ---- issue 24.7: integrators check their inputs and never return a diverged path silently

def test_integrators_refuse_non_finite_inputs_and_warn_on_divergence():
    from innergrad.models.integrators import DivergedWarning

    field = lambda x: torch.cat((x[..., 1:], -x[..., :1]), -1)  # noqa: E731  (a spring)
    x0 = torch.tensor([[1.0, 0.0]])
    with pytest.raises(ValueError, match="x0 holds NaN or infinite values"):
        ig.integrate(field, torch.tensor([[float("nan"), 0.0]]), 0.1, 3)
    with pytest.raises(ValueError, match="dt must be a finite number"):
        ig.integrate(field, x0, float("inf"), 3)
    with pytest.raises(ValueError, match="t holds NaN or infinite times"):
        ig.rollout(field, x0, [0.0, float("nan")])
    blow_up = lambda x: x * x * 1e30  # noqa: E731
    with pytest.warns(DivergedWarning, match=r"NaN or infinite from output step \d+ on"):
        path = ig.rollout(blow_up, x0, torch.linspace(0, 10, 6), method="rk4")
    assert not torch.isfinite(path).all()  # returned as computed, for a training loop's NaN policy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ig.integrate(field, x0, torch.tensor(0.1), 3)  # a 0-d tensor dt is a number too; no warning
