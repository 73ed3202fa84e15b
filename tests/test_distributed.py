"""DDP training (torch.distributed, gloo on this CPU) against single-process training, in float64.

The multi-process cases start 2 gloo ranks once (`torch.multiprocessing`) and run every scenario
in them; the torchrun cases drive the real command line (`python -m torch.distributed.run ...
-m innergrad train --distributed`). References are computed in this process, single-process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist

import innergrad as ig
from innergrad.cli import main
from innergrad.core.errors import InnergradError
from innergrad.data.sequences import synthetic_data
from innergrad.train import TrainConfig, Trainer, TrainingDiverged
from innergrad.train import _checkpoint as ck
from innergrad.train._build import sequence_trainer
from innergrad.train._distributed import DDP_REFUSED, refuse_unsupported, shard, wrap_ddp

pytestmark = pytest.mark.skipif(not torch_dist.is_available() or not torch_dist.is_gloo_available(),
                                reason="this PyTorch build has no torch.distributed with gloo")

WORLD = 2
BACKENDS = ["closed_form", "autograd", "func", "fused"]
MODES = ["exact", "detached"]

# Batch 7 over 2 ranks: 4 + 3 sequences plus one DistributedSampler padding repeat; 17 training
# sequences give batches of 7, 7 and 3 (the last one pads too). Ragged lengths 2..7.
BASE = dict(seq_len=7, input_size=2, hidden_size=3, hidden_layers=(8,), batch_size=7, lr=2e-2, epochs=2,
            dtype="float64", val_fraction=0.15)


def _ragged_npz(path: Path, n: int = 20, huge: bool = False) -> str:
    d = synthetic_data(n, 7, 2, seed=3)
    lengths = np.random.default_rng(5).integers(2, 8, n)
    lengths[0] = 7
    y = d.y
    if huge:  # one training sequence: finite data, but its squared error overflows float32 (an inf loss)
        train, _ = d.split(BASE["val_fraction"], 0)
        y[int(train.ids[5]), :] = 1e20
    np.savez(path, x=d.x, y=y, lengths=lengths)
    return str(path)


def _cfg(data: str, **kw) -> TrainConfig:
    return TrainConfig.from_mapping({**BASE, "data": data, **kw})


# ------------------------------------------------------------------------------- no processes needed


@pytest.mark.parametrize("B", [1, 2, 3, 7, 8])
@pytest.mark.parametrize("W", [1, 2, 3, 4])
def test_shard_is_distributed_samplers_split(B, W):
    from torch.utils.data import DistributedSampler

    idx = np.arange(100, 100 + B)
    got = []
    for r in range(W):
        mine, real = shard(idx, r, W)
        want = list(DistributedSampler(range(B), num_replicas=W, rank=r, shuffle=False))
        assert (mine - 100).tolist() == want
        got += [int(i) for i, ok in zip(mine, real) if ok]
    assert sorted(got) == idx.tolist()  # the real parts cover the batch exactly once


def test_wrap_ddp_refuses_static_graph_and_find_unused_parameters():
    model = ig.GradRNN(2, 3, (4,))
    for key in DDP_REFUSED:
        with pytest.raises(InnergradError, match=rf"DistributedDataParallel\({key}=True\) is refused.*pytorch#47562"):
            wrap_ddp(model, None, **{key: True})


@pytest.mark.parametrize("values, match", [
    ({"learn_h0": True, "tbptt": 3}, r"cannot train --learn-h0 with --tbptt.*Drop --learn-h0 or set --tbptt 0"),
    ({"device": "cuda:1"}, r"cuda:LOCAL_RANK.*give --device cuda"),
    ({"device": "mps"}, r"no backend for MPS"),
])
def test_refuses_configurations_ddp_cannot_run(values, match):
    with pytest.raises(InnergradError, match=match):
        refuse_unsupported(TrainConfig.from_mapping(values))


@pytest.mark.parametrize("argv, match", [
    (["--distributed"], r"--distributed needs the variables torchrun sets.*torchrun --standalone --nproc-per-node 2"),
    (["--distributed", "--learn-h0", "--tbptt", "4"], r"cannot train --learn-h0 with --tbptt"),
    (["--dist-backend", "gloo"], r"--dist-backend applies only with --distributed"),
])
def test_cli_distributed_errors(argv, match, tmp_path, monkeypatch, capsys):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["train", *argv, "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("innergrad: error:") and "Traceback" not in err
    import re

    assert re.search(match, err), err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------- 2 gloo ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grads(tr: Trainer) -> dict:
    return {k: p.grad.detach().clone() for k, p in tr.model.named_parameters()}


def _weights(tr: Trainer) -> dict:
    return {k: v.detach().clone() for k, v in tr.model.state_dict().items()}


def _save(path: Path, tensors: dict) -> None:
    np.savez(path, **{k: v.numpy() for k, v in tensors.items()})


def _worker(rank: int, world: int, port: int, out: str, data: str, huge: str) -> None:
    """One rank: run every scenario; rank 0 saves what the parent compares (each rank its own stops)."""
    from innergrad.train._distributed import init_distributed, shutdown

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if pytest ignores SIGINT
    ctx = init_distributed("cpu", "gloo", timeout_s=120)
    out = Path(out)
    tr = None
    try:
        for backend in BACKENDS:
            for mode in MODES:
                tag = f"{backend}-{mode}"
                # Gradient of one step (no clipping: the raw gradient), then a short run with clipping.
                tr = sequence_trainer(_cfg(data, backend=backend, mode=mode, grad_clip=0.0), dist=ctx)
                tr.train_step()
                if rank == 0:
                    _save(out / f"grad-{tag}.npz", _grads(tr))
                tr = sequence_trainer(_cfg(data, backend=backend, mode=mode), dist=ctx)
                tr.fit(max_steps=5)
                if rank == 0:
                    _save(out / f"run-{tag}.npz", _weights(tr))
        # TBPTT: one update per chunk, some ranks' sequences end before the others'.
        tr = sequence_trainer(_cfg(data, tbptt=3, mode="detached"), dist=ctx)
        tr.fit()
        if rank == 0:
            _save(out / "run-tbptt.npz", _weights(tr))
        # A signal to rank 1 only: both ranks stop after the same step, rank 0 saves.
        tr = sequence_trainer(_cfg(data), out / "sig", dist=ctx)
        step = tr.train_step

        def step_then_signal():
            loss = step()
            if rank == 1 and tr.step == 3:
                signal.raise_signal(signal.SIGINT)
            return loss

        tr.train_step = step_then_signal
        s = tr.fit()
        (out / f"sig-rank{rank}.json").write_text(json.dumps({"status": s["status"], "step": s["step"],
                                                                 "signal": s["signal"]}))
        # A batch whose loss overflows on one rank only: every rank stops at the same step...
        tr = sequence_trainer(_cfg(huge, epochs=1, dtype="float32"), out / "nan", dist=ctx)
        try:
            tr.fit()
            res = {"raised": False}
        except TrainingDiverged as e:
            res = {"raised": True, "message": str(e), "step": tr.step}
        (out / f"nan-rank{rank}.json").write_text(json.dumps(res))
        # ...or with on_nan="skip", skips it on every rank and goes on.
        tr = sequence_trainer(_cfg(huge, epochs=1, dtype="float32", on_nan="skip"), dist=ctx)
        s = tr.fit()
        (out / f"skip-rank{rank}.json").write_text(json.dumps({"skipped": s["skipped_steps"], "step": s["step"]}))
        if rank == 0:
            _save(out / "run-skip.npz", _weights(tr))
    except BaseException:
        (out / f"error-rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        if tr is not None:  # a DDP wrapper alive at destroy_process_group can abort the process at exit
            tr.close()
        tr = None
        shutdown(ctx)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Run all scenarios once in 2 gloo processes; returns (folder, data path, huge-loss data path)."""
    import torch.multiprocessing as mp

    d = tmp_path_factory.mktemp("ddp")
    data = _ragged_npz(d / "ragged.npz")
    huge = _ragged_npz(d / "huge.npz", huge=True)
    try:
        mp.spawn(_worker, args=(WORLD, _free_port(), str(d), data, huge), nprocs=WORLD, join=True)
    except Exception:
        errors = "\n".join(p.read_text() for p in d.glob("error-rank*.txt"))
        pytest.fail(f"a rank failed:\n{errors}")
    return d, data, huge


