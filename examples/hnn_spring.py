"""A Hamiltonian neural network on the ideal spring: learn H from noisy data, roll out, check energy.

    python examples/hnn_spring.py

The data follow Greydanus et al. (2019): H = q^2 + p^2, noisy states, exact time derivatives. A
baseline MLP predicts dx/dt directly; the HNN predicts one number, H, and its dynamics are
(dH/dp, -dH/dq). Both are rolled out far beyond the training window with `ig.rollout`; the HNN
keeps the energy, the baseline drifts. For the paper's full protocol and plots run
`innergrad experiment hnn --task spring`.
"""

import math

import torch
from torch import nn

import innergrad as ig

torch.set_num_threads(1)  # these 200-wide nets run fastest on one CPU thread


def make_data(trajectories=50, points=30, noise=0.1, seed=0):
    # H = q^2 + p^2 is solved exactly: (q, p) rotates clockwise at angular frequency 2.
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 3, points)
    r = 0.1 + 0.9 * torch.rand(trajectories, 1, generator=g)
    phase = 2 * math.pi * torch.rand(trajectories, 1, generator=g)
    q, p = r * torch.cos(2 * t + phase), -r * torch.sin(2 * t + phase)
    dxdt = torch.stack((2 * p, -2 * q), -1).reshape(-1, 2)  # exact, at the clean states
    x = torch.stack((q, p), -1).reshape(-1, 2) + noise * torch.randn(trajectories * points, 2, generator=g)
    half = trajectories * points // 2
    return (x[:half], dxdt[:half]), (x[half:], dxdt[half:])


def train(model, data, steps=1000):
    x, dxdt = data
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(steps):
        loss = ((model(x) - dxdt) ** 2).mean()  # for the HNN this trains H through its gradient
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def main(steps=1000, t_end=100.0, width=200):
    train_set, (test_x, test_dxdt) = make_data()
    torch.manual_seed(0)
    hnn = train(ig.HamiltonianNet(2, hidden_layers=(width, width)), train_set, steps)
    torch.manual_seed(0)
    baseline = train(nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                                   nn.Linear(width, 2, bias=False)), train_set, steps)

    x0 = torch.tensor([[0.75, 0.0]])
    t = torch.linspace(0, t_end, round(10 * t_end) + 1)  # the training trajectories covered t in [0, 3]
    true_energy = (x0**2).sum().item()
    errors = {}
    print("mean relative error of the true energy along a rollout from (0.75, 0), first vs last 10 time units:")
    print(f"{'model':9s} {'test MSE':>9s}  {'integrator':10s} {'first':>8s} {'last':>8s}")
    for name, model in (("baseline", baseline), ("HNN", hnn)):
        with torch.no_grad():  # rollouts need no graph; the HNN still computes its gradient
            test_mse = ((model(test_x) - test_dxdt) ** 2).mean().item()
            for method in ("rk4", "leapfrog"):
                # A learned H is not separable: a few fixed-point iterations make the leapfrog the
                # (implicit) Stormer-Verlet method, symplectic for any H.
                path = ig.rollout(model, x0, t, method=method, substeps=2, implicit_iters=2)
                err = ((path**2).sum(-1).squeeze(-1) - true_energy).abs() / true_energy
                errors[name, method] = (err[:101].mean().item(), err[-101:].mean().item())
                print(f"{name:9s} {test_mse:9.2e}  {method:10s} {errors[name, method][0]:8.2%} "
                      f"{errors[name, method][1]:8.2%}")

    # The learned H is the model's own energy: its symplectic rollout keeps it (nearly) constant.
    with torch.no_grad():
        H = hnn.hamiltonian(hnn.rollout(x0, t, method="leapfrog", substeps=2, implicit_iters=2))
    print(f"learned H along the HNN's leapfrog rollout to t = {t_end:g}: spread {(H.max() - H.min()).item():.1e}")
    return errors

if __name__ == "__main__":
    main()
