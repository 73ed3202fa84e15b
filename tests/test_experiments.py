"""The HNN-paper data generators follow the protocol, and the experiments run end to end (tiny sizes)."""

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from innergrad.cli.experiment import add_parser
from innergrad.core.errors import InnergradError
from innergrad.experiments.forces import run_forces
from innergrad.experiments.hnn import PAPER, run_hnn
from innergrad.experiments.hnn_tasks import TASKS, make_dataset

PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- data protocol


def test_spring_data_follow_the_protocol():
    d = make_dataset(TASKS["spring"], seed=0)
    assert d["x"].shape == d["dx"].shape == d["test_x"].shape == d["test_dx"].shape == (25 * 30, 2)
    np.testing.assert_allclose(d["t"], np.linspace(0, 3, 30))
    # The targets are exact: for H = q^2 + p^2 the clean state is (-dp/dt / 2, dq/dt / 2), and the
    # exact solution rotates it at angular frequency 2.
    for x, dx in ((d["x"], d["dx"]), (d["test_x"], d["test_dx"])):
        clean = np.stack((-dx[:, 1] / 2, dx[:, 0] / 2), 1)
        noise = x - clean
        assert abs(noise.std() - 0.1) < 0.01 and abs(noise.mean()) < 0.01
        traj = clean.reshape(25, 30, 2)
        r = np.sqrt((traj**2).sum(-1))
        # Conserved along each trajectory up to solve_ivp's default atol (1e-6; the paper's settings
        # too). The targets are exact regardless: dx/dt is evaluated at the integrated point itself.
        assert np.ptp(r, axis=1).max() < 1e-5
        assert 0.1 <= r.min() and r.max() <= 1.0
        t = d["t"]
        q0, p0 = traj[:, :1, 0], traj[:, :1, 1]
        exact_q = q0 * np.cos(2 * t) + p0 * np.sin(2 * t)
        np.testing.assert_allclose(traj[..., 0], exact_q, atol=1e-5)


def test_spring_initial_states_use_the_papers_draw_order():
    d = make_dataset(TASKS["spring"], seed=0, trajectories=2)
    rng = np.random.RandomState(0)
    y0 = rng.rand(2) * 2 - 1
    radius = rng.rand() * 0.9 + 0.1
    y0 = y0 / np.linalg.norm(y0) * radius
    clean0 = np.array([-d["dx"][0, 1] / 2, d["dx"][0, 0] / 2])
    np.testing.assert_allclose(clean0, y0, atol=1e-12)


def test_pendulum_data_follow_the_protocol():
    task = TASKS["pendulum"]
    d = make_dataset(task, seed=0)
    assert d["x"].shape == d["test_x"].shape == (25 * 45, 2)
    # dq/dt = 2p exactly at the clean state, so x_p - dq/dt / 2 is the noise.
    assert abs((d["x"][:, 1] - d["dx"][:, 0] / 2).std() - 0.1) < 0.01
    # |sin q| from dp/dt = -3 sin q, and energies in the range the radii U[1.3, 2.3] allow.
    sin_q = -d["dx"][:, 1] / 3
    assert np.abs(sin_q).max() <= 1.0
    assert np.allclose(task.dynamics(np.zeros((1, 2))), 0)


def test_two_body_data_follow_the_protocol():
    task = TASKS["two-body"]
    d = make_dataset(task, seed=0, trajectories=10)
    assert d["x"].shape == (8 * 50, 8) and d["test_x"].shape == (2 * 50, 8)
    x = np.concatenate((d["test_x"], d["x"]))  # the test split holds the first orbits
    dx = np.concatenate((d["test_dx"], d["dx"]))
    np.testing.assert_array_equal(dx[:, :4], x[:, 4:])  # no noise: dq/dt = v exactly
    np.testing.assert_allclose(x[:, 0], -x[:, 1])  # body 2 mirrors body 1
    np.testing.assert_allclose(x[:, 6], -x[:, 7])
    H = task.hamiltonian(x).reshape(10, 50)
    assert np.ptp(H, axis=1).max() < 1e-4
    np.testing.assert_allclose(d["t"], np.linspace(0, 20, 50))


