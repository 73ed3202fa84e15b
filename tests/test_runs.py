"""Run folders: exclusive creation, a lock for the run's lifetime, no writing into other files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from innergrad.train._runs import (
    LOCK_NAME,
    RunFolder,
    RunFolderBusy,
    RunFolderError,
    lock_holder,
    refuse_input,
    same_file,
)


def test_default_names_are_unique_within_a_second(tmp_path):
    folders = [RunFolder.create(root=tmp_path / "runs") for _ in range(20)]
    try:
        assert len({f.path for f in folders}) == 20
        assert all(f.path.parent == tmp_path / "runs" and f.path.is_dir() for f in folders)
    finally:
        for f in folders:
            f.close()


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    with RunFolder.create(tmp_path / "r") as run:
        (run.path / "config.json").write_text("{}")
        with pytest.raises(RunFolderBusy, match=f"process {os.getpid()} is writing into this run folder"):
            RunFolder.open_for_resume(tmp_path / "r")
        assert lock_holder(tmp_path / "r") == os.getpid()
    assert lock_holder(tmp_path / "r") is None
    with RunFolder.open_for_resume(tmp_path / "r") as again:
        assert again.held


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text("{}")
    code = textwrap.dedent(f"""
        import os
        from innergrad.train._runs import RunFolder
        f = RunFolder.open_for_resume({str(run)!r})
        os._exit(0)  # dies holding the lock, as a killed run does
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (run / LOCK_NAME).read_text().strip().isdigit()  # the dead process's PID is still written there
    with RunFolder.open_for_resume(run) as f:
        assert (run / LOCK_NAME).read_text().strip() == str(os.getpid()) and f.held


def test_existing_folder_with_files_is_not_written_into(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(RunFolderError, match="1 file\\(s\\) that are not this run's, e.g. notes.txt"):
        RunFolder.create(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # not even a lock file is left


def test_overwrite_removes_only_innergrads_files(tmp_path):
    out = tmp_path / "old"
    (out / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "metrics.jsonl", "summary.json", "report.md", "eval-validation.npz",
                 "checkpoints/step-00000001.safetensors", "notes.txt", "data.npz"):
        (out / name).write_text(name)
    with pytest.raises(RunFolderError, match="already holds a run .* --resume"):
        RunFolder.create(out)
    with RunFolder.create(out, overwrite=True) as run:
        assert sorted(p.name for p in run.path.iterdir()) == [LOCK_NAME, "data.npz", "notes.txt"]
    assert (out / "notes.txt").read_text() == "notes.txt"


def test_overwrite_never_touches_a_folder_holding_an_input(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "data.npz").write_text("x")
    with pytest.raises(RunFolderError, match="holds the run's input"):
        RunFolder.create(out, overwrite=True, inputs=[out / "data.npz"])
    assert (out / "config.json").exists()


def test_empty_existing_folder_is_used_and_a_failed_run_leaves_nothing(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    with pytest.raises(ZeroDivisionError):
        with RunFolder.create(out):
            raise ZeroDivisionError
    assert out.is_dir() and not any(out.iterdir())  # the user's folder stays, empty as it was
    with pytest.raises(ZeroDivisionError):
        with RunFolder.create(root=tmp_path / "runs"):
            raise ZeroDivisionError
    assert not (tmp_path / "runs").exists()  # the folders made for the failed run go again


def test_out_below_a_regular_file_is_a_user_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, so no folder can be made below it"):
        RunFolder.create(tmp_path / "f" / "run")
    with pytest.raises(RunFolderError, match="is a file; give a folder"):
        RunFolder.create(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"


def test_a_hard_link_of_the_input_is_the_input(tmp_path):
    src = tmp_path / "x.npz"
    src.write_bytes(b"data")
    os.link(src, tmp_path / "link.npz")
    assert same_file(tmp_path / "link.npz", src) and not same_file(tmp_path / "missing.npz", src)
    with pytest.raises(ValueError, match=r"is the input file given to --data \(.*, the same file on disk\)"):
        refuse_input(tmp_path / "link.npz", [src])
    refuse_input(tmp_path / "other.npz", [src])


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(RunFolderError, match="no such run folder"):
        RunFolder.open_for_resume(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(RunFolderError, match="not a run folder"):
        RunFolder.open_for_resume(tmp_path / "d")


# ------------------------------------------------------------------------------- through the CLI, concurrently

TINY = ["--n-sequences", "16", "--seq-len", "5", "--input-size", "2", "--hidden-size", "4", "--hidden-layers", "8",
        "--epochs", "1", "--batch-size", "4", "--quiet", "--no-report", "--threads", "1"]


def _start(cwd: Path, *argv: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "innergrad", "train", *TINY, *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        out.append((p.returncode, err))
    return out


@pytest.mark.slow
def test_eight_runs_started_together_get_eight_complete_folders(tmp_path):
    results = _finish([_start(tmp_path) for _ in range(8)])
    assert [rc for rc, _ in results] == [0] * 8, [err for _, err in results]
    assert all("Traceback" not in err for _, err in results)
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 8
    for f in folders:
        assert (f / "config.json").is_file() and (f / "summary.json").is_file()
        assert len(list((f / "checkpoints").glob("step-*.safetensors"))) >= 1
        records = [json.loads(line) for line in (f / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in records if r.get("kind") == "val"]
        assert steps and steps == sorted(set(steps))  # one run's records, not two interleaved
        assert lock_holder(f) is None


@pytest.mark.slow
def test_two_runs_with_one_out_exactly_one_runs(tmp_path):
    results = _finish([_start(tmp_path, "--out", "shared") for _ in range(2)])
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "Traceback" not in refused and refused.count("\n") <= 2
    assert ("is writing into this run folder" in refused) or ("already holds a run" in refused), refused
    assert len(list((tmp_path / "shared" / "checkpoints").glob("step-*.safetensors"))) >= 1
    assert (tmp_path / "shared" / "summary.json").is_file()


def test_fit_out_holds_the_folder_for_its_lifetime(tmp_path):
    import numpy as np
    import torch

    import innergrad as ig

    x = np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32)
    seen = []

    class Probe(ig.train.Callback):
        def on_step_end(self, trainer, loss):
            seen.append(lock_holder(tmp_path / "fit"))

    ig.train.fit(torch.nn.Linear(2, 1), x, x[:, :1], steps=2, out=tmp_path / "fit", callbacks=[Probe()])
    assert seen == [os.getpid()] * 2 and lock_holder(tmp_path / "fit") is None
    with RunFolder.open_for_resume(tmp_path / "fit"):
        with pytest.raises(RunFolderBusy):
            ig.train.fit(torch.nn.Linear(2, 1), x, x[:, :1], steps=4, out=tmp_path / "fit")
