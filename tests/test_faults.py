"""Faults: SIGKILL at a random step, damaged checkpoints, Ctrl-C, NaN/inf losses, crashes during a write.

The subprocess tests drive the real command (`python -m innergrad train`); references and resumes
run in this process through `main([...])`, the same code. CPU training with 1 thread is
deterministic, so "the same final weights" means bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import innergrad as ig
from innergrad.cli import main
from innergrad.data.sequences import synthetic_data
from innergrad.train import TrainConfig, TrainingDiverged
from innergrad.train import _checkpoint as ck
from innergrad.train._build import sequence_trainer
from innergrad.train._sequence_task import NAN_SKIP_LIMIT

from .runs import metrics_records

# 64 steps of ~20 ms with a checkpoint after each: a kill lands anywhere, mid-step or mid-write.
RUN = ["--n-sequences", "160", "--seq-len", "12", "--input-size", "2", "--hidden-size", "6", "--hidden-layers",
       "16", "--epochs", "4", "--batch-size", "8", "--no-report", "--quiet"]
MODEL = ["--hidden-size", "4", "--hidden-layers", "8", "--epochs", "3", "--batch-size", "8", "--no-report", "--quiet"]
TINY = ["--n-sequences", "24", "--seq-len", "6", "--input-size", "2", *MODEL]


def _weights(run) -> dict:
    return ig.load(run).state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _spawn(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # preexec_fn: the run gets SIGINT as from a terminal, also when pytest runs with SIGINT ignored
    # (nohup, `cmd &`), which a child would otherwise inherit (and a trainer then rightly leaves alone).
    return subprocess.Popen([sys.executable, "-m", "innergrad", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_checkpoint(proc: subprocess.Popen, run: Path, step: int, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        ck_steps = [s for s, _ in ck.list_checkpoints(run)]
        if ck_steps and ck_steps[0] >= step:
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended before step {step}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.002)
    proc.kill()
    pytest.fail(f"no checkpoint for step {step} within {timeout} s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of RUN (checkpoint every step) in this process."""
    out = tmp_path_factory.mktemp("faults") / "ref"
    assert main(["train", "--out", str(out), *RUN, "--checkpoint-every", "1"]) == 0
    return out


# ------------------------------------------------------------------------------- SIGKILL


@pytest.mark.parametrize("seed", [None, pytest.param(1, marks=pytest.mark.slow)])
def test_sigkill_at_a_random_point_then_resume_gives_identical_weights(reference, tmp_path, seed):
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    kill_after, delay = rng.randint(3, 58), rng.uniform(0.0, 0.03)
    why = f"(seed {seed}: kill after checkpoint {kill_after} + {delay * 1000:.0f} ms)"
    run = tmp_path / "run"
    proc = _spawn(["--out", str(run), *RUN, "--checkpoint-every", "1"], tmp_path)
    _wait_for_checkpoint(proc, run, kill_after)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, why
    steps = [s for s, _ in ck.list_checkpoints(run)]
    assert steps and steps[0] >= kill_after, why
    assert main(["train", "--resume", str(run), "--quiet", "--no-report"]) == 0, why
    assert _same(_weights(reference), _weights(run)), why
    assert metrics_records(reference) == metrics_records(run), why
    assert not list((run / "checkpoints").glob(".*.tmp")), why  # a write cut short leaves no litter behind


# ------------------------------------------------------------------------------- damaged checkpoints


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "tensor-bit-flip":  # the header still parses: only the digest can tell
        raw[-9] ^= 0x01
        path.write_bytes(bytes(raw))
    elif how == "header-garbage":
        raw[8:40] = b"\x00" * 32
        path.write_bytes(bytes(raw))
    elif how == "step-edited":  # valid JSON, valid safetensors, but not what was written
        n = int.from_bytes(raw[:8], "little")
        head = raw[8 : 8 + n].decode()
        assert '\\"step\\": 6,' in head
        path.write_bytes(bytes(raw[:8]) + head.replace('\\"step\\": 6,', '\\"step\\": 7,', 1).encode()
                         + bytes(raw[8 + n :]))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "empty", "tensor-bit-flip", "header-garbage", "step-edited"])