def _load(path: Path) -> dict:
    with np.load(path) as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ddp_gradient_equals_single_process(ddp_results, backend, mode):
    d, data, _ = ddp_results
    tr = sequence_trainer(_cfg(data, backend=backend, mode=mode, grad_clip=0.0))
    assert tr.task.backend_used == backend
    tr.train_step()
    ref = _grads(tr)
    got = _load(d / f"grad-{backend}-{mode}.npz")
    assert max(float(v.abs().max()) for v in ref.values()) > 1e-3  # a real gradient, not zeros
    assert _max_diff(got, ref) <= 1e-6 * max(1.0, max(float(v.abs().max()) for v in ref.values()))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ddp_short_run_equals_single_process(ddp_results, backend, mode):
    d, data, _ = ddp_results
    tr = sequence_trainer(_cfg(data, backend=backend, mode=mode))
    start = _weights(tr)
    tr.fit(max_steps=5)
    ref = _weights(tr)
    got = _load(d / f"run-{backend}-{mode}.npz")
    assert _max_diff(start, ref) > 1e-3  # training moved the weights
    assert _max_diff(got, ref) <= 1e-9


def test_ddp_tbptt_run_equals_single_process(ddp_results):
    d, data, _ = ddp_results
    tr = sequence_trainer(_cfg(data, tbptt=3, mode="detached"))
    tr.fit()
    assert _max_diff(_load(d / "run-tbptt.npz"), _weights(tr)) <= 1e-9


