"""ig.data.time_derivative against hand-computed values; trajectory files and safe expressions."""

import numpy as np
import pytest
import torch

import innergrad as ig
from innergrad.data import evaluate_expression, load_trajectories, time_derivative

T = np.array([0.0, 0.5, 2.0, 2.5])  # uneven steps: 0.5, 1.5, 0.5
X = np.array([1.0, 2.0, 5.0, 4.0])


def test_forward_on_uneven_steps_by_hand():
    x, dx = time_derivative(T, X)
    np.testing.assert_array_equal(x, [1.0, 2.0, 5.0])
    # (2 - 1) / 0.5, (5 - 2) / 1.5, (4 - 5) / 0.5
    np.testing.assert_allclose(dx, [2.0, 2.0, -2.0])


def test_central_on_uneven_steps_by_hand():
    x, dx = time_derivative(T, X, scheme="central")
    np.testing.assert_array_equal(x, [2.0, 5.0])
    # i = 1: h0 = 0.5, h1 = 1.5: (0.25 * 5 - 2.25 * 1 + 2 * 2) / (0.5 * 1.5 * 2) = 3 / 1.5
    # i = 2: h0 = 1.5, h1 = 0.5: (2.25 * 4 - 0.25 * 2 - 2 * 5) / (1.5 * 0.5 * 2) = -1.5 / 1.5
    np.testing.assert_allclose(dx, [2.0, -1.0])


def test_central_is_exact_for_a_quadratic_and_the_plain_difference_on_even_steps():
    t = np.array([0.0, 0.3, 0.4, 1.1, 1.15, 2.0])
    _, dx = time_derivative(t, np.stack((t**2, 3 * t - 1), 1), scheme="central")
    np.testing.assert_allclose(dx[:, 0], 2 * t[1:-1], rtol=1e-12)
    np.testing.assert_allclose(dx[:, 1], 3.0, rtol=1e-12)
    te = np.arange(5) * 0.25
    xe = np.array([0.0, 1.0, 4.0, 2.0, 3.0])
    _, dxe = time_derivative(te, xe, scheme="central")
    np.testing.assert_allclose(dxe, (xe[2:] - xe[:-2]) / 0.5)


def test_differences_never_cross_trajectory_boundaries():
    ids = np.array(["a", "b", "a", "b", "a"])  # interleaved rows
    t = np.array([0.0, 0.0, 1.0, 2.0, 3.0])
    x = np.array([[0.0, 1.0], [10.0, 0.0], [1.0, 3.0], [14.0, 2.0], [5.0, 3.0]])
    xs, dx, rows = time_derivative(t, x, trajectory=ids, return_rows=True)
    np.testing.assert_array_equal(rows, [0, 2, 1])  # trajectory a (rows 0, 2), then b (row 1)
    np.testing.assert_array_equal(xs, x[[0, 2, 1]])
    # a: (x2 - x0) / 1, (x4 - x2) / 2; b: (x3 - x1) / 2
    np.testing.assert_allclose(dx, [[1.0, 2.0], [2.0, 0.0], [2.0, 1.0]])
    # Without the ids, the jump from trajectory a to b would be differenced (and t would not increase).
    with pytest.raises(ValueError, match="increase"):
        time_derivative(t, x)
    # central: a has one interior point, b none (too short)
    with pytest.raises(ValueError, match="needs at least 3"):
        time_derivative(t, x, scheme="central", trajectory=ids)
    xs, dx = time_derivative(t[[0, 2, 4]], x[[0, 2, 4]], scheme="central", trajectory=[7, 7, 7])
    # h0 = 1, h1 = 2 at t = 1: (1 * x4 - 4 * x0 + 3 * x2) / (1 * 2 * 3)
    np.testing.assert_allclose(dx, [(x[4] - 4 * x[0] + 3 * x[2]) / 6])


