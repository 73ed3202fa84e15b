"""A lab-like record of a pendulum with friction, for `innergrad experiment hnn --data ... --models baseline,hnn,dhnn`.

Another simulator than examples/pendulum_lab.py (velocity Verlet) and the experiments' scipy: the
classical Runge-Kutta method at a fine fixed step (1e-3) for theta'' = -sin(theta) - gamma theta'
(unit mass, length and gravity; p_theta = theta'), so the energy p^2 / 2 - cos(theta) decays at the
rate gamma. Sampled at jittered, uneven frame times (each frame up to 35% of the interval early or
late), with Gaussian measurement noise on theta and p_theta.

    python examples/pendulum_lab_damped.py examples/data/pendulum_lab_damped.csv
    innergrad experiment hnn --data examples/data/pendulum_lab_damped.csv --time time --state theta,p_theta \\
        --trajectory run --energy "p_theta**2/2 - cos(theta)" --models baseline,hnn,dhnn --seeds 0-4
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _rk4_step(theta: float, p: float, dt: float, gamma: float) -> tuple[float, float]:
    def f(th, pp):
        return pp, -np.sin(th) - gamma * pp

    k1 = f(theta, p)
    k2 = f(theta + 0.5 * dt * k1[0], p + 0.5 * dt * k1[1])
    k3 = f(theta + 0.5 * dt * k2[0], p + 0.5 * dt * k2[1])
    k4 = f(theta + dt * k3[0], p + dt * k3[1])
    return (theta + dt / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0]),
            p + dt / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1]))


def simulate(trajectories: int = 8, points: int = 75, duration: float = 30.0, noise: float = 0.02,
             gamma: float = 0.04, seed: int = 5) -> list[tuple[str, float, float, float]]:
    """Rows `(run, time, theta, p_theta)`: each run from a random state, sampled at jittered frame times."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(trajectories):
        theta, p = rng.uniform(-1.2, 1.2), rng.uniform(-0.8, 0.8)
        step = duration / points  # a nominal frame interval, each frame up to 35% early or late
        t_obs = np.arange(points) * step + rng.uniform(-0.35, 0.35, points) * step
        t_obs[0] = 0.0
        h, t = 1e-3, 0.0
        for t_next in t_obs:
            while t < t_next - 1e-12:
                dt = min(h, t_next - t)
                theta, p = _rk4_step(theta, p, dt, gamma)
                t += dt
            rows.append((f"run{k}", float(t_next), theta + noise * rng.normal(), p + noise * rng.normal()))
    return rows


def write_csv(path: str | Path, **kwargs) -> Path:
    path = Path(path)
    lines = ["run,time,theta,p_theta"] + [f"{r},{t:.6f},{q:.6f},{p:.6f}" for r, t, q, p in simulate(**kwargs)]
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    print(write_csv(sys.argv[1] if len(sys.argv) > 1 else "pendulum_lab_damped.csv"))
