"""The Lagrangian and dissipative experiments: exact ground truth, the energy-trend verdict, tiny end-to-end runs."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from innergrad.core.errors import InnergradError
from innergrad.experiments import mechanics
from innergrad.experiments.energy_trend import describe, energy_trend

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def _example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_lnn = pytest.mark.skipif(not _has("innergrad.models.lagrangian"), reason="ig.LagrangianNet not on this branch")
needs_dhnn = pytest.mark.skipif(not _has("innergrad.models.dissipative"), reason="ig.DissipativeHNN not on this branch")


# ---------------------------------------------------------------- ground truth


def test_double_pendulum_conserves_its_energy_and_matches_euler_lagrange():
    rng = np.random.RandomState(0)
    y0 = mechanics.pendulum2_state(rng)
    t = np.linspace(0, 2, 2001)
    path = mechanics.solve(mechanics.pendulum2_dynamics, y0, t)
    e = mechanics.pendulum2_energy(path)
    assert np.ptp(e) < 1e-6 * max(1.0, abs(e).max())
    # d/dt dL/domega = dL/dtheta along the path: p = M(theta) omega changes at the rate canonical_dynamics gives.
    p = mechanics.to_canonical(path)[:, 2:]
    dp = np.gradient(p, t, axis=0)[5:-5]
    np.testing.assert_allclose(dp, mechanics.canonical_dynamics(path)[5:-5, 2:], atol=1e-3)
    z = mechanics.to_canonical(path)
    np.testing.assert_allclose(mechanics.from_canonical(z), path, atol=1e-12)


def test_damped_spring_loses_energy_at_the_rayleigh_rate():
    rho = 0.3
    x = np.random.RandomState(1).randn(50, 2)
    dx = mechanics.damped_spring_dynamics(x, rho)
    dH_dt = (x * dx).sum(-1)  # grad H . dx/dt with H = |x|^2 / 2
    np.testing.assert_allclose(dH_dt, -2 * mechanics.spring_rayleigh(x, rho))


# ---------------------------------------------------------------- does the record conserve its energy?


def _records(gamma, noise=0.01, seed=0):
    rows = _example("pendulum_lab_damped").simulate(trajectories=4, points=60, duration=20.0, noise=noise,
                                                     gamma=gamma, seed=seed)
    ids = np.array([r[0] for r in rows])
    t = np.array([r[1] for r in rows])
    x = np.array([[r[2], r[3]] for r in rows])
    return t, x, ids


def _energy(x):
    return x[..., 1] ** 2 / 2 - np.cos(x[..., 0])


def test_energy_trend_tells_dissipation_from_conservation():
    t, x, ids = _records(gamma=0.05)
    tr = energy_trend(_energy, t, x, ids)
    assert tr["verdict"] == "dissipates" and tr["change"] < 0 and abs(tr["change"]) > 3 * tr["change_se"]
    assert 0.3 < -tr["fraction"] < 1.0  # exp(-0.05 * 20) leaves ~37%: a fall of roughly 60%
    assert abs(tr["floor"] + 1) < 0.05  # the well's bottom, -cos(0)
    assert "falls by" in describe(tr) and "dissipative model" in describe(tr)
    t, x, ids = _records(gamma=0.0)
    tr = energy_trend(_energy, t, x, ids)
    assert tr["verdict"] == "conserves", tr
    assert "conserved within the measurement scatter" in describe(tr)


# ---------------------------------------------------------------- the experiments, tiny


@needs_lnn
def test_lnn_experiment_end_to_end(tmp_path):
    from innergrad.experiments.lnn import run_lnn

    res = run_lnn(out=tmp_path / "o", steps=20, hidden_layers=(16, 16), trajectories=3, points=10, horizon=0.5,
                  quiet=True)
    for kind in ("baseline", "lnn", "hnn"):
        m = res["models"][kind]
        assert np.isfinite(m["test"][0]) and m["energy_mse_mean"] >= 0 and m["rollout_mse_mean"] >= 0
    report = (tmp_path / "o" / "report.md").read_text()
    assert "Lagrangian NN" in report and "no table of numbers" in report
    assert (tmp_path / "o" / "energy_error.png").read_bytes().startswith(PNG)
    with pytest.raises(InnergradError, match="--models"):
        run_lnn(out=tmp_path / "p", models=("lnn", "gp"))


@needs_dhnn
def test_dhnn_experiment_compares_the_friction_term(tmp_path):
    from innergrad.experiments.dhnn import run_dhnn

    res = run_dhnn(out=tmp_path / "o", steps=300, hidden_layers=(32, 32), trajectories=10, points=20, horizon=5.0,
                   quiet=True)
    d = res["models"]["dhnn"]
    # Friction shows as friction (energy leaves through grad D), and only the D-HNN can follow the decay.
    assert d["rho_learned"] > 0 and np.isfinite(d["d_relative_error"])
    assert d["rollout_mse_mean"] < res["models"]["hnn"]["rollout_mse_mean"]
    for kind in ("baseline", "hnn", "dhnn"):
        assert np.isfinite(res["models"][kind]["unseen_rollout_mse_mean"])
    assert "Friction recovered" in (tmp_path / "o" / "report.md").read_text()
    assert (tmp_path / "o" / "dissipation.png").read_bytes().startswith(PNG)


@needs_dhnn
def test_own_data_report_reads_a_dissipative_record(tmp_path):
    from innergrad.experiments.own_data import run_hnn_data

    csv = _example("pendulum_lab_damped").write_csv(tmp_path / "damped.csv", trajectories=4, points=40,
                                                     duration=20.0, gamma=0.08)
    res = run_hnn_data(csv, time_column="time", state=("theta", "p_theta"), trajectory="run",
                       energy="p_theta**2/2 - cos(theta)", models=("baseline", "hnn", "dhnn"), out=tmp_path / "o",
                       steps=150, hidden_layers=(32, 32), quiet=True)
    d = res["data"]
    assert d["energy_trend"]["verdict"] == "dissipates"
    report = (tmp_path / "o" / "report.md").read_text()
    assert "the system dissipates" in report and "Dissipative HNN" in report
    # The true conservative dynamics miss friction's targets: no noise floor above the models' errors.
    best = min(res["models"][k]["train"][0] for k in ("baseline", "hnn", "dhnn"))
    assert d["noise_floor"] is None or d["noise_floor"] <= best
    if d["noise_floor"] is None:
        assert "No noise floor" in report and "does not describe these data" in report
    assert report.index("Rollout state MSE") < report.index("Energy MSE")  # the headline first


def test_cli_knows_the_new_experiments():
    import argparse

    from innergrad.cli.experiment import add_parser

    parser = argparse.ArgumentParser(prog="innergrad")
    add_parser(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(["experiment", "lnn", "--task", "double-pendulum", "--steps", "5", "--models", "lnn,hnn"])
    assert (a.experiment, a.task, a.steps, a.models) == ("lnn", "double-pendulum", 5, "lnn,hnn")
    a = parser.parse_args(["experiment", "dhnn", "--rho", "0.1", "--rho-unseen", "0.3"])
    assert (a.experiment, a.task, a.rho, a.rho_unseen) == ("dhnn", "damped-spring", 0.1, 0.3)
    a = parser.parse_args(["experiment", "hnn", "--data", "x.csv", "--models", "baseline,hnn,dhnn,lnn"])
    assert a.models == "baseline,hnn,dhnn,lnn"


def test_new_experiments_refuse_bad_options_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    csv = _example("pendulum_lab_damped").write_csv(tmp_path / "d.csv", trajectories=2, points=8)
    for argv, why in ((["hnn", "--task", "spring", "--models", "dhnn"], "only apply with --data"),
                      (["hnn", "--data", str(csv), "--time", "time", "--state", "theta,p_theta", "--models",
                        "baseline,gp"], "--models"),
                      (["dhnn", "--rho", "-1"], "rho"),
                      (["lnn", "--data", str(csv), "--task", "double-pendulum"], "exclude each other")):
        r = subprocess.run([sys.executable, "-m", "innergrad", "experiment", *argv, "--out", str(tmp_path / "o"),
                            "--quiet"], capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
        assert r.returncode == 2, (argv, r.stderr)
        assert why in r.stderr and len(r.stderr.strip().splitlines()) == 1, (argv, r.stderr)
    assert not (tmp_path / "o").exists()


def test_results_summaries_keep_the_new_metrics():
    from innergrad.experiments.seeds import _flatten

    res = {"models": {"dhnn": {"test": [1.0, 0.1], "rollout_mse_mean": 2.0, "unseen_rollout_mse_mean": 3.0,
                               "rho_learned": 0.21, "rollout_per_ic": [1.0, 2.0]}}}
    assert _flatten(res) == {"dhnn": {"test": 1.0, "rollout_mse_mean": 2.0, "unseen_rollout_mse_mean": 3.0,
                                      "rho_learned": 0.21}}
    json.dumps(_flatten(res))


@needs_lnn
def test_lnn_on_own_data_reads_the_state_as_positions_and_velocities(tmp_path):
    from innergrad.experiments.own_data import LNNData
    from innergrad.experiments.runner import run

    # The lab pendulum has unit mass and length, so p_theta is the angular velocity.
    csv = _example("pendulum_lab").write_csv(tmp_path / "lab.csv", trajectories=3, points=20, duration=6.0)
    exp = LNNData(csv, time_column="time", state=("theta", "p_theta"), trajectory="run",
                  energy="p_theta**2/2 - cos(theta)", steps=30, hidden_layers=(16, 16))
    assert exp.models == ("baseline", "lnn") and exp.command(0).startswith("innergrad experiment lnn --data")
    res = run(exp, out=tmp_path / "o", quiet=True)
    assert np.isfinite(res["models"]["lnn"]["rollout_mse_mean"]) and res["data"]["energy_trend"]["verdict"]
    assert "Lagrangian NN" in (tmp_path / "o" / "report.md").read_text()
