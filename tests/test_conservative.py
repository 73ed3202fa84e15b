"""ConservativeField: forces are -dE/dx for every backend, and training on forces and/or energies works."""

import numpy as np
import pytest
import torch
from torch import nn

import innergrad as ig
from innergrad.core.backends import BACKENDS
from innergrad.experiments.mueller_brown import BOX, E_MIN, MINIMA, MuellerBrown

from .problems import skip_unsupported

BACKEND_NAMES = ["auto", *BACKENDS]


def _skip_unsupported(backend, f, args):
    skip_unsupported(backend, f, args if isinstance(args, tuple) else (args,))


def _mb_points(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    (x0, x1), (y0, y1) = BOX
    return torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([x1 - x0, y1 - y0]) + torch.tensor(
        [x0, y0]
    )


def _mb_numpy_gradient(x):
    """Mueller-Brown gradient written independently, in numpy."""
    A = np.array([-200, -100, -170, 15.0])
    a, b, c = np.array([-1, -1, -6.5, 0.7]), np.array([0, 0, 11, 0.6]), np.array([-10, -10, -6.5, 0.7])
    x0, y0 = np.array([1, 0, -0.5, -1.0]), np.array([0, 0.5, 1.5, 1.0])
    dx, dy = x[:, :1] - x0, x[:, 1:] - y0
    e = A * np.exp(a * dx**2 + b * dx * dy + c * dy**2)
    return np.stack(((e * (2 * a * dx + b * dy)).sum(1), (e * (b * dx + 2 * c * dy)).sum(1)), 1)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_mueller_brown_forces_are_minus_the_analytic_gradient(backend):
    x = _mb_points()
    field = ig.ConservativeField(MuellerBrown(), backend=backend)
    _skip_unsupported(backend, field.energy_module, (x,))
    E, F = field(x)
    np.testing.assert_allclose(F.detach().numpy(), -_mb_numpy_gradient(x.numpy()), rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(E, MuellerBrown()(x))
    torch.testing.assert_close(field.forces(x), F)


def test_mueller_brown_minima_and_finite_differences():
    mb = MuellerBrown()
    x = _mb_points(16, seed=3)
    h = 1e-6
    fd = torch.stack([(mb(x + h * e) - mb(x - h * e)) / (2 * h) for e in torch.eye(2, dtype=torch.float64)], 1)
    torch.testing.assert_close(mb.value_and_input_grad(x)[1][0], fd, rtol=1e-6, atol=1e-5)
    m = torch.tensor(MINIMA, dtype=torch.float64)
    assert mb.value_and_input_grad(m)[1][0].abs().max() < 0.5  # minima given to 3 decimals
    assert abs(mb(m[:1]).item() - E_MIN) < 1e-2


class Harmonic(nn.Module):
    """E = 1/2 k |x|^2 over (B, atoms, 3) positions, with a per-sample stiffness passed as context."""

    def forward(self, x, k):
        return 0.5 * k * (x**2).sum((1, 2))


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_user_energy_module_with_context_and_structured_positions(backend):
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    k = torch.rand(5, dtype=torch.float64) + 0.5
    field = ig.ConservativeField(Harmonic(), backend=backend)
    _skip_unsupported(backend, field.energy_module, (x, k))
    E, F = field(x, k)
    assert F.shape == x.shape
    torch.testing.assert_close(F, -k[:, None, None] * x)
    torch.testing.assert_close(E, 0.5 * k * (x**2).sum((1, 2)))


def test_closed_form_mlp_energy_agrees_across_backends():
    torch.manual_seed(0)
    mlp = ig.MLP(2, (16, 16), activation="softplus").double()
    x = _mb_points(32)
    outs = {}
    for b in ("closed_form", "autograd", "func"):
        field = ig.ConservativeField(mlp, backend=b)
        E, F = field(x)
        mlp.zero_grad()
        (F**2).mean().backward()
        outs[b] = (F.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in mlp.parameters()])
    for b in ("autograd", "func"):
        torch.testing.assert_close(outs[b][0], outs["closed_form"][0])
        for g1, g2 in zip(outs[b][1], outs["closed_form"][1]):
            torch.testing.assert_close(g1, g2)


def _fit(targets, steps=150, seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(256, 2, generator=g) * 2 - 1
    E_true = x[:, 0] ** 2 + 3 * x[:, 1] ** 2 + x[:, 0] * x[:, 1]
    F_true = -torch.stack((2 * x[:, 0] + x[:, 1], 6 * x[:, 1] + x[:, 0]), 1)
    field = ig.ConservativeField(ig.MLP(2, (32, 32), activation="softplus"))
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    kw = {"forces": F_true if "forces" in targets else None, "energy": E_true if "energy" in targets else None}

    def force_err():
        with torch.no_grad():
            return ((field.forces(x) - F_true) ** 2).mean().item()

    before = force_err()
    for _ in range(steps):
        loss, parts = field.loss(x, **kw, force_weight=1.0, energy_weight=0.5, return_parts=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, force_err(), parts


@pytest.mark.parametrize(
    "targets, steps, factor", [(("forces",), 150, 0.01), (("energy",), 300, 0.05), (("forces", "energy"), 150, 0.01)]
)
def test_training_reduces_the_force_error(targets, steps, factor):
    # Energies constrain forces only through the fit's smoothness, so energy-only training is slower.
    before, after, parts = _fit(targets, steps)
    assert after < factor * before
    assert set(parts) == set(targets)
    assert all(not v.requires_grad for v in parts.values())


def test_loss_weights_and_energy_only_path():
    field = ig.ConservativeField(Harmonic())
    x, k = torch.randn(3, 2, 3), torch.ones(3)
    F, E = -x, 0.5 * (x**2).sum((1, 2))
    assert field.loss(x, k, forces=F, energy=E).item() == pytest.approx(0.0, abs=1e-12)
    total, parts = field.loss(x, k, forces=F + 1, energy=E + 2, force_weight=3.0, energy_weight=0.5, return_parts=True)
    assert parts["forces"].item() == pytest.approx(1.0)
    assert parts["energy"].item() == pytest.approx(4.0)
    assert total.item() == pytest.approx(3.0 * 1.0 + 0.5 * 4.0)


def test_exact_mode_trains_through_forces_and_detached_mode_does_not():
    torch.manual_seed(0)
    mlp = ig.MLP(2, (8,), activation="softplus")
    x = torch.randn(10, 2)
    F = ig.ConservativeField(mlp).forces(x)
    assert F.requires_grad
    F.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp.layers[0].parameters())
    assert not ig.ConservativeField(mlp, mode="detached").forces(x).requires_grad


def test_loss_input_errors_are_explained():
    field = ig.ConservativeField(MuellerBrown())
    x = _mb_points(4)
    with pytest.raises(ValueError, match="neither"):
        field.loss(x)
    with pytest.raises(ValueError, match="shaped like x"):
        field.loss(x, forces=torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="one per sample"):
        field.loss(x, energy=torch.zeros(4, 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="energy must be a module"):
        ig.ConservativeField(3.0)
    with pytest.raises(ValueError, match="mode"):
        ig.ConservativeField(MuellerBrown(), mode="approx")
