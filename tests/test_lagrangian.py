"""LagrangianNet: the Euler-Lagrange solve against known Lagrangians, its start, training, failures."""

import math

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

import innergrad as ig
from innergrad.core.errors import SingularMatrixError

F64 = torch.float64


class VariableMass(nn.Module):
    """L = sum_i (1 + q_i^2) q_i'^2 / 2 + cos q_i on the state (q, q'): q'' = -(q q'^2 + sin q) / (1 + q^2)."""

    def forward(self, x):
        n = x.shape[-1] // 2
        q, v = x[..., :n], x[..., n:]
        return (0.5 * (1 + q**2) * v**2 + torch.cos(q)).sum(-1)

    @staticmethod
    def qdd(x):
        n = x.shape[-1] // 2
        q, v = x[..., :n], x[..., n:]
        return -(q * v**2 + torch.sin(q)) / (1 + q**2)


def _states(B=6, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 2 * n, generator=g, dtype=F64)


@pytest.mark.parametrize("backend", ["auto", "autograd", "func"])
def test_euler_lagrange_of_a_known_lagrangian(backend):
    x = _states()
    lnn = ig.LagrangianNet(4, L=VariableMass(), backend=backend)
    assert lnn.kinetic == 0.0  # a given L gets no extra term unless asked
    out = lnn(x)
    torch.testing.assert_close(out[:, :2], x[:, 2:])
    torch.testing.assert_close(out[:, 2:], VariableMass.qdd(x))
    # The kinetic term is part of L: a unit mass on top of VariableMass changes q'' exactly so.
    heavy = ig.LagrangianNet(4, L=VariableMass(), kinetic=1.0, backend=backend)
    q, v = x[:, :2], x[:, 2:]
    torch.testing.assert_close(heavy(x)[:, 2:], -(q * v**2 + torch.sin(q)) / (2 + q**2))
    torch.testing.assert_close(heavy.lagrangian(x), VariableMass()(x) + 0.5 * (v**2).sum(-1))
    E = 0.5 * ((2 + q**2) * v**2).sum(-1) - torch.cos(q).sum(-1)
    torch.testing.assert_close(heavy.energy(x), E)


def test_closed_form_and_autodiff_agree_through_training():
    torch.manual_seed(0)
    lnn = ig.LagrangianNet(4, (8, 8)).double()
    x, target = _states(), _states(seed=1)
    out = {}
    for backend in ("closed_form", "autograd", "func"):
        lnn.backend = backend
        y = lnn(x)
        out[backend] = (y, torch.autograd.grad(((y - target) ** 2).sum(), list(lnn.parameters())))
    for backend in ("autograd", "func"):
        torch.testing.assert_close(out[backend][0], out["closed_form"][0])
        for a, b in zip(out[backend][1], out["closed_form"][1]):
            torch.testing.assert_close(a, b)


def test_gradcheck_through_the_solve():
    torch.manual_seed(0)
    lnn = ig.LagrangianNet(2, (5, 4)).double()
    x = _states(B=3, n=1).requires_grad_()
    params = tuple(lnn.parameters())[:-1]

    def fn(x, *ps):
        return lnn(x)

    assert gradcheck(fn, (x, *params))


def test_mass_matrix_starts_positive_definite():
    torch.manual_seed(0)
    x = torch.cat([torch.rand(512, 2) * 6.28 - 3.14, torch.randn(512, 2) * 2], -1)
    eig = torch.linalg.eigvalsh(ig.LagrangianNet(4).mass_matrix(x).detach())
    assert eig.min() > 0.5  # ~ the unit kinetic term: positive definite for every sample
    bare = torch.linalg.eigvalsh(ig.LagrangianNet(4, kinetic=0.0).mass_matrix(x).detach())
    assert bare.abs().max() < 0.2  # PyTorch's init alone: nearly zero (and of either sign)