def test_damaged_newest_checkpoint_resumes_from_the_previous_one(tmp_path, how, capsys):
    full = tmp_path / "full"
    assert main(["train", "--out", str(full), *TINY]) == 0
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY, "--checkpoint-every", "2", "--max-steps", "6"]) == 0
    (s_new, newest), (s_prev, _) = ck.list_checkpoints(run)[:2]
    assert (s_new, s_prev) == (6, 4)
    _damage(newest, how)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet", "--no-report"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"innergrad: warning: {newest}:" in err and ("damaged" in err or "truncated" in err), err
    assert f"Resumed from the previous checkpoint {run / 'checkpoints' / 'step-00000004.safetensors'}" in err
    assert "Traceback" not in err
    assert (newest.parent / (newest.name + ".damaged")).is_file()  # kept for inspection, out of the way
    assert _same(_weights(full), _weights(run))


def test_every_checkpoint_damaged_is_a_clear_error_that_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY, "--checkpoint-every", "2", "--max-steps", "4"]) == 0
    for _, p in ck.list_checkpoints(run):
        _damage(p, "truncated")
    before = _hashes(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no readable checkpoint" in err and "step-00000004.safetensors" in err and "step-00000002" in err
    assert "restore a checkpoint from a backup, or start a new run with --out" in err
    assert "Traceback" not in err
    assert _hashes(run) == before


def test_loading_never_executes_code(tmp_path):
    """A pickle that would run code, named like a checkpoint: it is read as bytes and rejected."""
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY, "--max-steps", "2"]) == 0
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    evil = run / "checkpoints" / "step-00000099.safetensors"
    evil.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.warns(ck.CheckpointFallbackWarning, match=r"step-00000099.safetensors: .*damaged"):
        model = ig.load(run)
    assert isinstance(model, ig.GradRNN)
    with pytest.raises(ck.CheckpointError, match=r"step-00000099.safetensors"):
        ig.load(evil)
    torch_file = tmp_path / "model.safetensors"
    torch.save({"evil": Evil()}, torch_file)
    with pytest.raises(ck.CheckpointError, match=r"model.safetensors: .*(damaged|not a safetensors)"):
        ig.load(torch_file)
    assert not marker.exists()


def test_crash_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    tr = sequence_trainer(TrainConfig.from_mapping(dict(n_sequences=16, seq_len=4, input_size=2, hidden_size=3,
                                               hidden_layers=(4,), batch_size=4)), tmp_path / "run")
    tr.train_step()
    first = tr.save_checkpoint()
    tr.train_step()

    def crash(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ck.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        tr.save_checkpoint()
    monkeypatch.undo()
    assert [p for _, p in ck.list_checkpoints(tmp_path / "run")] == [first]
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # the temp file was removed
    ck.load_checkpoint(first)


def test_stale_temp_files_are_removed_on_resume(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY, "--max-steps", "2"]) == 0
    stale = run / "checkpoints" / ".step-00000003.safetensors.k2j3.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(run), "--quiet", "--no-report"]) == 0
    assert not stale.exists()


