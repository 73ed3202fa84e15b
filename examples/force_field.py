"""Learn a potential energy from noisy forces with `ig.ConservativeField` (Mueller-Brown, 2-D).

    python examples/force_field.py

The model is an energy E(x); its forces are -dE/dx, so they are curl-free and consistent with the
energy by construction. Training uses forces only (as from a force-matching simulation); the
energy then comes out up to a constant. For plots and the full report run
`innergrad experiment forces`.
"""

import torch
from torch import nn

import innergrad as ig

torch.set_num_threads(1)  # small nets run fastest on one CPU thread

A = torch.tensor([-200.0, -100.0, -170.0, 15.0])
a, b, c = torch.tensor([-1.0, -1, -6.5, 0.7]), torch.tensor([0.0, 0, 11, 0.6]), torch.tensor([-10.0, -10, -6.5, 0.7])
X0, Y0 = torch.tensor([1.0, 0, -0.5, -1]), torch.tensor([0.0, 0.5, 1.5, 1])


def mueller_brown(x):
    """The Mueller-Brown potential, (B, 2) -> (B,)."""
    dx, dy = x[:, :1] - X0, x[:, 1:] - Y0
    return (A * torch.exp(a * dx * dx + b * dx * dy + c * dy * dy)).sum(-1)


class Energy(nn.Module):
    """Your own energy module: an MLP on standardised coordinates, in the data's energy units."""

    def __init__(self, center, width, scale):
        super().__init__()
        self.mlp = ig.MLP(2, hidden_layers=(128, 128), activation="softplus")
        self.register_buffer("center", center)
        self.register_buffer("width", width)
        self.scale = scale

    def forward(self, x):
        return self.scale * self.mlp((x - self.center) / self.width)


def sample(n, gen):
    # Uniform in the usual window, keeping the region below E = 100 (the corners rise to ~3000).
    lo, hi = torch.tensor([-1.5, -0.2]), torch.tensor([1.2, 2.0])
    x = lo + (hi - lo) * torch.rand(4 * n, 2, generator=gen)
    return x[mueller_brown(x) < 100][:n]


def main(steps=2000):
    gen = torch.Generator().manual_seed(0)
    x = sample(1000, gen)
    exact = ig.ConservativeField(mueller_brown)  # a plain function works as the energy too
    with torch.no_grad():
        E_ref, F_ref = exact(x)  # the reference forces, -dE/dx by autograd
    F_noisy = F_ref + 0.1 * F_ref.pow(2).mean().sqrt() * torch.randn(F_ref.shape, generator=gen)

    torch.manual_seed(0)
    field = ig.ConservativeField(Energy(torch.tensor([-0.15, 0.9]), torch.tensor([1.35, 1.1]), E_ref.std().item()))
    opt = torch.optim.Adam(field.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-5)
    weight = 1.0 / F_noisy.var().item()  # a dimensionless loss
    for step in range(steps + 1):
        loss = field.loss(x, forces=F_noisy, force_weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0:
            print(f"step {step:5d}  normalised force loss {loss.item():.4f}")

    test = sample(2000, gen)
    with torch.no_grad():
        E_true, F_true = exact(test)
        E_pred, F_pred = field(test)
    offset = (E_pred - E_true).mean()  # forces fix the energy only up to a constant
    energy_rmse = ((E_pred - offset - E_true) ** 2).mean().sqrt().item()
    force_rmse = ((F_pred - F_true) ** 2).mean().sqrt().item()
    relative = ((F_pred - F_true).norm() / F_true.norm()).item()
    print(f"energy RMSE {energy_rmse:.2f} (energies spread {E_true.std().item():.1f})")
    print(f"force RMSE {force_rmse:.2f} (noise std in the data {(F_noisy - F_ref).std().item():.1f}), "
          f"relative {relative:.1%}")
    return {"energy_rmse": energy_rmse, "energy_std": E_true.std().item(), "force_relative": relative}


if __name__ == "__main__":
    main()