def test_learns_a_pendulum_in_a_few_hundred_steps():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    q, v = torch.rand(1024, 1, generator=g) * 6.28 - 3.14, torch.randn(1024, 1, generator=g)
    x, y = torch.cat([q, v], -1), torch.cat([v, -torch.sin(q)], -1)
    lnn = ig.LagrangianNet(2)
    opt = torch.optim.Adam(lnn.parameters(), 1e-3)
    for _ in range(300):
        i = torch.randint(0, 768, (256,))
        loss = ((lnn(x[i]) - y[i]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        err = ((lnn(x[768:]) - y[768:])[:, 1] ** 2).mean() / (y[768:, 1] ** 2).mean()
    assert err < 0.02, float(err)


def test_rollout_of_a_spring_and_energy_conservation():
    class Spring(nn.Module):
        def forward(self, x):
            return 0.5 * (x[..., 1] ** 2 - x[..., 0] ** 2)

    lnn = ig.LagrangianNet(2, L=Spring())
    x0 = torch.tensor([[1.0, 0.0]], dtype=F64)
    t = torch.linspace(0, math.pi, 21, dtype=F64)
    path = ig.rollout(lnn, x0, t, method="rk4", substeps=4)
    torch.testing.assert_close(path[:, 0, 0], torch.cos(t), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lnn.rollout(x0, t, substeps=4), path)
    E = lnn.energy(path)
    assert E.shape == (21, 1) and (E - 0.5).abs().max() < 1e-4
    with pytest.raises(ValueError, match="leapfrog.*canonical"):
        lnn.rollout(x0, t, method="leapfrog")


def test_shapes():
    lnn = ig.LagrangianNet(4, (8,))
    assert lnn(torch.randn(4)).shape == (4,)
    assert lnn(torch.randn(3, 5, 4)).shape == (3, 5, 4)
    assert lnn.mass_matrix(torch.randn(3, 5, 4)).shape == (3, 5, 2, 2)
    assert lnn.energy(torch.randn(7, 4)).shape == (7,)


def test_singular_mass_matrix_is_a_named_error_not_nan():
    class NoVelocity(nn.Module):  # d2L/dq'2 = 0 everywhere
        def forward(self, x):
            return torch.cos(x[..., 0]) + 0 * x[..., 1]

    x = _states(B=4, n=1)
    with pytest.raises(SingularMatrixError, match=r"d2L/dq'2 is singular for 4 of 4 sample\(s\).*kinetic=1.0") as e:
        ig.LagrangianNet(2, L=NoVelocity())(x)
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    out = ig.LagrangianNet(2, L=NoVelocity(), kinetic=1.0)(x)
    torch.testing.assert_close(out[:, 1], -torch.sin(x[:, 0]))
    bad = x.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"state holds NaN or inf \(sample 2 of 4"):
        ig.LagrangianNet(2, L=VariableMass())(bad)


def test_spec_rebuilds_and_errors():
    lnn = ig.LagrangianNet(4, (16, 8), activation="tanh", init="lnn")
    spec = lnn.spec()
    assert spec == {"dim": 4, "hidden_layers": [16, 8], "activation": "tanh", "init": "lnn", "kinetic": 1.0,
                    "mode": "exact", "backend": "auto"}
    again = ig.LagrangianNet(**spec)
    again.load_state_dict(lnn.state_dict())
    x = torch.randn(3, 4)
    torch.testing.assert_close(again(x), lnn(x))
    custom = VariableMass()
    assert ig.LagrangianNet(4, L=custom).spec()["L"] is custom
    with pytest.raises(ValueError, match="dim is the state size and must be an even int"):
        ig.LagrangianNet(3)
    with pytest.raises(ValueError, match="init must be one of"):
        ig.LagrangianNet(4, init="xavier")
    with pytest.raises(ValueError, match="kinetic must be a finite float"):
        ig.LagrangianNet(4, kinetic=float("nan"))
    with pytest.raises(ValueError, match=r"expected a state \(q, q'\) of shape \(\.\.\., 4\)"):
        lnn(torch.randn(3, 2))
