"""Ground truth of the Lagrangian and dissipative experiments: the double pendulum and the damped spring.

Numpy, float64, exact formulas (no learned part). States are `(..., 4)` = `(theta1, theta2, omega1,
omega2)` for the double pendulum (angles from the vertical, unit masses and lengths, g = 9.8: the
LNN paper's `experiment_dblpend/physics.py`), and `(..., 2)` = `(q, p)` for the damped spring
(unit mass and stiffness, friction `rho`: `H = (q^2 + p^2) / 2`, Rayleigh function `R = rho p^2 / 2`,
`dq/dt = p`, `dp/dt = -q - rho p`, as in the D-HNN paper's damped mass-spring).
"""

from __future__ import annotations

import numpy as np

from .common import optional

Array = np.ndarray
G = 9.8


# ---------------------------------------------------------------- double pendulum


def pendulum2_energy(x: Array) -> Array:
    """Total energy `T + V` of the double pendulum (m1 = m2 = l1 = l2 = 1)."""
    t1, t2, w1, w2 = np.moveaxis(x, -1, 0)
    kinetic = 0.5 * w1**2 + 0.5 * (w1**2 + w2**2 + 2 * w1 * w2 * np.cos(t1 - t2))
    potential = -2 * G * np.cos(t1) - G * np.cos(t2)
    return kinetic + potential


def pendulum2_dynamics(x: Array) -> Array:
    """`(omega1, omega2, alpha1, alpha2)`: the Euler-Lagrange equations solved for the accelerations."""
    t1, t2, w1, w2 = np.moveaxis(x, -1, 0)
    d = t1 - t2
    a1 = 0.5 * np.cos(d)  # (l2 / l1) m2 / (m1 + m2) cos(d)
    a2 = np.cos(d)
    f1 = -0.5 * w2**2 * np.sin(d) - G * np.sin(t1)
    f2 = w1**2 * np.sin(d) - G * np.sin(t2)
    g1 = (f1 - a1 * f2) / (1 - a1 * a2)
    g2 = (f2 - a2 * f1) / (1 - a1 * a2)
    return np.stack((w1, w2, g1, g2), -1)


def pendulum2_mass(theta: Array) -> Array:
    """The mass matrix `d2L/domega2 = [[2, cos(t1 - t2)], [cos(t1 - t2), 1]]`, `(..., 2, 2)`."""
    c = np.cos(theta[..., 0] - theta[..., 1])
    return np.stack((np.stack((2 * np.ones_like(c), c), -1), np.stack((c, np.ones_like(c)), -1)), -2)


def to_canonical(x: Array) -> Array:
    """`(theta, omega) -> (theta, p)` with `p = dL/domega = M(theta) omega` (the HNN's coordinates)."""
    p = np.einsum("...ij,...j->...i", pendulum2_mass(x[..., :2]), x[..., 2:])
    return np.concatenate((x[..., :2], p), -1)


def from_canonical(z: Array) -> Array:
    """`(theta, p) -> (theta, omega)`, the inverse of `to_canonical`."""
    omega = np.linalg.solve(pendulum2_mass(z[..., :2]), z[..., 2:, None])[..., 0]
    return np.concatenate((z[..., :2], omega), -1)


def canonical_dynamics(x: Array) -> Array:
    """`d(theta, p)/dt` at the states `x = (theta, omega)`: `(omega, dL/dtheta)`."""
    t1, t2, w1, w2 = np.moveaxis(x, -1, 0)
    s = np.sin(t1 - t2)
    dp1 = -w1 * w2 * s - 2 * G * np.sin(t1)
    dp2 = w1 * w2 * s - G * np.sin(t2)
    return np.stack((w1, w2, dp1, dp2), -1)


def pendulum2_state(rng: np.random.RandomState, angle: float = 1.0, speed: float = 1.0) -> Array:
    """Angles uniform in +-`angle` rad, angular velocities uniform in +-`speed` rad/s."""
    return np.concatenate((rng.uniform(-angle, angle, 2), rng.uniform(-speed, speed, 2)))


# ---------------------------------------------------------------- damped spring


def spring_energy(x: Array) -> Array:
    """`H = (q^2 + p^2) / 2`."""
    return 0.5 * (x[..., 0] ** 2 + x[..., 1] ** 2)


def spring_rayleigh(x: Array, rho: float) -> Array:
    """The Rayleigh dissipation function `R = rho p^2 / 2` (the friction force is `-dR/dp`)."""
    return 0.5 * rho * x[..., 1] ** 2


def damped_spring_dynamics(x: Array, rho: float) -> Array:
    """`(dq/dt, dp/dt) = (p, -q - rho p)`: `J grad H - grad R`."""
    return np.stack((x[..., 1], -x[..., 0] - rho * x[..., 1]), -1)


# ---------------------------------------------------------------- integration


def solve(dynamics, y0: Array, t: Array, rtol: float = 1e-10) -> Array:
    """The true path from `y0` at times `t`, `(len(t), dim)` (scipy RK45, atol 1e-10)."""
    sol = optional("scipy.integrate").solve_ivp(lambda _, y: dynamics(y), (t[0], t[-1]), y0, t_eval=t, rtol=rtol,
                                                atol=1e-10)
    if not sol.success:
        raise RuntimeError(f"exact integration failed from {y0}: {sol.message}")
    return sol.y.T