def test_data_are_deterministic_per_seed():
    task = TASKS["pendulum"]
    a, b, c = make_dataset(task, 0, 3), make_dataset(task, 0, 3), make_dataset(task, 1, 3)
    for k in ("x", "dx", "test_x", "test_dx"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.allclose(a["x"], c["x"])


def test_task_settings_match_the_issue():
    s, p, tb = TASKS["spring"], TASKS["pendulum"], TASKS["two-body"]
    assert (s.trajectories, s.points, s.t_span, s.noise_std, s.steps) == (50, 30, (0.0, 3.0), 0.1, 2000)
    assert (p.trajectories, p.points, p.t_span, p.noise_std, p.steps) == (50, 45, (0.0, 3.0), 0.1, 2000)
    assert (tb.trajectories, tb.points, tb.t_span, tb.batch_size, tb.steps) == (1000, 50, (0.0, 20.0), 200, 10_000)
    assert (tb.eval_points, tb.eval_t_span, tb.test_fraction) == (500, (0.0, 25.0), 0.2)
    x = np.array([[0.5, 0.3]])
    np.testing.assert_allclose(p.hamiltonian(x), 3 * (1 - np.cos(0.5)) + 0.09)
    np.testing.assert_allclose(s.hamiltonian(x), 0.34)


# ---------------------------------------------------------------- end to end


def _parser():
    parser = argparse.ArgumentParser(prog="innergrad")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _check_pngs(out, names):
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name


def test_hnn_experiment_end_to_end_through_the_cli(tmp_path, capsys):
    out = tmp_path / "spring"
    args = _parser().parse_args(
        ["experiment", "hnn", "--task", "spring", "--steps", "50", "--hidden", "32", "32",
         "--energy-trials", "3", "--rollout-dt", "0.05", "--out", str(out)]
    )
    assert args.func(args) == 0
    report = (out / "report.md").read_text()
    assert "| Hamiltonian NN (innergrad) |" in report and "| Baseline NN (paper) |" in report
    assert f"{PAPER['spring']['hnn']['energy'][0]:.2e}" in report
    cmd = "experiment hnn --task spring --steps 50 --seed 0 --hidden 32 32 --energy-trials 3 --rollout-dt 0.05"
    assert cmd in report
    res = json.loads((out / "results.json").read_text())
    # "auto" must find a closed-form path for the paper's MLP, not a generic autograd backend.
    assert res["settings"]["backend_used"] not in ("autograd", "func")
    for kind in ("baseline", "hnn"):
        m = res["models"][kind]
        for key in ("train", "test", "energy", "energy_rk4", "energy_leapfrog"):
            mean, se = m[key]
            assert np.isfinite(mean) and mean > 0, (kind, key)
    _check_pngs(out, ["phase_portrait.png", "energy.png", "training.png"])
    assert "Hamiltonian NN" in capsys.readouterr().out


def test_cli_options_and_defaults():
    args = _parser().parse_args(["experiment", "hnn", "--task", "two-body", "--quiet"])
    assert (args.task, args.steps, args.seed, args.quiet, args.threads) == ("two-body", None, 0, True, 1)
    args = _parser().parse_args(["experiment", "forces", "--noise", "0.2", "--energy-weight", "0.5"])
    assert (args.noise, args.energy_weight, args.steps, args.samples) == (0.2, 0.5, 3000, 1000)
    assert callable(args.func)
    with pytest.raises(SystemExit):
        _parser().parse_args(["experiment", "hnn", "--task", "three-body"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["experiment"])


def test_forces_experiment_end_to_end(tmp_path):
    out = tmp_path / "forces"
    res = run_forces(out=out, steps=300, samples=300, grid=40, quiet=True, lr=1e-2)
    m = res["metrics"]
    assert m["force_relative"] < 0.5  # a tiny run already captures most of the field
    assert np.isfinite(m["energy_rmse"]) and m["energy_rmse"] < m["energy_std_true"]
    assert "Energy RMSE" in (out / "report.md").read_text()
    _check_pngs(out, ["energy_contours.png", "training.png"])


def test_user_errors(tmp_path):
    with pytest.raises(InnergradError, match="unknown HNN task"):
        run_hnn(task="three-body", out=tmp_path)
    with pytest.raises(InnergradError, match="steps"):
        run_hnn(task="spring", out=tmp_path, steps=0)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InnergradError, match="existing file"):
        run_hnn(task="spring", out=f, steps=1)
    with pytest.raises(InnergradError, match="noise"):
        run_forces(out=tmp_path, noise=-1)
    assert issubclass(InnergradError, ValueError)


# ---------------------------------------------------------------- examples


def _example(name):
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hnn_spring_example_keeps_energy_where_the_baseline_drifts():
    errors = _example("hnn_spring").main(steps=300, t_end=30.0, width=64)
    for method in ("rk4", "leapfrog"):
        base_first, base_last = errors["baseline", method]
        hnn_first, hnn_last = errors["HNN", method]
        assert base_last > 1.5 * base_first  # the baseline's energy error grows with time
        assert hnn_last < 1.2 * hnn_first + 1e-3  # the HNN's stays where it started
        assert hnn_last < base_last


def test_force_field_example_learns_the_forces():
    r = _example("force_field").main(steps=300)
    assert r["force_relative"] < 0.5
    assert r["energy_rmse"] < 0.5 * r["energy_std"]


def test_experiment_runs_get_fresh_folders_and_never_write_into_one_with_files(tmp_path, monkeypatch, capsys):
    """Nothing lost: no --out gives a new runs/hnn-<task>-<time>-<id> each time; a folder with files is refused."""
    from innergrad.cli import main

    monkeypatch.chdir(tmp_path)
    tiny = ["experiment", "hnn", "--task", "spring", "--steps", "2", "--hidden", "8", "8", "--energy-trials", "1",
            "--quiet"]
    assert main(tiny) == 0 and main(tiny) == 0
    made = sorted((tmp_path / "runs").iterdir())
    assert len(made) == 2 and all(p.name.startswith("hnn-spring-") for p in made)
    assert all((p / "results.json").is_file() for p in made)
    before = {p: p.read_bytes() for p in made[0].rglob("*") if p.is_file()}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    capsys.readouterr()
    for out in (made[0], mine):
        assert main([*tiny, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "already holds" in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in made[0].rglob("*") if p.is_file()} == before
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "my notes"


def test_experiment_results_are_strict_json(tmp_path):
    """results.json goes through write_json: numpy arrays and scalars, NaN and inf as null (no bare NaN)."""
    from innergrad.core.files import write_json

    path = write_json(tmp_path / "results.json", {"a": np.array([1.0, np.nan]), "n": np.int64(3),
                                                  "f": np.float32(np.inf), "m": {"x": [np.float64(2.5)]}})

    def bare(c):
        raise AssertionError(f"bare {c} in strict JSON")

    assert json.loads(path.read_text(), parse_constant=bare) == {"a": [1.0, None], "n": 3, "f": None,
                                                                   "m": {"x": [2.5]}}
    assert not list(tmp_path.glob(".*.tmp"))
