"""Every verification that computes a difference has a stated tolerance and fails past it.

export's check of the written file against the model, `innergrad check`, and the bench's agreement
column: each is shown failing here (its difference forced past the tolerance), with exit status 1,
one line saying so, and (for export) nothing written.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

import innergrad as ig
from innergrad.cli import main

TINY = ["--n-sequences", "16", "--seq-len", "5", "--input-size", "2", "--hidden-size", "4", "--hidden-layers", "8",
        "--epochs", "1", "--batch-size", "4", "--quiet", "--no-report"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("checks") / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


def _listing(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("difference", [0.5, float("nan")])
def test_export_past_its_tolerance_exits_1_and_writes_nothing(run, tmp_path, capsys, monkeypatch, difference):
    ex = importlib.import_module("innergrad.export")  # ig.export is the function

    monkeypatch.setattr(ex, "check_exported", lambda *a, **k: difference)
    (tmp_path / "old.pt2").write_bytes(b"the user's earlier export")
    before = _listing(tmp_path)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "m.pt2")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("innergrad: check failed: the exported .pt2 program differs from the model by")
    assert "past the tolerance 1e-04" in err and "nothing was written" in err and err.count("\n") == 1
    assert _listing(tmp_path) == before  # no file, no temporary
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "old.pt2"), "--overwrite"]) == 1
    assert _listing(tmp_path) == before  # the file it would have replaced is untouched


def test_export_states_its_tolerance_when_it_passes(run, tmp_path, capsys):
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "m.pt2")]) == 0
    out = capsys.readouterr().out
    assert "largest relative difference" in out and "(tolerance 1e-04)" in out


def test_library_export_verification_raises(tmp_path, monkeypatch):
    ex = importlib.import_module("innergrad.export")  # ig.export is the function

    model = ig.GradRNN(2, 3, (4,))
    monkeypatch.setattr(ex, "check_exported", lambda *a, **k: 1e-3)
    with pytest.raises(ig.CheckFailed, match=r"differs from the model by 1\.0e-03 .* past the tolerance 1e-04"):
        ig.export(model, tmp_path / "m.pt2", verify=lambda p: ex.verify_exported(model, p, ".pt2"))
    assert not list(tmp_path.iterdir())
    assert ex.EXPORT_TOLERANCE[torch.float64] < ex.EXPORT_TOLERANCE[torch.float32]


def test_check_command_past_its_tolerance_exits_1(run, capsys, monkeypatch):
    import innergrad.train as train

    rows = [{"check": "gradcheck", "backend": "autograd", "passed": False, "error": 3e-2, "tolerance": "1e-06",
             "note": "", "skipped": False}]
    monkeypatch.setattr(train, "check_model", lambda *a, **k: rows)
    assert main(["check", "--run", str(run)]) == 1
    out = capsys.readouterr().out
    assert "3.00e-02" in out and "1e-06" in out and "FAIL" in out
    assert out.rstrip().splitlines()[-1].startswith("FAIL: 0 of 1 checks passed")


def test_bench_disagreement_past_its_tolerance_exits_1(tmp_path, capsys, monkeypatch):
    from innergrad.bench import harness

    def fake(cfg, ways, log=None):
        conf = {"T": cfg.T, "B": cfg.B, "width": cfg.width, "dtype": cfg.dtype}
        return [harness.Result("naive", conf, ms=1.0, ms_all=[1.0], max_rel_diff=0.0, agrees=True),
                harness.Result("fused", conf, ms=0.5, ms_all=[0.5], max_rel_diff=0.3, agrees=False)]

    monkeypatch.setattr(harness, "run_config", fake)
    out = tmp_path / "b.json"
    assert main(["bench", "--device", "cpu", "--T", "2", "--B", "2", "--width", "4", "--reps", "1",
                 "--ways", "naive,fused", "--json", str(out)]) == 1
    cap = capsys.readouterr()
    assert "agrees (max rel diff <= 2e-03)" in cap.out and "**NO**" in cap.out
    assert cap.err.splitlines()[-1].startswith("innergrad: check failed: 1 way(s) disagree")
    assert "fused at T=2, B=2, width=4 differs by 3.0e-01 (tolerance 2e-03, float32)" in cap.err
    import json

    assert json.loads(out.read_text())["agreement_tolerance"] == {"float32": 2e-3}