def test_ddp_signal_on_one_rank_stops_all_at_the_same_step(ddp_results):
    d, _, _ = ddp_results
    r0, r1 = (json.loads((d / f"sig-rank{r}.json").read_text()) for r in range(WORLD))
    assert r0["status"] == r1["status"] == "interrupted"
    assert r0["step"] == r1["step"] == 3
    assert r1["signal"] == "SIGINT" and r0["signal"] == "a signal to another rank"
    assert [s for s, _ in ck.list_checkpoints(d / "sig")] == [3]
    assert not list((d / "sig" / "checkpoints").glob(".*.tmp"))


def test_ddp_non_finite_loss_stops_or_skips_on_every_rank(ddp_results):
    d, _, huge = ddp_results
    r0, r1 = (json.loads((d / f"nan-rank{r}.json").read_text()) for r in range(WORLD))
    assert r0["raised"] and r1["raised"] and r0["step"] == r1["step"]
    assert f"at step {r0['step']}" in r0["message"]
    s0, s1 = (json.loads((d / f"skip-rank{r}.json").read_text()) for r in range(WORLD))
    assert s0 == s1 and s0["skipped"] and s0["step"] > len(s0["skipped"])
    tr = sequence_trainer(_cfg(huge, epochs=1, dtype="float32", on_nan="skip"))
    s = tr.fit()
    assert s["skipped_steps"] == s0["skipped"]
    assert _max_diff(_load(d / "run-skip.npz"), _weights(tr)) <= 1e-5  # float32 here


# ------------------------------------------------------------------------------- torchrun, the real CLI

TINY = ["--hidden-size", "3", "--hidden-layers", "8", "--batch-size", "7",
        "--lr", "0.02", "--epochs", "3", "--dtype", "float64", "--no-report", "--checkpoint-every", "2"]


def _torchrun(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
           "-m", "innergrad", "train", "--distributed", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_torchrun_train_resume_with_damaged_checkpoint_equals_single_process(tmp_path):
    data = _ragged_npz(tmp_path / "ragged.npz")
    args = ["--data", data, *TINY]
    assert main(["train", "--out", str(tmp_path / "one"), *args, "--quiet"]) == 0

    res = _torchrun(["--out", "ddp", *args, "--max-steps", "6"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("run folder") == 1  # rank 0 alone reports
    assert "on 2 processes" in res.stdout and "stopped at step 6" in res.stdout
    run = tmp_path / "ddp"
    assert json.loads((run / "config.json").read_text())["distributed"]["world_size"] == WORLD
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == sorted(set(steps))  # one writer: no duplicated records
    # Damage the newest checkpoint: every rank must resume from the previous one, rank 0 says so once.
    (step_new, newest), (step_prev, _) = ck.list_checkpoints(run)[:2]
    raw = bytearray(newest.read_bytes())
    raw[-20] ^= 0xFF
    newest.write_bytes(bytes(raw))
    res = _torchrun(["--resume", "ddp"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("damaged checkpoint") == 1 and newest.name in res.stderr
    assert res.stderr.count(f"resuming ddp at step {step_prev} of") == 1
    assert (newest.parent / (newest.name + ".damaged")).exists()
    a, b = ig.load(tmp_path / "one").state_dict(), ig.load(run).state_dict()
    assert next(iter(b.values())).dtype == torch.float64
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-9


@pytest.mark.slow
def test_torchrun_user_error_is_reported_once_without_traceback(tmp_path):
    res = _torchrun(["--data", str(tmp_path / "missing.npz"), "--out", "r", "--quiet"], tmp_path)
    assert res.returncode != 0
    err = " ".join(res.stderr.split())  # our message is wrapped; torchrun appends its own failure report
    assert err.count("innergrad: error:") == 1 and "innergrad [rank" not in err, res.stderr[-2000:]
    assert "missing.npz: no such file; check the path given to --data" in err
    assert not (tmp_path / "r").exists()
