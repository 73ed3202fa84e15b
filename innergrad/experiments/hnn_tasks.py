"""Datasets of the Hamiltonian Neural Networks paper (Greydanus, Dzamba & Yosinski, NeurIPS 2019).

The generators follow the paper's released code (github.com/greydanus/hamiltonian-nn) so that the
numbers can be compared: the same Hamiltonians, time grids, radii, noise and, with the same seed,
the same random draws in the same order (`np.random.RandomState(seed)` yields the stream that
`np.random.seed(seed)` gives their module-level calls). Everything here is numpy/scipy, float64.

States are canonical, `x = [q, p]`: `(q, p)` for the 1-D systems and
`[x1, x2, y1, y2, vx1, vx2, vy1, vy2]` for two unit masses (momentum = velocity).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


def _solve_ivp():
    try:
        from scipy.integrate import solve_ivp
    except ImportError as e:  # scipy is in the `train` extra
        raise ImportError(
            "the HNN experiments integrate exact trajectories with scipy; install it with "
            "`pip install 'innergrad[train]'`"
        ) from e
    return solve_ivp


# ---------------------------------------------------------------- 1-D systems: spring and pendulum


def spring_hamiltonian(x: Array) -> Array:
    """`H = q^2 + p^2` for `x[..., 0] = q`, `x[..., 1] = p`."""
    return x[..., 0] ** 2 + x[..., 1] ** 2


def spring_dynamics(x: Array) -> Array:
    """`(dH/dp, -dH/dq) = (2p, -2q)`."""
    return np.stack((2 * x[..., 1], -2 * x[..., 0]), -1)


def pendulum_hamiltonian(x: Array) -> Array:
    """`H = 3 (1 - cos q) + p^2` (the released code's pendulum; the issue's H)."""
    return 3 * (1 - np.cos(x[..., 0])) + x[..., 1] ** 2


def pendulum_dynamics(x: Array) -> Array:
    """`(dH/dp, -dH/dq) = (2p, -3 sin q)`."""
    return np.stack((2 * x[..., 1], -3 * np.sin(x[..., 0])), -1)


def _radius_state(rng: np.random.RandomState, r_low: float, r_high: float) -> Array:
    # A uniform point in [-1, 1]^2 rescaled to a radius ~ U[r_low, r_high]: the paper's draw order.
    y0 = rng.rand(2) * 2 - 1
    radius = rng.rand() * (r_high - r_low) + r_low
    return y0 / np.sqrt((y0**2).sum()) * radius


# ---------------------------------------------------------------- two bodies


def two_body_hamiltonian(x: Array) -> Array:
    """`H = 0.5 * sum v^2 - 1 / r` for two unit masses, G = 1."""
    r = np.hypot(x[..., 0] - x[..., 1], x[..., 2] - x[..., 3])
    return 0.5 * (x[..., 4:] ** 2).sum(-1) - 1.0 / r


def two_body_dynamics(x: Array) -> Array:
    """`(dq/dt, dp/dt) = (v, Newtonian gravity)` in the `[x1, x2, y1, y2, vx1, vx2, vy1, vy2]` layout."""
    dx = x[..., 1] - x[..., 0]
    dy = x[..., 3] - x[..., 2]
    r3 = (dx * dx + dy * dy) ** 1.5
    ax, ay = dx / r3, dy / r3  # acceleration of body 1; body 2 gets the opposite
    return np.concatenate((x[..., 4:], np.stack((ax, -ax, ay, -ay), -1)), -1)


def two_body_state(
    rng: np.random.RandomState, orbit_noise: float = 5e-2, min_radius: float = 0.5, max_radius: float = 1.5
) -> Array:
    """A near-circular orbit: body 1 at `U[min, max]^2` with the circular-orbit velocity scaled by
    `1 + orbit_noise * N(0, 1)`, body 2 mirrored through the origin (zero total momentum)."""
    pos = rng.rand(2) * (max_radius - min_radius) + min_radius
    r = np.sqrt((pos**2).sum())
    vel = np.flipud(pos) / (2 * r**1.5)
    vel[0] *= -1
    vel = vel * (1 + orbit_noise * rng.randn())
    return np.array([pos[0], -pos[0], pos[1], -pos[1], vel[0], -vel[0], vel[1], -vel[1]])


# ---------------------------------------------------------------- tasks


@dataclass(frozen=True)
class HNNTask:
    """One system of the paper: its physics, its dataset protocol and its evaluation protocol."""

    name: str
    title: str
    dim: int
    hamiltonian: Callable[[Array], Array]
    dynamics: Callable[[Array], Array]
    sample_state: Callable[[np.random.RandomState], Array]
    state_desc: str  # how sample_state draws, for reports
    # dataset
    trajectories: int
    points: int
    t_span: tuple[float, float]
    noise_std: float
    rtol: float
    test_fraction: float
    test_first: bool  # the released two-body code puts the first 20% in the test split
    # training
    steps: int
    batch_size: int | None  # None: full batch
    weight_decay: float
    # energy evaluation
    eval_t_span: tuple[float, float]
    eval_points: int


TASKS: dict[str, HNNTask] = {
    "spring": HNNTask(
        name="spring",
        title="Ideal mass-spring",
        dim=2,
        hamiltonian=spring_hamiltonian,
        dynamics=spring_dynamics,
        sample_state=lambda rng: _radius_state(rng, 0.1, 1.0),
        state_desc="a uniform point in [-1, 1]^2 rescaled to radius r ~ U[0.1, 1.0]",
        trajectories=50,
        points=30,
        t_span=(0.0, 3.0),
        noise_std=0.1,
        rtol=1e-10,
        test_fraction=0.5,
        test_first=False,
        steps=2000,
        batch_size=None,
        weight_decay=1e-4,
        eval_t_span=(0.0, 20.0),
        eval_points=100,
    ),
    "pendulum": HNNTask(
        name="pendulum",
        title="Ideal pendulum",
        dim=2,
        hamiltonian=pendulum_hamiltonian,
        dynamics=pendulum_dynamics,
        sample_state=lambda rng: _radius_state(rng, 1.3, 2.3),
        state_desc="a uniform point in [-1, 1]^2 rescaled to radius r ~ U[1.3, 2.3]",
        trajectories=50,
        points=45,
        t_span=(0.0, 3.0),
        noise_std=0.1,
        rtol=1e-10,
        test_fraction=0.5,
        test_first=False,
        steps=2000,
        batch_size=None,
        weight_decay=1e-4,
        eval_t_span=(0.0, 20.0),
        eval_points=100,
    ),
    "two-body": HNNTask(
        name="two-body",
        title="Two-body problem",
        dim=8,
        hamiltonian=two_body_hamiltonian,
        dynamics=two_body_dynamics,
        sample_state=two_body_state,
        state_desc=("body 1 at U[0.5, 1.5]^2 with the circular-orbit velocity times 1 + 0.05 N(0, 1), "
                    "body 2 mirrored through the origin"),
        trajectories=1000,
        points=50,
        t_span=(0.0, 20.0),
        noise_std=0.0,
        rtol=1e-9,
        test_fraction=0.2,
        test_first=True,
        steps=10_000,
        batch_size=200,
        weight_decay=0.0,
        eval_t_span=(0.0, 25.0),
        eval_points=500,
    ),
}


def exact_trajectory(task: HNNTask, y0: Array, t_span, t_eval: Array, rtol: float) -> Array:
    """The true trajectory from `y0` at times `t_eval`, shape `(len(t_eval), dim)` (scipy RK45)."""
    sol = _solve_ivp()(lambda t, y: task.dynamics(y), t_span, y0, t_eval=t_eval, rtol=rtol)
    if not sol.success:
        raise RuntimeError(f"{task.name}: exact integration failed from {y0}: {sol.message}")
    return sol.y.T


def make_dataset(task: HNNTask, seed: int = 0, trajectories: int | None = None) -> dict[str, Array]:
    """The paper's dataset for `task`: noisy states and exact time derivatives at the clean states.

    Returns float64 arrays `x`, `dx` (train) and `test_x`, `test_dx`, each `(N, dim)`, plus `t`
    (the time grid of one trajectory). Trajectories are drawn in order with
    `np.random.RandomState(seed)`: initial state, exact integration (`solve_ivp`, rtol per task),
    derivatives at the clean points, then Gaussian noise on q and on p. The split is by trajectory.
    """
    n_traj = task.trajectories if trajectories is None else trajectories
    rng = np.random.RandomState(seed)
    t = np.linspace(task.t_span[0], task.t_span[1], task.points)
    xs, dxs = [], []
    for _ in range(n_traj):
        y0 = task.sample_state(rng)
        clean = exact_trajectory(task, y0, task.t_span, t, task.rtol)
        dxs.append(task.dynamics(clean))
        observed = clean
        if task.noise_std:
            # Noise on every q first, then on every p: the released code's draw order.
            n = task.dim // 2
            q = clean[:, :n] + rng.randn(len(t), n) * task.noise_std
            p = clean[:, n:] + rng.randn(len(t), n) * task.noise_std
            observed = np.concatenate((q, p), 1)
        xs.append(observed)
    n_test = int(round(n_traj * task.test_fraction))
    if task.test_first:
        test_idx, train_idx = slice(0, n_test), slice(n_test, n_traj)
    else:
        train_idx, test_idx = slice(0, n_traj - n_test), slice(n_traj - n_test, n_traj)
    return {
        "x": np.concatenate(xs[train_idx]),
        "dx": np.concatenate(dxs[train_idx]),
        "test_x": np.concatenate(xs[test_idx]),
        "test_dx": np.concatenate(dxs[test_idx]),
        "t": t,
    }