def test_numpy_in_numpy_out_tensors_in_tensors_out_same_numbers():
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.uniform(0.05, 0.3, 12))
    x = rng.normal(size=(12, 2))
    ids = np.repeat([0, 1], 6)
    for scheme in ("forward", "central"):
        xn, dn = time_derivative(t, x, scheme, ids)
        assert isinstance(xn, np.ndarray) and isinstance(dn, np.ndarray)
        xt, dt_ = time_derivative(torch.tensor(t), torch.tensor(x, dtype=torch.float32), scheme, torch.tensor(ids))
        assert isinstance(xt, torch.Tensor) and dt_.dtype == torch.float32
        np.testing.assert_allclose(dt_.numpy(), dn, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(xt.numpy(), x[np.r_[0:5, 6:11] if scheme == "forward" else np.r_[1:5, 7:11]]
                                      .astype(np.float32))
    assert ig.data.time_derivative is time_derivative


def test_bad_inputs_say_what_to_fix():
    with pytest.raises(ValueError, match="scheme"):
        time_derivative(T, X, scheme="backward")
    with pytest.raises(ValueError, match="N = len"):
        time_derivative(T, X[:3])
    with pytest.raises(ValueError, match="one id per row"):
        time_derivative(T, X, trajectory=[0, 1])
    with pytest.raises(ValueError, match="NaN"):
        time_derivative(np.array([0.0, np.nan, 1.0, 2.0]), X)
    with pytest.raises(ValueError, match="row 2 has t = 0.1 after t = 0.5"):
        time_derivative(np.array([0.0, 0.5, 0.1, 2.0]), X)


def test_expressions_are_evaluated_without_eval():
    cols = {"q": np.array([0.0, 0.5]), "p": np.array([1.0, 0.3])}
    np.testing.assert_allclose(evaluate_expression("3*(1 - cos(q)) + p**2", cols),
                               3 * (1 - np.cos(cols["q"])) + cols["p"] ** 2)
    np.testing.assert_allclose(evaluate_expression("2", cols), [2.0, 2.0])
    np.testing.assert_allclose(evaluate_expression("-q / 2 + pi", cols), -cols["q"] / 2 + np.pi)
    for bad, why in (("__import__('os').system('true')", "not allowed"), ("q.real", "not allowed"),
                     ("x + 1", "unknown name 'x'"), ("q +", "not valid"), ("open('f')", "not allowed"),
                     ("cos(q=1)", "not allowed"), ("q[0]", "not allowed"), ("", "non-empty")):
        with pytest.raises(ValueError, match=why):
            evaluate_expression(bad, cols)


def test_load_csv_and_npz_with_ids_and_energies(tmp_path):
    csv = tmp_path / "pend.csv"
    csv.write_text("# lab run 3\nrun,t,q,p,E\nA,0.0,0.1,0.0,0.01\nA,0.11,0.09,-0.02,0.0095\n"
                   "B,0.0,-0.2,0.1,0.05\nB,0.2,-0.1,0.2,0.06\n")
    d = load_trajectories(csv, time="t", state=("q", "p"), trajectory="run", energy_column="E")
    assert d.x.shape == (4, 2) and d.ids == ["A", "B"] and d.state_names == ("q", "p")
    np.testing.assert_allclose(d.energy, [0.01, 0.0095, 0.05, 0.06])
    d2 = load_trajectories(csv, trajectory="run", energy="q**2 + p**2")
    np.testing.assert_allclose(d2.energy, (d.x**2).sum(1))
    assert d.split(["B"]).x.shape == (2, 2)
    npz = tmp_path / "spring.npz"
    np.savez(npz, time=np.arange(3.0), x=np.ones(3), v=np.zeros(3), traj=np.array([0, 0, 0]))
    d3 = load_trajectories(npz, time="time", state=("x", "v"), trajectory="traj")
    assert d3.x.shape == (3, 2) and d3.energy is None and d3.ids == [0]
    with pytest.raises(ValueError, match="no column 'speed'"):
        load_trajectories(csv, state=("q", "speed"))
    with pytest.raises(ValueError, match="must be numbers"):
        load_trajectories(csv, time="run")
    with pytest.raises(ValueError, match="not both"):
        load_trajectories(csv, energy_column="E", energy="q")
    bad = tmp_path / "bad.csv"
    bad.write_text("t,q,p\n0,1,2\n1,,3\n")
    with pytest.raises(ValueError, match="non-finite value at data row 2"):
        load_trajectories(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_trajectories(tmp_path / "missing.csv")


# ---------------------------------------------------------------- expressions: every fault a one-line error

_COLS = {"q": np.array([0.0, 1.0, -1.0]), "p": np.array([1.0, 2.0, 3.0])}


@pytest.mark.parametrize("expr, why", [
    ("sin(q, q)", r"sin takes exactly 1 argument, got 2"),  # numpy's second positional argument is out=
    ("sin(q, out=q)", r"not allowed: sin takes plain arguments only \(no keywords such as out="),
    ("sin(*q)", r"takes plain arguments only"),
    ("hypot(q)", r"hypot takes exactly 2 arguments, got 1"),
    ("maximum(q, p, q)", r"maximum takes exactly 2 arguments, got 3"),
    ("1e999", r"the number '1e999' is not a finite float64"),
    ("10**400", r"'10\*\*400' is infinite \(an overflow or a division by zero\)"),
    ("p**1e10", r"'p\*\*1e10' is infinite .* at data row 2"),
    ("exp(exp(exp(p)))", r"is infinite .* at data row 2"),
    ("1/q", r"'1/q' is infinite .* at data row 1"),
    ("log(q)", r"'log\(q\)' is infinite .* at data row 1"),
    ("sqrt(q)", r"'sqrt\(q\)' is not a real number .* at data row 3"),
    ("(-8)**(1/3)", r"is not a real number"),  # Python floats would give a complex number
    ("1j * q", r"'1j' is not allowed"),
    ("True + q", r"'True' is not allowed"),
    ("q" + "+q" * 600, r"terms, more than the 500 allowed"),
    ("-" * 60 + "q", r"nested more than 40 levels deep"),
    ("q" * 3000, r"3000 characters, more than the 2000 allowed"),
])
def test_expression_faults_are_one_line_errors_and_the_columns_stay_untouched(expr, why):
    cols = {k: v.copy() for k, v in _COLS.items()}
    with pytest.raises(ValueError, match=why) as info:
        evaluate_expression(expr, cols)
    assert "\n" not in str(info.value) and len(str(info.value)) < 600
    for k in cols:
        np.testing.assert_array_equal(cols[k], _COLS[k])


def test_expression_rows_that_were_already_nan_stay_nan_and_finite_false_lets_values_diverge():
    cols = {"q": np.array([np.nan, 1.0]), "p": np.array([0.0, 2.0])}
    out = evaluate_expression("q * p", cols)
    assert np.isnan(out[0]) and out[1] == 2.0
    out = evaluate_expression("exp(p * 1000)", {"p": np.array([0.0, 1.0])}, finite=False)
    assert out[0] == 1.0 and np.isinf(out[1])


def test_trajectory_loader_names_the_offending_cell_not_the_first(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("# notes\nt,q,p\n0,1,2\n\n1,2,3\n2,abc,4\n")
    with pytest.raises(ValueError, match=r"column 'q' \(state\) must be numbers, got text 'abc' at data row 3 "
                                         r"\(line 6\)"):
        load_trajectories(f)
    f.write_text("t,q,p\n0,1,2\n1,2,inf\n")
    with pytest.raises(ValueError, match=r"column 'p' \(state\) has a missing or non-finite value at data row 2 "
                                         r"\(line 3\): 'inf'"):
        load_trajectories(f)
    f.write_text("t,q,p,id\n0,1,2,a\n1,2,3,\n")
    with pytest.raises(ValueError, match=r"trajectory column 'id' is missing at data row 2 \(line 3\)"):
        load_trajectories(f, trajectory="id")
    f.write_text("t,q,q\n0,1,2\n")
    with pytest.raises(ValueError, match=r"line 1: duplicate column name\(s\) \['q'\]"):
        load_trajectories(f, state=("q",))
    f.write_text("t,q,p\n0,1,2\n1,0,3\n")
    with pytest.raises(ValueError, match=r"'log\(q\)' is infinite .* at data row 2 \(line 3\)"):
        load_trajectories(f, energy="log(q)")
    z = tmp_path / "d.npz"
    np.savez(z, t=np.arange(3.0), q=np.array([1.0, 2.0, np.nan]), p=np.zeros(3))
    with pytest.raises(ValueError, match=r"column 'q' \(state\) has a missing or non-finite value at data row 3 "
                                         r"\(index 2\): nan"):
        load_trajectories(z)
    np.savez(z, t=np.arange(3.0), q=np.ones(2), p=np.zeros(3))
    with pytest.raises(ValueError, match=r"the columns have different lengths"):
        load_trajectories(z)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, torch.float32, torch.float64])
def test_time_derivative_keeps_full_accuracy_in_any_dtype(dtype):
    """Small steps far from t=0: float32 arithmetic on t would lose every digit of the step."""
    t = np.linspace(1e4, 1e4 + 1, 201)
    x_true = np.sin(t - 1e4)
    if isinstance(dtype, torch.dtype):
        x = torch.tensor(x_true, dtype=dtype, requires_grad=True)
        _, dx = time_derivative(torch.tensor(t), x, "central")
        assert dx.dtype == dtype
        dx.sum().backward()  # differentiable w.r.t. x
        assert torch.isfinite(x.grad).all()
        dx = dx.detach().numpy()
    else:
        _, dx = time_derivative(t, x_true.astype(dtype), "central")
        assert dx.dtype == dtype
    eps = np.finfo(np.float32 if dtype in (np.float32, torch.float32) else np.float64).eps
    # the data's rounding (eps |x|) divided by the step, plus the scheme's O(h^2) error
    bound = 2 * eps / (t[1] - t[0]) + (t[1] - t[0]) ** 2
    assert np.abs(dx - np.cos(t[1:-1] - 1e4)).max() < bound


def test_time_derivative_never_returns_inf_or_nan_silently():
    with pytest.raises(ValueError, match=r"x holds NaN or infinite values at row 1"):
        time_derivative(np.array([0.0, 1.0, 2.0]), np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match=r"dx/dt at row 0 does not fit float32 \(it overflows"):
        time_derivative(np.array([0.0, 1e-3, 2e-3]), np.array([3e38, -3e38, 3e38], np.float32))
    # no h^2 * x overflow inside: a large but representable state gives its exact derivative
    _, dx = time_derivative(np.array([0.0, 1.0, 3.0]), np.array([3e38, 3e38, 3e38], np.float32), "central")
    assert dx.tolist() == [0.0]
