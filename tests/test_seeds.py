"""Parallel seeds: a bounded number of workers, workers that die with their parent, partial results kept."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from innergrad.core.errors import InnergradError
from innergrad.experiments import seeds

# A toy experiment on the runner: seed 0 finishes at once, every other seed sleeps (a long run to interrupt).
SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from innergrad.experiments.runner import Experiment
    from innergrad.experiments.seeds import run_seeds

    class Sleepy(Experiment):
        name = "sleepy"

        def command(self, seed):
            return f"sleepy --seed {seed}"

        def execute(self, ctx):
            (Path(os.environ["PIDS"]) / f"seed-{ctx.seed}.pid").write_text(str(os.getpid()))
            if ctx.seed:
                time.sleep(300)
            return {"metrics": {"value": float(ctx.seed)}}

        def report(self, res):
            return "# sleepy\\n"

    if __name__ == "__main__":
        print("parent", os.getpid(), flush=True)
        run_seeds(Sleepy(), [0, 1, 2], sys.argv[1], jobs=2, quiet=True)
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its exit status waits to be collected


def _start(tmp_path):
    script = tmp_path / "sleepy.py"
    script.write_text(SCRIPT)
    pids = tmp_path / "pids"
    pids.mkdir()
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), PIDS=str(pids))
    # preexec_fn: the parent gets SIGINT as from a terminal, also when pytest runs in the background
    # (where SIGINT is ignored and stays ignored across exec, as it should for a nohup'd run)
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Wait (bounded) until seed 0 has finished and two sleeping seeds run.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        summary = out / "summary.json"
        if summary.is_file() and len(list(pids.glob("*.pid"))) == 3:
            break
        if proc.poll() is not None:
            raise AssertionError(f"the parent ended early: {proc.communicate()}")
        time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError("seed 0 did not finish, or seeds 1 and 2 did not start, within 180 s")
    workers = [int((pids / f"seed-{s}.pid").read_text()) for s in (1, 2)]
    assert all(_alive(p) for p in workers)
    return proc, out, workers


def _gone(pids, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
                    reason="reads /proc; needs two cores for two workers")
def test_killed_parent_leaves_no_worker_and_keeps_finished_seeds(tmp_path):
    proc, out, workers = _start(tmp_path)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert _gone(workers), "a worker outlived its killed parent"
    finally:
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0] and summary["status"] == "running"
    assert summary["stats"]["field"]["value"]["values"] == [0.0]


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
                    reason="reads /proc; needs two cores for two workers")
def test_interrupted_parent_kills_its_workers_and_writes_the_partial_summary(tmp_path):
    proc, out, workers = _start(tmp_path)
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert _gone(workers, within=5.0), "a worker outlived its interrupted parent"
    finally:
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    assert "summary of the 1 seed(s) that finished" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["seeds"] == [0]
    assert "interrupted" in (out / "summary.md").read_text()


def test_the_number_of_workers_is_bounded():
    seeds.check_jobs(1)
    seeds.check_jobs(seeds.max_jobs())
    for bad in (0, -1, 2.0, True, seeds.max_jobs() + 1):
        with pytest.raises(InnergradError, match="--jobs"):
            seeds.check_jobs(bad)
    with pytest.raises(InnergradError, match="at most 1000 seeds"):
        seeds.parse_seeds("0-5000")


def test_cli_refuses_too_many_jobs_in_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-m", "innergrad", "experiment", "forces", "--steps", "1", "--seeds", "0-1",
                        "--jobs", str(seeds.max_jobs() + 1), "--out", str(tmp_path / "o"), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "CPU core" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
