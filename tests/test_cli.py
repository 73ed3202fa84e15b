"""The `innergrad` command line through `main([...])`: train, resume, eval, predict, check, report and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import innergrad as ig
from innergrad.cli import main
from innergrad.data.sequences import synthetic_data

TINY = ["--n-sequences", "16", "--seq-len", "5", "--input-size", "2", "--hidden-size", "4", "--hidden-layers",
        "8", "--epochs", "2", "--batch-size", "4", "--quiet"]


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny finished run with its report, shared by the read-only tests."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


def test_train_writes_the_run_folder(run, capsys):
    for name in ("config.json", "metrics.jsonl", "summary.json", "report.md", "loss.png", "predictions.png",
                 "hidden.png"):
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("step-*.safetensors"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["hidden_layers"] == [8] and cfg["model"]["input_size"] == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 2 * 4
    report = (run / "report.md").read_text()
    assert "validation R^2" in report and "![loss curves](loss.png)" in report


def test_train_prints_the_final_numbers(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), *TINY, "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "R^2" in out and "noise floor 0.0100" in out and str(tmp_path / "r") in out
    assert not (tmp_path / "r" / "report.md").exists()


def test_eval_prints_metrics_and_writes_predictions(run, tmp_path, capsys):
    out = tmp_path / "pred.npz"
    assert main(["eval", "--run", str(run), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "MSE" in text and "R^2" in text
    z = np.load(out)
    assert z["y_pred"].shape == z["y"].shape == (3, 5)  # 20% of 16 sequences
    summary = json.loads((run / "summary.json").read_text())
    r2 = float(text.split("R^2")[1].split()[0])
    assert r2 == pytest.approx(summary["val_r2"], abs=1e-6)


def test_eval_and_predict_on_files(run, tmp_path, capsys):
    d = synthetic_data(6, 5, 2, seed=9)
    npz = d.save(tmp_path / "new.npz")
    csv = d.save(tmp_path / "new.csv")
    assert main(["eval", "--run", str(run), "--data", str(csv)]) == 0
    assert (run / "eval-new.npz").is_file()
    x_only = tmp_path / "x_only.npz"
    np.savez(x_only, x=d.x)
    assert main(["predict", "--run", str(run), "--data", str(x_only), "--out", str(tmp_path / "y.npz")]) == 0
    y = np.load(tmp_path / "y.npz")["y"]
    model = ig.load(run)
    with torch.no_grad():
        ref, _ = model(torch.from_numpy(d.x).float().transpose(0, 1))
    np.testing.assert_allclose(y, ref.transpose(0, 1).numpy(), rtol=1e-6, atol=1e-6)
    assert main(["predict", "--run", str(run), "--data", str(csv), "--out", str(tmp_path / "y.csv")]) == 0
    lines = (tmp_path / "y.csv").read_text().splitlines()
    assert lines[0] == "sequence,t,y" and len(lines) == 1 + 6 * 5
    assert float(lines[1].split(",")[2]) == pytest.approx(float(y[0, 0]), rel=1e-6)
    assert main(["predict", "--run", str(run), "--data", str(npz)]) == 0
    assert (run / "predict-new.npz").is_file()


def test_check_prints_a_pass_table(run, capsys):
    assert main(["check", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "gradcheck" in out and "gradgradcheck" in out and "vs autograd" in out
    assert "FAIL" not in out and out.rstrip().splitlines()[-1].startswith("PASS:")
    # Every backend, the fused one included, now differentiates twice: gradgradcheck runs for each.
    gg = [line for line in out.splitlines() if line.startswith("gradgradcheck")]
    assert any("fused" in line for line in gg) and all("PASS" in line and "SKIP" not in line for line in gg)


def test_report_command_redraws(run, capsys):
    (run / "loss.png").unlink()
    assert main(["report", "--run", str(run)]) == 0
    assert (run / "loss.png").is_file()


def test_resume_via_cli_equals_uninterrupted(tmp_path):
    args = [*TINY, "--epochs", "3", "--no-report", "--tbptt", "2"]
    assert main(["train", "--out", str(tmp_path / "a"), *args]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), *args, "--max-steps", "5"]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["train"]["tbptt"] == 2
    assert main(["train", "--resume", str(tmp_path / "b"), "--quiet", "--no-report"]) == 0
    a, b = ig.load(tmp_path / "a").state_dict(), ig.load(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_file_and_flags(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("hidden_size = 3\nepochs = 1\nmode = 'detached'\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), *TINY[:-5], "--epochs", "1",
                 "--quiet", "--no-report"]) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["train"]
    assert saved["mode"] == "detached" and saved["epochs"] == 1
    assert saved["hidden_size"] == 4  # the command line wins over the file


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--data", "missing.npz", "--quiet"], "missing.npz: no such file"),
        (["train", "--mode", "half"], "argument --mode: invalid choice: 'half'"),
        (["train", "--epochs", "x"], "argument --epochs: invalid int value"),
        (["train", "--epochs", "0", "--quiet"], "epochs must be >= 1"),
        (["train", "--device", "cuda:9", "--quiet"], "cuda"),
        (["eval", "--run", "no/such/run"], "not a run folder"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_user_errors_exit_2_without_traceback(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())  # the message is wrapped for the terminal
    assert match in err and "Traceback" not in err
    assert err.startswith("innergrad: error:")


def test_bad_data_and_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 3, 2)), y=np.zeros((4, 2)))
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "x and y lengths do not match" in _err(capsys)
    assert not (tmp_path / "r").exists()  # nothing is created for a run that cannot start
    cfg = tmp_path / "c.toml"
    cfg.write_text("epoch = 3\n")
    assert main(["train", "--config", str(cfg), "--quiet"]) == 2
    assert "unknown setting 'epoch' (did you mean 'epochs'?)" in _err(capsys)


def test_resume_and_out_guards(run, tmp_path, capsys):
    assert main(["train", "--out", str(run), "--quiet"]) == 2
    assert "already holds a run" in _err(capsys)
    assert main(["train", "--resume", str(run), "--lr", "0.5", "--quiet"]) == 2
    err = _err(capsys)
    assert "--lr (run has 0.005)" in err and "Only epochs, device, threads, on_nan may change" in err


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "predict", "check", "examples:"):
        assert cmd in out
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--tbptt K" in out and "(default: 32)" in out and "teacher" in out
    assert main(["--version"]) == 0


def test_python_dash_m(tmp_path):
    res = subprocess.run([sys.executable, "-m", "innergrad", "eval", "--run", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "not a run folder" in res.stderr and "Traceback" not in res.stderr


def test_report_compare_prints_a_table(run, tmp_path, capsys):
    other = tmp_path / "det"
    assert main(["train", "--out", str(other), *TINY, "--mode", "detached", "--no-report"]) == 0
    capsys.readouterr()
    png = tmp_path / "cmp.png"
    assert main(["report", "--run", str(run), "--compare", str(other), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| run | mode | val MSE |" in out and "| det | detached |" in out and png.is_file()


def test_resume_may_extend_epochs(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), *TINY, "--no-report"]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "3", "--quiet", "--no-report"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 3 * 4 and summary["total_steps"] == 12
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 3


def _raising(exc):
    def run(args):
        raise exc

    return run


def test_a_bug_is_one_line_exit_3_and_its_traceback_kept_in_a_fresh_file(tmp_path, capsys, monkeypatch):
    import innergrad.cli.report as report

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(report, "run", _raising(ValueError("an internal mistake " + "x" * 500)))
    assert main(["report", "--run", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "internal error (a bug in innergrad, not in your input): ValueError: an internal mistake" in err
    assert "x" * 200 not in err and "chars)" in err  # the message is cut to a readable length
    path = Path(err.split("the traceback is in ")[1].split(";")[0])
    assert path.parent == tmp_path / "cache" / "innergrad" and path.name.startswith("crash-")
    assert "Traceback" in path.read_text() and "an internal mistake" in path.read_text()
    assert main(["report", "--run", str(tmp_path)]) == 3  # a second crash gets a file of its own
    second = Path(capsys.readouterr().err.split("the traceback is in ")[1].split(";")[0])
    assert second != path and path.read_text() != ""


def test_debug_prints_the_traceback_instead(tmp_path, capsys, monkeypatch):
    import innergrad.cli.report as report

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(report, "run", _raising(TypeError("wrong type inside")))
    assert main(["report", "--run", str(tmp_path), "--debug"]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "TypeError: wrong type inside" in err
    assert not (tmp_path / "cache" / "innergrad").exists()


@pytest.mark.parametrize("exc", [
    lambda p: FileNotFoundError(2, "No such file or directory", str(p / "gone.npz")),
    lambda p: PermissionError(13, "Permission denied"),
    lambda p: ig.InnergradError("a user mistake; the fix"),
])
def test_user_errors_and_os_errors_about_files_stay_exit_2(exc, tmp_path, capsys, monkeypatch):
    import innergrad.cli.report as report

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(report, "run", _raising(exc(tmp_path)))
    assert main(["report", "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err
    assert not (tmp_path / "cache").exists()
