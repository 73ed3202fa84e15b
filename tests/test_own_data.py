"""`innergrad experiment hnn --data` / `forces --data` on data the experiments did not generate."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from innergrad.core.errors import InnergradError
from innergrad.experiments.forces import run_forces_data
from innergrad.experiments.own_data import InUnits, run_hnn_data

PNG = b"\x89PNG\r\n\x1a\n"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _measured_pendulum(path, trajectories=6, points=30, noise=0.02, seed=3):
    """A lab-like pendulum series from another simulator (examples/pendulum_lab.py: velocity Verlet,
    jittered uneven time stamps, measurement noise)."""
    spec = importlib.util.spec_from_file_location("pendulum_lab", EXAMPLES / "pendulum_lab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_csv(path, trajectories=trajectories, points=points, duration=6.0, noise=noise, seed=seed)


def test_hnn_on_a_measured_series_end_to_end(tmp_path):
    csv = _measured_pendulum(tmp_path / "pendulum.csv")
    out = tmp_path / "run"
    res = run_hnn_data(csv, time_column="time", state=("theta", "p_theta"), trajectory="run",
                       energy="p_theta**2 / 2 - cos(theta)", out=out, steps=60, hidden_layers=(32, 32), quiet=True)
    assert res["data"]["trajectories"] == 6
    assert res["data"]["test_trajectories"] == ["run4", "run5"]  # the last 25% of 6, rounded
    for kind in ("baseline", "hnn"):
        m = res["models"][kind]
        assert np.isfinite(m["test"][0]) and m["test"][0] > 0
        assert len(m["rollout_mse"]) == len(m["energy_mse"]) == 2
        assert all(np.isfinite(v) and v >= 0 for v in m["energy_mse"])
    assert res["models"]["hnn"]["h_spread_rollout_mean"] >= 0
    assert res["data"]["noise_floor"] > 0  # the true dynamics against noisy finite differences
    report = (out / "report.md").read_text()
    assert "--data" in report and "Energy MSE" in report and "p_theta**2" in report
    assert json.loads((out / "results.json").read_text())["experiment"] == "hnn-data"
    for name in ("phase_portrait.png", "energy.png", "hamiltonian.png", "training.png"):
        assert (out / name).read_bytes().startswith(PNG), name


def test_one_trajectory_is_split_in_time_and_an_energy_column_works(tmp_path):
    csv = _measured_pendulum(tmp_path / "one.csv", trajectories=1, points=60)
    text = csv.read_text().splitlines()
    rows = [r.split(",") for r in text[1:]]
    e = [float(p) ** 2 / 2 - np.cos(float(q)) for _, _, q, p in rows]
    csv.write_text("\n".join([text[0] + ",E"] + [f"{line},{v:.6f}" for line, v in zip(text[1:], e)]) + "\n")
    res = run_hnn_data(csv, time_column="time", state=("theta", "p_theta"), energy_column="E",
                       out=tmp_path / "o", steps=30, hidden_layers=(16,), quiet=True, test_fraction=0.3)
    assert "final" in res["data"]["split"]
    assert "energy column" in res["data"]["energy"]
    assert np.isfinite(res["models"]["hnn"]["energy_mse_mean"])


def test_in_units_keeps_the_dynamics_hamiltonian():
    # Standardising q and p by one scale each and rescaling time maps J grad H' back to J grad H.
    torch.manual_seed(0)
    from innergrad.models.hamiltonian import HamiltonianNet

    net = HamiltonianNet(2, (8,)).double()
    m = InUnits(net, np.array([0.3, -0.1]), np.array([2.0, 0.5]), tau=0.7).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    g = torch.func.vmap(torch.func.grad(lambda s: m.hamiltonian(s.unsqueeze(0))[0]))(x)
    np.testing.assert_allclose(m(x).detach().numpy(), torch.stack((g[:, 1], -g[:, 0]), 1).detach().numpy(), rtol=1e-10)


def test_bad_data_options_are_user_errors(tmp_path):
    csv = _measured_pendulum(tmp_path / "p.csv", trajectories=2, points=8)
    kw = dict(time_column="time", trajectory="run", out=tmp_path / "o", steps=1, quiet=True)
    with pytest.raises(InnergradError, match="even number"):
        run_hnn_data(csv, state=("theta",), **kw)
    with pytest.raises(InnergradError, match="no column 'q'"):
        run_hnn_data(csv, state=("q", "p"), **kw)
    with pytest.raises(InnergradError, match="not in the file"):
        run_hnn_data(csv, state=("theta", "p_theta"), test_trajectories=["run9"], **kw)
    with pytest.raises(InnergradError, match="every trajectory"):
        run_hnn_data(csv, state=("theta", "p_theta"), test_trajectories=["run0", "run1"], **kw)
    with pytest.raises(InnergradError, match="unknown name"):
        run_hnn_data(csv, state=("theta", "p_theta"), energy="x**2", **kw)
    with pytest.raises(InnergradError, match="test-fraction"):
        run_hnn_data(csv, state=("theta", "p_theta"), test_fraction=1.5, **kw)


def test_forces_on_own_data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (200, 2))
    e = x[:, 0] ** 2 + 0.5 * x[:, 1] ** 2 + 0.3 * x[:, 0] * x[:, 1]
    f = -np.stack((2 * x[:, 0] + 0.3 * x[:, 1], x[:, 1] + 0.3 * x[:, 0]), 1)
    np.savez(tmp_path / "frames.npz", px=x[:, 0], py=x[:, 1], E=e, fx=f[:, 0], fy=f[:, 1])
    res = run_forces_data(tmp_path / "frames.npz", positions=("px", "py"), energy_column="E", forces=("fx", "fy"),
                          out=tmp_path / "f", steps=200, hidden_layers=(32,), lr=1e-2, quiet=True)
    m = res["metrics"]
    assert m["test_force_relative"] < 0.3 and m["test_energy_rmse"] < 0.3 * m["energy_std"]
    assert (tmp_path / "f" / "training.png").read_bytes().startswith(PNG)
    with pytest.raises(InnergradError, match="one column per position"):
        run_forces_data(tmp_path / "frames.npz", positions=("px", "py"), forces=("fx",), out=tmp_path / "g")
    with pytest.raises(InnergradError, match="give the targets"):
        run_forces_data(tmp_path / "frames.npz", positions=("px", "py"), out=tmp_path / "g")


# ---------------------------------------------------------------- through the command line


def _cli(*argv, cwd=None):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "innergrad", *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_cli_data_run_over_seeds_in_parallel_processes(tmp_path):
    csv = _measured_pendulum(tmp_path / "lab.csv", trajectories=4, points=20)
    out = tmp_path / "seeds"
    r = _cli("experiment", "hnn", "--data", str(csv), "--time", "time", "--state", "theta,p_theta",
             "--trajectory", "run", "--energy", "p_theta**2/2 - cos(theta)", "--steps", "30", "--hidden", "16",
             "--seeds", "0-1", "--jobs", "2", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["jobs"] == 2
    st = summary["stats"]["hnn"]["energy_mse_mean"]
    assert st["n"] == 2 and st["min"] <= st["median"] <= st["max"] and len(st["values"]) == 2
    for s in (0, 1):
        assert (out / f"seed-{s}" / "report.md").is_file()
    # Different seeds train different networks.
    assert summary["runs"][0]["metrics"]["hnn"]["test"] != summary["runs"][1]["metrics"]["hnn"]["test"]
    assert "median [min, max]" in (out / "summary.md").read_text()


def test_cli_bad_data_options_are_one_line_errors(tmp_path):
    csv = _measured_pendulum(tmp_path / "lab.csv", trajectories=2, points=6)
    for argv, why in (
        (["--data", str(csv), "--state", "theta,p_theta", "--time", "time", "--energy", "import os"], "not valid"),
        (["--data", str(tmp_path / "none.csv")], "does not exist"),
        (["--data", str(csv), "--task", "spring"], "exclude each other"),
        (["--energy-column", "E"], "only apply with --data"),
        (["--data", str(csv), "--seeds", "3-1"], "--seeds"),
    ):
        r = _cli("experiment", "hnn", *argv, "--out", str(tmp_path / "o"), "--quiet")
        assert r.returncode == 2, (argv, r.stderr)
        assert why in r.stderr and "Traceback" not in r.stderr, (argv, r.stderr)
