"""ig.metrics: rollout MSE, energy MSE along a rollout, learned-H spread; numpy and tensors agree."""

import numpy as np
import pytest
import torch

import innergrad as ig


def _spring(x):
    return (x**2).sum(-1)


def test_rollout_and_energy_mse_by_hand():
    true = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # (T=3, D=2) on the unit circle
    pred = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    # state errors: 0, 1, 4 -> mean over (T, D) = 5 / 6
    assert ig.metrics.rollout_mse(pred, true) == pytest.approx(5 / 6)
    # energies: pred 1, 4, 9 against 1, 1, 1 -> squared differences 0, 9, 64
    assert ig.metrics.energy_mse(_spring, pred, true) == pytest.approx(73 / 3)


def test_batches_reduce_per_trajectory_and_numpy_matches_tensors():
    rng = np.random.default_rng(1)
    true, pred = rng.normal(size=(5, 3, 2)), rng.normal(size=(5, 3, 2))
    per = ig.metrics.energy_mse(_spring, pred, true, reduction="none")
    assert isinstance(per, np.ndarray) and per.shape == (3,)
    expect = ((_spring(pred) - _spring(true)) ** 2).mean(0)
    np.testing.assert_allclose(per, expect)
    per_t = ig.metrics.energy_mse(_spring, torch.tensor(pred), torch.tensor(true), reduction="none")
    assert isinstance(per_t, torch.Tensor)
    np.testing.assert_allclose(per_t.numpy(), expect)
    r = ig.metrics.rollout_mse(pred, true, reduction="none")
    np.testing.assert_allclose(r, ((pred - true) ** 2).mean(axis=(0, 2)))
    assert ig.metrics.rollout_mse(torch.tensor(pred, dtype=torch.float32), true.astype(np.float32)) == \
        pytest.approx(float(r.mean()), rel=1e-6)


def test_h_spread_is_zero_for_a_conserved_h_and_uses_a_networks_learned_h():
    th = np.linspace(0, 6, 50)
    circle = np.stack((np.cos(th), np.sin(th)), 1)
    assert ig.metrics.h_spread(_spring, circle) == pytest.approx(0.0, abs=1e-12)
    spiral = circle * np.linspace(1, 2, 50)[:, None]
    e = _spring(spiral)
    assert ig.metrics.h_spread(_spring, spiral) == pytest.approx(e.std())
    assert ig.metrics.h_spread(_spring, spiral, relative=True) == pytest.approx(e.std() / e.mean())
    torch.manual_seed(0)
    hnn = ig.HamiltonianNet(2, (16,))
    with torch.no_grad():
        h = hnn.hamiltonian(torch.tensor(spiral, dtype=torch.float32)).double().numpy()
    assert ig.metrics.h_spread(hnn, spiral) == pytest.approx(h.std(), rel=1e-5)
    assert ig.metrics.h_spread(hnn, torch.tensor(spiral)) == pytest.approx(h.std(), rel=1e-5)


def test_bad_shapes_and_options():
    a = np.zeros((4, 2))
    with pytest.raises(ValueError, match="same shape"):
        ig.metrics.rollout_mse(a, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="time first"):
        ig.metrics.rollout_mse(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="reduction"):
        ig.metrics.rollout_mse(a, a, reduction="sum")
    with pytest.raises(ValueError, match="energy must map"):
        ig.metrics.energy_mse(lambda x: x, a, a)
    with pytest.raises(TypeError, match="numpy array"):
        ig.metrics.rollout_mse("path", a)
    with pytest.raises(ValueError, match="at least 2"):
        ig.metrics.h_spread(_spring, np.zeros((1, 2)))
