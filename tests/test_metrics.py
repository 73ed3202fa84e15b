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


# ---- issue 24.7: full accuracy for any finite input, never inf/NaN silently

def test_metrics_keep_full_accuracy_for_huge_and_tiny_states():
    """Squares of 1e200 overflow float64 and of 1e-200 underflow; the scaled computation keeps every digit."""
    for scale in (1e200, 1e-200, 1.0):
        pred = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]) * scale
        true = np.array([[1.0, 1.0], [3.0, 3.0], [5.0, 5.0]]) * scale
        if scale == 1e200:
            with pytest.raises(ValueError, match="exceeds float64"):  # the answer itself is 0.5e400
                ig.metrics.rollout_mse(pred, true)
            assert ig.metrics.rollout_mse(pred / 1e50, true / 1e50) == pytest.approx(0.5 * 1e300, rel=1e-14)
        else:
            assert ig.metrics.rollout_mse(pred, true) == pytest.approx(0.5 * scale**2, rel=1e-14)
    big = np.stack([np.full(4, 1e300), np.linspace(-1, 1, 4) * 1e150], 1)  # H = q: 1e300 constant
    assert ig.metrics.h_spread(lambda x: x[..., 0], big) == 0.0
    e = np.array([1e300, -1e300, 1e300])  # a mean that overflows a plain sum
    path = np.stack([e, np.zeros(3)], 1)
    assert ig.metrics.h_spread(lambda x: x[..., 0], path) == pytest.approx(np.sqrt(8 / 9) * 1e300, rel=1e-12)


def test_metrics_refuse_nan_unless_asked_to_count_it_as_infinite():
    good = np.zeros((5, 2, 2))
    bad = good.copy()
    bad[3, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"pred is NaN or infinite at time index 3, trajectory 1"):
        ig.metrics.rollout_mse(bad, good)
    with pytest.raises(ValueError, match=r"true is NaN or infinite"):
        ig.metrics.energy_mse(_spring, good, bad)
    with pytest.raises(ValueError, match=r"path is NaN or infinite"):
        ig.metrics.h_spread(_spring, bad)
    with pytest.raises(ValueError, match=r"energy\(pred\) is NaN or infinite at time index 0"):
        with np.errstate(divide="ignore"):
            ig.metrics.energy_mse(lambda x: np.log(x[..., 0]), good, good)
    per = ig.metrics.rollout_mse(bad, good, reduction="none", diverged="inf")
    assert per[0] == 0.0 and per[1] == np.inf
    per = ig.metrics.h_spread(_spring, bad, reduction="none", diverged="inf")
    assert per[0] == 0.0 and per[1] == np.inf
    with pytest.raises(ValueError, match="diverged must be one of"):
        ig.metrics.rollout_mse(good, good, diverged="nan")