# ------------------------------------------------------------------------------- SIGINT / SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_signal_saves_a_checkpoint_and_prints_how_to_resume(reference, tmp_path, sig):
    run = tmp_path / "run"
    proc = _spawn(["--out", str(run), *RUN, "--checkpoint-every", "1"], tmp_path)
    _wait_for_checkpoint(proc, run, 5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith(f"interrupted by {sig.name} at step ") and "checkpoint saved" in last
    assert last.endswith(f"Continue with: innergrad train --resume {run}")
    assert "Traceback" not in err
    step = int(last.split(" at step ")[1].split()[0])
    assert ck.list_checkpoints(run)[0][0] == step
    assert main(["train", "--resume", str(run), "--quiet", "--no-report"]) == 0
    assert _same(_weights(reference), _weights(run))


# ------------------------------------------------------------------------------- NaN / inf


def _huge_npz(tmp_path: Path, rows: str = "one") -> str:
    d = synthetic_data(24, 6, 2, seed=1)
    if rows == "one":  # one training sequence whose squared error overflows float32
        train, _ = d.split(0.2, 0)
        d.y[int(train.ids[3])] = 1e20
    else:
        d.y[:] = 1e20
    return str(d.save(tmp_path / "huge.npz"))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_state(tmp_path, capsys):
    data = _huge_npz(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--data", data, "--out", str(run), *MODEL]) == 1
    err = " ".join(capsys.readouterr().err.split())
    step = int(err.split("the loss became inf at step ")[1].split()[0])
    assert err.startswith("innergrad: training diverged:") and "Traceback" not in err
    assert f"The last good checkpoint (step {step}) is kept in {run / 'checkpoints'}" in err
    assert f"continue with: innergrad train --resume {run} --on-nan skip" in err
    assert ck.list_checkpoints(run)[0][0] == step
    model = ig.load(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # ...and that is where a resume with --on-nan skip goes on from.
    assert main(["train", "--resume", str(run), "--on-nan", "skip", "--quiet", "--no-report"]) == 0
    out = capsys.readouterr().out
    # The bad sequence comes once per epoch: 3 skipped batches, the first the one that stopped the run.
    assert f"skipped      3 batch(es) with a non-finite loss (--on-nan skip): steps {step}, " in out


def test_on_nan_skip_equals_a_run_without_the_bad_batches(tmp_path):
    data = _huge_npz(tmp_path)
    cfg = TrainConfig.from_mapping(dict(data=data, seq_len=6, input_size=2, hidden_size=4, hidden_layers=(8,),
                                        epochs=3, batch_size=8, on_nan="skip"))
    tr = sequence_trainer(cfg, tmp_path / "run")
    s = tr.fit()
    assert s["status"] == "completed" and len(s["skipped_steps"]) == 3  # the bad sequence, once per epoch
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    skipped = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in skipped if r["kind"] == "skipped"] == s["skipped_steps"]
    # The same run, stepping over exactly those batches by hand, gives the same weights.
    ref = sequence_trainer(cfg)
    while ref.step < ref.total_steps:
        if ref.step in s["skipped_steps"]:
            ref.step += 1
        else:
            ref.train_step()
    a, b = tr.model.state_dict(), ref.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_on_nan_skip_still_stops_when_every_batch_is_bad(tmp_path):
    data = _huge_npz(tmp_path, rows="all")
    cfg = TrainConfig.from_mapping(dict(data=data, seq_len=6, input_size=2, hidden_size=4, hidden_layers=(8,),
                                        epochs=20, batch_size=4, on_nan="skip"))
    tr = sequence_trainer(cfg, tmp_path / "run")
    with pytest.raises(TrainingDiverged, match=rf"{NAN_SKIP_LIMIT} batches in a row \(steps 0 to "
                                               rf"{NAN_SKIP_LIMIT - 1}\) had a non-finite loss"):
        tr.fit()
    assert tr.step == NAN_SKIP_LIMIT - 1  # stopped at the 10th bad batch


def test_inf_gradient_is_caught_too(tmp_path):
    cfg = TrainConfig.from_mapping(dict(n_sequences=16, seq_len=4, input_size=2, hidden_size=3, hidden_layers=(4,),
                                        batch_size=4))
    tr = sequence_trainer(cfg, tmp_path / "run")
    tr.train_step()
    good = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.model.F.out.weight.register_hook(lambda g: g * float("inf"))  # a finite loss with an inf gradient
    with pytest.raises(TrainingDiverged, match=r"the gradient norm became (inf|nan) at step 1 "):
        tr.train_step()
    state, _ = ck.load_checkpoint(tmp_path / "run")
    assert state["trainer"]["step"] == 1  # the state before the bad batch, untouched by it
    assert all(torch.equal(state["model"][k], good[k]) for k in good)
