"""Malformed input on the CLI, config, checkpoint, run-folder and library side (data-file errors: tests/test_data.py).

Table-driven. Every CLI case runs twice, in-process through `main()` and in a process of its own
(tests/cli_runner.py forks one per case), and checks: exit status 2, one line on stderr that names
the problem and the fix (the listed fragments), no traceback, nothing created for a run that cannot
start, and every file of the user's (data, configs, run folders) byte-identical afterwards. Library
cases check the exception type and message and the same snapshot of the user's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import innergrad as ig
from innergrad.cli import main
from innergrad.core.files import write_json
from innergrad.data.sequences import synthetic_data
from innergrad.train import _checkpoint as ck
from innergrad.train._runs import LOCK_NAME, RunFolder

TINY = ["--n-sequences", "16", "--seq-len", "5", "--input-size", "2", "--hidden-size", "4", "--hidden-layers", "8",
        "--epochs", "1", "--batch-size", "4", "--quiet", "--no-report"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def data_run(tmp_path_factory) -> Path:
    """A finished 2-epoch run trained on a data file (its sha256 recorded)."""
    d = tmp_path_factory.mktemp("bad_data")
    synthetic_data(16, 5, 2, seed=3).save(d / "train.npz")
    args = [a for a in TINY if a not in ("--n-sequences", "16", "--seq-len", "5", "--input-size", "2")]
    assert main(["train", "--out", str(d / "run"), "--data", str(d / "train.npz"), *args, "--epochs", "2"]) == 0
    return d / "run"


@pytest.fixture(scope="module")
def cli_runner():
    """`run(argv, cwd) -> (status, stdout, stderr)` of a command line in a process of its own."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("cli_runner.py"))], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(argv: list[str], cwd: Path, timeout: float = 120) -> tuple[int | None, str, str]:
        out, err = Path(cwd).parent / "case.out", Path(cwd).parent / "case.err"  # outside the snapshot
        server.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "stdout": str(out), "stderr": str(err),
                                       "timeout": timeout}) + "\n")
        server.stdin.flush()
        rc = json.loads(server.stdout.readline())["rc"]
        return rc, out.read_text(), err.read_text()

    yield run
    server.stdin.close()
    server.wait(timeout=60)


HELD: list[RunFolder] = []  # run folders a case holds locked, as a run in progress would
DATA_RUN: list[Path] = []  # the module's data-file run (set by `ws`)


@pytest.fixture
def ws(tmp_path_factory, run, data_run, monkeypatch):
    """A work folder with the user's files: good data, odd data, configs, a copy of a finished run."""
    tmp_path = tmp_path_factory.mktemp("ws") / "ws"  # its parent holds the runner's stdout/stderr files
    tmp_path.mkdir()
    monkeypatch.chdir(tmp_path)
    DATA_RUN[:] = [data_run]
    d = synthetic_data(6, 5, 2, seed=4)
    d.save(tmp_path / "good.npz")
    d.save(tmp_path / "good.csv")
    np.savez(tmp_path / "x_only.npz", x=d.x)
    synthetic_data(6, 5, 3, seed=4).save(tmp_path / "three.npz")
    (tmp_path / "semicolon.csv").write_text("sequence;t;x0;x1;y\na;0;1;2;3\n")
    (tmp_path / "notes.txt").write_text("my notes\n")
    shutil.copytree(run, tmp_path / "run")
    yield tmp_path
    while HELD:
        HELD.pop().close()


def _hashes(folder: Path, skip: tuple[Path, ...] = ()) -> dict:
    """sha256 of every regular file below `folder` (pipes and device links are listed, never read)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p in skip:
            continue
        if p.is_symlink() or not p.is_file():
            out[str(p.relative_to(folder))] = "link" if p.is_symlink() else "dir" if p.is_dir() else "special"
        else:
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _write(ws: Path, name: str, content) -> str:
    p = ws / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    return name


def _damaged_checkpoint(ws: Path) -> str:
    p = ws / "random.safetensors"
    p.write_bytes(bytes(range(256)) * 4)
    return p.name


def _foreign_safetensors(ws: Path) -> str:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(ws / "foreign.safetensors"), metadata={"format": "pt"})
    return "foreign.safetensors"


def _misfit_checkpoint(ws: Path) -> str:
    """A readable innergrad checkpoint whose weights do not fit its model description."""
    state, _ = ck.load_checkpoint(ws / "run")
    state["model_spec"]["hidden_size"] = 7
    (ws / "misfit.safetensors").write_bytes(ck.encode_checkpoint(state))
    return "misfit.safetensors"


def _run_without_checkpoints(ws: Path) -> str:
    shutil.copytree(ws / "run", ws / "empty_run")
    for p in (ws / "empty_run" / "checkpoints").iterdir():
        p.unlink()
    return "empty_run"


def _damaged_config(ws: Path) -> str:
    shutil.copytree(ws / "run", ws / "cfg_run")
    (ws / "cfg_run" / "config.json").write_text('{"train": {"epochs": 1,')
    return "cfg_run"


def _list_config(ws: Path) -> str:
    shutil.copytree(ws / "run", ws / "list_run")
    (ws / "list_run" / "config.json").write_text("[1, 2]\n")
    return "list_run"


def _busy_run(ws: Path) -> str:
    HELD.append(RunFolder.open_for_resume(ws / "run"))  # this test's process holds it, as a live run would
    return "run"


def _user_folder(ws: Path) -> str:
    (ws / "mine").mkdir()
    (ws / "mine" / "thesis.tex").write_text("\\documentclass{article}\n")
    return "mine"


def _fifo(ws: Path, name: str) -> str:
    os.mkfifo(ws / name)
    return name


def _dev_zero_link(ws: Path, name: str) -> str:
    os.symlink("/dev/zero", ws / name)
    return name


def _gap_csv(ws: Path) -> str:
    return _write(ws, "gap.csv", "sequence,t,x0,x1,y\na,0,1,2,3\na,100000000,1,2,3\n")


def _hard_link(ws: Path, name: str, target: str) -> str:
    os.link(ws / target, ws / name)
    return name


def _data_run(ws: Path, changed: bool) -> str:
    """A copy of the 2-epoch data-file run; `changed`: its config.json reads the data from the work folder,
    where the file then changes."""
    shutil.copytree(DATA_RUN[0], ws / "drun")
    if not changed:
        return "drun"
    cfg = json.loads((ws / "drun" / "config.json").read_text())
    shutil.copy(cfg["train"]["data"], ws / "train.npz")
    cfg["train"]["data"] = str(ws / "train.npz")
    (ws / "drun" / "config.json").write_text(json.dumps(cfg))
    synthetic_data(16, 5, 2, seed=99).save(ws / "train.npz")
    return "drun"


# ---- issue 24: outputs, checks, expressions and loaders of export, experiment, table, bench, eval/predict, check

_REPO = Path(__file__).resolve().parents[1]


def _traj(ws: Path, name: str = "traj.csv", cell: tuple[int, str, str] | None = None) -> str:
    """A 40-row pendulum-like trajectory CSV (t, q, p); `cell=(data row, column, text)` spoils one cell."""
    rows = [["t", "q", "p"]] + [[f"{i * 0.1:.1f}", f"{np.sin(i * 0.1):.4f}", f"{np.cos(i * 0.1) + 2:.4f}"]
                                for i in range(40)]
    if cell is not None:
        row, col, text = cell
        rows[row][rows[0].index(col)] = text
    return _write(ws, name, "\n".join(",".join(r) for r in rows) + "\n")


def _forces_csv(ws: Path) -> str:
    rows = ["x,y,E"] + [f"{i * 0.1},{i * 0.2},{i}" for i in range(30)]
    rows[4] = "0.3,,3"
    return _write(ws, "forces.csv", "\n".join(rows) + "\n")


def _results_json(ws: Path) -> str:
    shutil.copy(_REPO / "results" / "hnn.json", ws / "hnn.json")
    return "hnn.json"


def _checkpoint_link(ws: Path, name: str) -> str:
    """A hard link of the run's newest checkpoint under another name (an input of the command)."""
    os.link(sorted((ws / "run" / "checkpoints").glob("*.safetensors"))[-1], ws / name)
    return name


def _symlink(ws: Path, name: str, target: str) -> str:
    os.symlink(ws / target, ws / name)
    return name


def _folder(ws: Path, name: str) -> str:
    (ws / name).mkdir()
    return name


# (id, argv with {placeholders} filled by setup functions, fragments the message must contain)
CASES = [
    # ---- options
    ("epochs-negative", ["train", "--epochs", "-3"], ["epochs must be >= 1, got -3"]),
    ("batch-size-zero", ["train", "--batch-size", "0"], ["batch_size must be >= 1, got 0"]),
    ("lr-nan", ["train", "--lr", "nan"], ["lr must be a finite number, got nan"]),
    ("lr-zero", ["train", "--lr", "0"], ["lr must be a positive number, got 0.0"]),
    ("val-fraction", ["train", "--val-fraction", "1.5"], ["val_fraction must be between 0 and 1", "got 1.5"]),
    ("hidden-layers-text", ["train", "--hidden-layers", "64", "x"],
     ["hidden_layers must be a list of integer widths such as [128, 128]", "got [64, 'x'] ('x' is not an integer)"]),
    ("max-steps-zero", ["train", "--max-steps", "0"], ["--max-steps must be >= 1, got 0"]),
    ("device-unknown", ["train", "--device", "tpu"], ["unknown device 'tpu'", "use cpu, cuda, cuda:N, mps or auto"]),
    ("keep-one-checkpoint", ["train", "--keep-checkpoints", "1"],
     ["keep_checkpoints must be >= 2", "the previous good one is always kept"]),
    ("threads-negative", ["train", "--threads", "-1"], ["threads must be >= 0, got -1"]),
    ("tbptt-negative", ["train", "--tbptt", "-1"], ["tbptt must be >= 0, got -1"]),
    ("noise-negative", ["train", "--noise", "-0.5"], ["noise must be >= 0, got -0.5"]),
    ("dtype-half", ["train", "--dtype", "float16"], ["argument --dtype: invalid choice: 'float16'",
                                                    "float32", "float64", "innergrad train --help"]),
    ("on-nan-unknown", ["train", "--on-nan", "ignore"], ["argument --on-nan: invalid choice: 'ignore'"]),
    ("builtin-size-with-data", ["train", "--data", "good.npz", "--input-size", "3"],
     ["--input-size describe(s) the built-in data only", "Drop --input-size"]),
    ("out-is-a-user-file", ["train", "--out", "notes.txt"], ["--out notes.txt is a file; give a folder"]),
    ("out-holds-a-run", ["train", "--out", "run"], ["run already holds a run", "innergrad train --resume run"]),
    ("resume-nowhere", ["train", "--resume", "nowhere"], ["nowhere: not a run folder (no config.json)"]),
    ("resume-with-config", ["train", "--resume", "run", "--config", "{cfg_ok}"],
     ["--config cannot be combined with --resume"]),
    ("resume-other-out", ["train", "--resume", "run", "--out", "elsewhere"],
     ["name different folders; give only --resume"]),
    ("resume-changed-setting", ["train", "--resume", "run", "--hidden-size", "9"],
     ["a resumed run keeps its settings", "--hidden-size (run has 4)", "start a new run with --out"]),
    ("resume-damaged-config", ["train", "--resume", "{damaged_config}"], ["config.json: damaged config"]),
    ("dist-backend-alone", ["train", "--dist-backend", "gloo"], ["--dist-backend applies only with --distributed"]),
    # ---- one option schema (issue 24.6): ranges, options that cannot apply, the offending value, cut short
    ("report-plot-alone", ["report", "--run", "run", "--plot", "c.png"], ["--plot applies only with --compare"]),
    ("report-overwrite-alone", ["report", "--run", "run", "--overwrite"], ["--overwrite applies only with --compare"]),
    ("report-allow-changed-with-compare", ["report", "--run", "run", "--compare", "run", "--allow-changed-data"],
     ["--allow-changed-data cannot be combined with --compare"]),
    ("eval-allow-changed-with-data", ["eval", "--run", "run", "--data", "good.npz", "--allow-changed-data"],
     ["--allow-changed-data cannot be combined with --data"]),
    ("check-allow-changed-with-data", ["check", "--run", "run", "--data", "good.npz", "--allow-changed-data"],
     ["--allow-changed-data cannot be combined with --data"]),
    ("check-sequences-huge", ["check", "--run", "run", "--sequences", "100000"], ["--sequences must be <= 10000"]),
    ("eval-threads-negative", ["eval", "--run", "run", "--threads", "-2"], ["--threads must be >= 0, got -2"]),
    ("predict-threads-text", ["predict", "--run", "run", "--data", "good.npz", "--threads", "two"],
     ["argument --threads: invalid int value: 'two'"]),
    ("max-steps-text", ["train", "--max-steps", "ten"], ["argument --max-steps: invalid int value: 'ten'"]),
    ("hidden-layers-second-bad", ["train", "--hidden-layers", "64", "0"],
     ["hidden_layers must be one or more positive widths", "(0 is not)"]),
    ("hidden-layers-second-text", ["train", "--hidden-layers", "64", "6x"], ["('6x' is not an integer)"]),
    ("device-long", ["train", "--device", "cuda" + "9" * 400], ["unknown device", "chars)"]),
    ("overwrite-with-resume-first", ["train", "--overwrite", "--resume", "run"],
     ["--overwrite cannot be combined with --resume"]),
    ("bench-T-text", ["bench", "--T", "6x"], ["--T must be a list of integers", "('6x' is not an integer)"]),
    ("bench-T-zero", ["bench", "--T", "64,0"], ["--T must be >= 1, got 0"]),
    ("bench-reps-zero", ["bench", "--reps", "0"], ["--reps must be >= 1, got 0"]),
    ("bench-sweep-with-T", ["bench", "--sweep", "--T", "8"], ["--T cannot be combined with --sweep"]),
    ("experiment-seed-negative", ["experiment", "hnn", "--seed", "-1"], ["--seed must be >= 0, got -1"]),
    ("experiment-jobs-without-seeds", ["experiment", "forces", "--jobs", "2"], ["--jobs applies only with --seeds"]),
    ("experiment-test-fraction-one", ["experiment", "forces", "--test-fraction", "1"],
     ["--test-fraction must be between 0 and 1 (exclusive), got 1.0"]),
    ("experiment-hidden-zero", ["experiment", "hnn", "--hidden", "64", "0"], ["(0 is not)"]),
    ("experiment-lr-zero", ["experiment", "forces", "--lr", "0"], ["--lr must be a positive number"]),
    ("table-overwrite-without-save", ["experiment", "table", "run", "--overwrite"],
     ["--overwrite applies only with --save"]),
    ("experiment-steps-float", ["experiment", "hnn", "--steps", "1e3"], ["argument --steps: invalid int value: '1e3'"]),
    # ---- data files through the CLI (the loaders' own cases are in tests/test_data.py)
    ("data-semicolons", ["train", "--data", "semicolon.csv"],
     ["semicolon.csv, line 1: missing column 'sequence'", "'sequence,t,x0,...,xk,y'"]),
    ("data-without-y", ["train", "--data", "x_only.npz"], ["x_only.npz: missing key 'y'", "targets of shape (N, T)"]),
    ("eval-data-without-y", ["eval", "--run", "run", "--data", "x_only.npz"], ["x_only.npz: missing key 'y'"]),
    ("predict-wrong-input-size", ["predict", "--run", "run", "--data", "three.npz"],
     ["the data has input_size 3", "trained with input_size 2", "give data with 2 features"]),
    ("predict-out-is-the-input", ["predict", "--run", "run", "--data", "x_only.npz", "--out", "x_only.npz"],
     ["--out x_only.npz is the input file given to --data", "Give another --out"]),
    ("eval-out-is-the-input", ["eval", "--run", "run", "--data", "good.npz", "--out", "good.npz"],
     ["is the input file given to --data"]),
    ("predict-out-format", ["predict", "--run", "run", "--data", "good.csv", "--out", "y.txt"],
     ["--out y.txt: unknown format '.txt'", "use a .npz or .csv file name"]),
    # ---- configs
    ("config-syntax", ["train", "--config", "{cfg_syntax}"], ["syntax.toml: invalid TOML"]),
    ("config-unknown-key", ["train", "--config", "{cfg_typo}"], ["unknown setting 'hiden_size'",
                                                                  "did you mean 'hidden_size'?"]),
    ("config-wrong-type", ["train", "--config", "{cfg_type}"], ["epochs must be an integer, got 'ten'"]),
    ("config-empty-layers", ["train", "--config", "{cfg_layers}"],
     ["hidden_layers must be one or more positive widths"]),
    ("config-table", ["train", "--config", "{cfg_table}"], ["unknown setting 'model'"]),
    ("config-dtype", ["train", "--config", "{cfg_dtype}"], ["dtype must be 'float32' or 'float64', got 'half'"]),
    ("config-bool-lr", ["train", "--config", "{cfg_bool}"], ["lr must be a number, got True"]),
    ("config-json-list", ["train", "--config", "{cfg_list}"], ["expected a table of settings at the top level"]),
    ("config-json-invalid", ["train", "--config", "{cfg_json}"], ["broken.json: invalid JSON"]),
    ("config-not-utf8", ["train", "--config", "{cfg_binary}"], ["binary.toml: not a UTF-8 text file",
                                                                "save the config as UTF-8"]),
    ("config-yaml", ["train", "--config", "{cfg_yaml}"], ["config files must end in .toml or .json, got '.yaml'"]),
    ("config-missing", ["train", "--config", "nope.toml"], ["nope.toml: config file not found"]),
    ("config-directory", ["train", "--config", "."], ["is a directory; --config needs a .toml or .json file"]),
    # ---- checkpoints and run folders
    ("checkpoint-random-bytes", ["eval", "--run", "run", "--checkpoint", "{damaged_ckpt}"],
     ["random.safetensors: ", "damaged checkpoint", "give another checkpoint file"]),
    ("checkpoint-foreign", ["eval", "--run", "run", "--checkpoint", "{foreign_ckpt}"],
     ["foreign.safetensors: not an innergrad checkpoint (format 'pt'", "checkpoints/"]),
    ("checkpoint-misfit", ["eval", "--run", "run", "--checkpoint", "{misfit_ckpt}"],
     ["misfit.safetensors: the weights do not fit the model"]),
    ("checkpoint-missing", ["eval", "--run", "run", "--checkpoint", "nope.safetensors"],
     ["nope.safetensors: no such run folder or checkpoint file"]),
    ("run-without-checkpoints", ["eval", "--run", "{no_ckpt_run}"],
     ["no checkpoints found (expected checkpoints/step-*.safetensors)"]),
    ("check-zero-sequences", ["check", "--run", "run", "--sequences", "0"], ["--sequences must be >= 1, got 0"]),
    ("check-zero-steps", ["check", "--run", "run", "--steps", "0"], ["--steps must be >= 1, got 0"]),
    ("report-compare-nowhere", ["report", "--run", "run", "--compare", "nowhere"], ["nowhere: not a run folder"]),
    # ---- ranges of options (train/_config.py RANGES), checked before anything is allocated
    ("seed-negative", ["train", "--seed", "-1"], ["seed must be >= 0, got -1"]),
    ("seed-over-32-bit", ["train", "--seed", "4294967296"], ["seed must be <= 4294967295", "32-bit"]),
    ("lr-huge", ["train", "--lr", "1e300"], ["lr must be <= 1000, got 1e+300"]),
    ("hidden-size-huge", ["train", "--hidden-size", "1000000000"],
     ["training this would need about", "parameters; --hidden-size", "GB are free here"]),
    ("builtin-data-huge", ["train", "--n-sequences", "100000000", "--seq-len", "1000000"],
     ["for the built-in data set", "GB are free here"]),
    ("weight-decay-huge", ["train", "--weight-decay", "1e9"], ["weight_decay must be <= 1000"]),
    ("device-meta", ["train", "--device", "meta"], ["unknown device 'meta'", "use cpu, cuda, cuda:N, mps or auto"]),
    ("eval-device-meta", ["eval", "--run", "run", "--device", "meta"], ["device 'meta'"]),
    # ---- run folders (train/_runs.py)
    ("out-below-a-file", ["train", "--out", "notes.txt/run"],
     ["notes.txt is a file, so no folder can be made below it"]),
    ("out-with-user-files", ["train", "--out", "{user_folder}"],
     ["mine already holds 1 file(s) that are not this run's, e.g. thesis.tex", "--overwrite"]),
    ("out-holds-a-run-overwrite-input", ["train", "--out", "run", "--overwrite", "--config", "run/config.json"],
     ["holds the run's input", "give another --out"]),
    ("overwrite-with-resume", ["train", "--resume", "run", "--overwrite"],
     ["--overwrite cannot be combined with --resume"]),
    ("resume-busy", ["train", "--resume", "{busy_run}"],
     [f"process {os.getpid()} is writing into this run folder right now", "choose another --out"]),
    ("resume-past-epochs", ["train", "--resume", "{data_run}", "--epochs", "1"],
     ["is at step 8, past the end of --epochs 1 (step 4)"]),
    # ---- files that are not regular files, inputs given as outputs
    ("data-fifo", ["train", "--data", "{fifo_npz}"],
     ["fifo.npz: the data file is a named pipe (FIFO), not a regular file"]),
    ("data-dev-zero", ["train", "--data", "{zero_npz}"], ["the data file is a character device"]),
    ("config-fifo", ["train", "--config", "{fifo_toml}"], ["the config file is a named pipe (FIFO)"]),
    ("checkpoint-dev-zero", ["eval", "--run", "run", "--checkpoint", "{zero_ckpt}"],
     ["the checkpoint is a character device (a link to /dev/zero)"]),
    ("predict-data-fifo", ["predict", "--run", "run", "--data", "{fifo_npz}"], ["is a named pipe (FIFO)"]),
    ("predict-out-hard-link", ["predict", "--run", "run", "--data", "x_only.npz", "--out", "{x_link}"],
     ["is the input file given to --data", "the same file on disk"]),
    ("eval-out-hard-link", ["eval", "--run", "run", "--data", "good.npz", "--out", "{good_link}"],
     ["is the input file given to --data", "the same file on disk"]),
    ("csv-step-1e8", ["train", "--data", "{gap_csv}"], ["has steps up to t=100000000 but no row for t=1"]),
    # ---- run files
    ("eval-config-list", ["eval", "--run", "{list_config}"],
     ["config.json: damaged config: expected a JSON object, got a JSON list"]),
    ("check-config-list", ["check", "--run", "{list_config}"], ["expected a JSON object, got a JSON list"]),
    ("report-config-list", ["report", "--run", "{list_config}"], ["expected a JSON object, got a JSON list"]),
    ("resume-config-list", ["train", "--resume", "{list_config}"], ["expected a JSON object, got a JSON list"]),
    ("eval-data-changed", ["eval", "--run", "{changed_data_run}"],
     ["the data file changed since the run was trained", "add --allow-changed-data"]),
    ("check-data-changed", ["check", "--run", "{changed_data_run}"],
     ["the data file changed since the run was trained"]),
    ("report-data-changed", ["report", "--run", "{changed_data_run}"],
     ["the data file changed since the run was trained"]),
    # ---- issue 24: export (core/files.write_output, the run's files as inputs)
    ("export-out-exists", ["export", "--run", "run", "--out", "{old_pt2}"],
     ["--out old.pt2 exists; give another file name, or add --overwrite"]),
    ("export-out-is-the-checkpoint", ["export", "--run", "run", "--out", "{ckpt_pt2}", "--overwrite"],
     ["--out ckpt.pt2 is the input file given to --run", "the same file on disk"]),
    ("export-out-links-to-config", ["export", "--run", "run", "--out", "{config_pt2}", "--overwrite"],
     ["--out config.pt2 is the input file given to --run"]),
    ("export-out-folder", ["export", "--run", "run", "--out", "{dir_pt2}"], ["--out dir.pt2 is a folder"]),
    ("export-out-below-a-file", ["export", "--run", "run", "--out", "notes.txt/m.pt2"],
     ["notes.txt is a file, so nothing can be written below it"]),
    ("export-out-format", ["export", "--run", "run", "--out", "m.tflite"], ["unknown format '.tflite'", "*.onnx"]),
    ("export-damaged-checkpoint", ["export", "--run", "run", "--checkpoint", "{damaged_ckpt}", "--out", "m.pt2"],
     ["random.safetensors: ", "damaged checkpoint"]),
    ("export-run-nowhere", ["export", "--run", "nowhere", "--out", "m.pt2"], ["nowhere"]),
    # ---- eval / predict outputs
    ("eval-out-exists", ["eval", "--run", "run", "--data", "good.npz", "--out", "{old_npz}"],
     ["--out old.npz exists", "--overwrite"]),
    ("predict-out-exists", ["predict", "--run", "run", "--data", "good.npz", "--out", "{old_npz}"],
     ["--out old.npz exists", "--overwrite"]),
    ("eval-out-is-the-checkpoint", ["eval", "--run", "run", "--out", "{ckpt_npz}", "--overwrite"],
     ["--out ckpt.npz is the input file given to --run"]),
    ("predict-out-links-to-config", ["predict", "--run", "run", "--data", "good.npz", "--out", "{config_csv}",
                                     "--overwrite"], ["--out config.csv is the input file given to --run"]),
    ("predict-out-is-the-runs-data", ["predict", "--run", "{data_run}", "--data", "good.npz", "--out",
                                      "{run_data_link}", "--overwrite"],
     ["is the input file given to --run (its training data)"]),
    ("predict-out-folder", ["predict", "--run", "run", "--data", "good.npz", "--out", "{dir_npz}"], ["is a folder"]),
    ("eval-out-below-a-file", ["eval", "--run", "run", "--out", "notes.txt/e.npz"],
     ["notes.txt is a file, so nothing can be written below it"]),
    # ---- check
    ("check-data-missing", ["check", "--run", "run", "--data", "nope.npz"], ["nope.npz: no such file"]),
    ("check-data-wrong-size", ["check", "--run", "run", "--data", "three.npz"],
     ["input_size 3 does not match the model's 2"]),
    ("check-steps-negative", ["check", "--run", "run", "--steps", "-2"], ["--steps must be >= 1, got -2"]),
    ("check-data-fifo", ["check", "--run", "run", "--data", "{fifo_npz}"], ["is a named pipe (FIFO)"]),
    # ---- bench --json (checked before minutes of timing)
    ("bench-json-exists", ["bench", "--ways", "naive", "--json", "{old_json}"], ["--json old.json exists"]),
    ("bench-json-folder", ["bench", "--ways", "naive", "--json", "{dir_json}"], ["--json dir.json is a folder"]),
    ("bench-json-below-a-file", ["bench", "--ways", "naive", "--json", "notes.txt/b.json"],
     ["notes.txt is a file"]),
    ("bench-unknown-way", ["bench", "--ways", "naive,nope"], ["unknown way(s) ['nope']"]),
    # ---- report --plot
    ("report-plot-exists", ["report", "--run", "run", "--compare", "run", "--plot", "{old_png}"],
     ["--plot old.png exists"]),
    ("report-plot-is-a-run-file", ["report", "--run", "run", "--compare", "run", "--plot", "{metrics_png}",
                                   "--overwrite"], ["--plot metrics.png is the input file given to --run"]),
    ("report-plot-format", ["report", "--run", "run", "--compare", "run", "--plot", "curves.txt"],
     ["unknown image format '.txt'", "*.png"]),
    ("report-plot-without-compare", ["report", "--run", "run", "--plot", "c.png"],
     ["--plot applies only with --compare"]),
    # ---- experiment table --save / --readme
    ("table-save-exists", ["experiment", "table", "{results_json}", "--save", "{old_json}"],
     ["--save old.json exists"]),
    ("table-save-is-the-input", ["experiment", "table", "{results_json}", "--save", "hnn.json", "--overwrite"],
     ["--save hnn.json is the input file given to DIR_OR_JSON"]),
    ("table-save-hard-link", ["experiment", "table", "{results_json}", "--save", "{results_link}", "--overwrite"],
     ["is the input file given to DIR_OR_JSON", "the same file on disk"]),
    ("table-save-is-the-readme", ["experiment", "table", "{results_json}", "--readme", "notes.txt", "--save",
                                  "notes.txt", "--overwrite"],
     ["--save notes.txt is the input file given to --readme"]),
    ("table-readme-is-the-input", ["experiment", "table", "{results_json}", "--readme", "hnn.json"],
     ["--readme hnn.json is the input file given to DIR_OR_JSON"]),
    ("table-readme-without-markers", ["experiment", "table", "{results_json}", "--readme", "notes.txt"],
     ["notes.txt: no generated HNN table"]),
    ("table-input-nowhere", ["experiment", "table", "nowhere"], ["nowhere: no summary.json"]),
    ("table-input-bad-json", ["experiment", "table", "{cfg_json}"], ["broken.json: not valid JSON"]),
    # ---- experiment hnn/forces on your data: expressions and cells (data/trajectories.py)
    ("experiment-energy-out-argument", ["experiment", "hnn", "--data", "{traj}", "--energy", "sin(q, q)"],
     ["sin takes exactly 1 argument, got 2"]),
    ("experiment-energy-out-keyword", ["experiment", "hnn", "--data", "{traj}", "--energy", "sin(q, out=q)"],
     ["no keywords such as out="]),
    ("experiment-energy-overflow", ["experiment", "hnn", "--data", "{traj}", "--energy", "exp(exp(exp(p)))"],
     ["is infinite (an overflow or a division by zero) at data row 1 (line 2)"]),
    ("experiment-energy-division-by-zero", ["experiment", "hnn", "--data", "{traj}", "--energy", "p**2/q"],
     ["'p**2/q' is infinite", "data row 1 (line 2)"]),
    ("experiment-energy-complex", ["experiment", "hnn", "--data", "{traj}", "--energy", "(-8)**(1/3) + q"],
     ["is not a real number"]),
    ("experiment-energy-constant", ["experiment", "hnn", "--data", "{traj}", "--energy", "1e999 * q"],
     ["the number '1e999' is not a finite float64"]),
    ("experiment-energy-too-long", ["experiment", "hnn", "--data", "{traj}", "--energy", "q" + "+q" * 600],
     ["terms, more than the 500 allowed", "--energy-column"]),
    ("experiment-energy-too-deep", ["experiment", "hnn", "--data", "{traj}", "--energy", "+" * 60 + "q"],
     ["nested more than 40 levels deep"]),
    ("experiment-energy-attribute", ["experiment", "hnn", "--data", "{traj}", "--energy", "q.__class__"],
     ["'q.__class__' is not allowed"]),
    ("experiment-data-text-cell", ["experiment", "hnn", "--data", "{traj_text_cell}"],
     ["column 'q' (state) must be numbers, got text 'abc' at data row 3 (line 4)"]),
    ("experiment-data-missing-cell", ["experiment", "hnn", "--data", "{traj_missing_cell}"],
     ["column 'p' (state) has a missing or non-finite value at data row 5 (line 6)"]),
    ("experiment-data-inf-time", ["experiment", "hnn", "--data", "{traj_inf_time}"],
     ["column 't' (time) has a missing or non-finite value at data row 2 (line 3): 'inf'"]),
    ("experiment-forces-missing-cell", ["experiment", "forces", "--data", "{forces_csv}", "--energy-column", "E"],
     ["column 'y' (position) has a missing or non-finite value at data row 4 (line 5)"]),
    ("experiment-out-is-a-file", ["experiment", "hnn", "--data", "{traj}", "--out", "notes.txt"], ["notes.txt"]),
]

SETUP = {
    "cfg_ok": lambda ws: _write(ws, "ok.toml", "epochs = 1\n"),
    "cfg_syntax": lambda ws: _write(ws, "syntax.toml", "epochs = = 3\n"),
    "cfg_typo": lambda ws: _write(ws, "typo.toml", "hiden_size = 8\n"),
    "cfg_type": lambda ws: _write(ws, "type.toml", 'epochs = "ten"\n'),
    "cfg_layers": lambda ws: _write(ws, "layers.toml", "hidden_layers = []\n"),
    "cfg_table": lambda ws: _write(ws, "table.toml", "[model]\nhidden_size = 8\n"),
    "cfg_dtype": lambda ws: _write(ws, "dtype.toml", 'dtype = "half"\n'),
    "cfg_bool": lambda ws: _write(ws, "bool.toml", "lr = true\n"),
    "cfg_list": lambda ws: _write(ws, "list.json", "[1, 2]\n"),
    "cfg_json": lambda ws: _write(ws, "broken.json", '{"epochs": 3,\n'),
    "cfg_binary": lambda ws: _write(ws, "binary.toml", b"\xff\xfe\x00e\x00p\x00o\x00c\x00h\x00"),
    "cfg_yaml": lambda ws: _write(ws, "c.yaml", "epochs: 3\n"),
    "damaged_ckpt": _damaged_checkpoint,
    "foreign_ckpt": _foreign_safetensors,
    "misfit_ckpt": _misfit_checkpoint,
    "no_ckpt_run": _run_without_checkpoints,
    "damaged_config": _damaged_config,
    "list_config": _list_config,
    "busy_run": _busy_run,
    "user_folder": _user_folder,
    "fifo_npz": lambda ws: _fifo(ws, "fifo.npz"),
    "fifo_toml": lambda ws: _fifo(ws, "fifo.toml"),
    "zero_npz": lambda ws: _dev_zero_link(ws, "zero.npz"),
    "zero_ckpt": lambda ws: _dev_zero_link(ws, "zero.safetensors"),
    "gap_csv": _gap_csv,
    "x_link": lambda ws: _hard_link(ws, "x_link.npz", "x_only.npz"),
    "good_link": lambda ws: _hard_link(ws, "good_link.npz", "good.npz"),
    "data_run": lambda ws: _data_run(ws, changed=False),
    "changed_data_run": lambda ws: _data_run(ws, changed=True),
    "old_pt2": lambda ws: _write(ws, "old.pt2", b"an earlier export"),
    "old_npz": lambda ws: _write(ws, "old.npz", b"earlier predictions"),
    "old_json": lambda ws: _write(ws, "old.json", "{}\n"),
    "old_png": lambda ws: _write(ws, "old.png", b"a drawing"),
    "ckpt_pt2": lambda ws: _checkpoint_link(ws, "ckpt.pt2"),
    "ckpt_npz": lambda ws: _checkpoint_link(ws, "ckpt.npz"),
    "config_pt2": lambda ws: _symlink(ws, "config.pt2", "run/config.json"),
    "config_csv": lambda ws: _symlink(ws, "config.csv", "run/config.json"),
    "metrics_png": lambda ws: _hard_link(ws, "metrics.png", "run/metrics.jsonl"),
    "run_data_link": lambda ws: _symlink(ws, "train_link.npz", json.loads(
        (ws / "drun" / "config.json").read_text())["train"]["data"]),
    "dir_pt2": lambda ws: _folder(ws, "dir.pt2"),
    "dir_npz": lambda ws: _folder(ws, "dir.npz"),
    "dir_json": lambda ws: _folder(ws, "dir.json"),
    "results_json": _results_json,
    "results_link": lambda ws: _hard_link(ws, "saved.json", "hnn.json"),
    "traj": _traj,
    "traj_text_cell": lambda ws: _traj(ws, "text_cell.csv", (3, "q", "abc")),
    "traj_missing_cell": lambda ws: _traj(ws, "missing_cell.csv", (5, "p", "")),
    "traj_inf_time": lambda ws: _traj(ws, "inf_time.csv", (2, "t", "inf")),
    "forces_csv": _forces_csv,
}


def _fill(argv: list[str], ws: Path) -> list[str]:
    out = []
    for a in argv:
        m = re.fullmatch(r"\{(\w+)\}", a)
        out.append(SETUP[m.group(1)](ws) if m else a)
    return out


def _resumed_lock(argv: list[str], ws: Path) -> tuple[Path, ...]:
    """The lock file of the run folder a `--resume` case names: the one file such a run may write."""
    return tuple(ws / argv[i + 1] / LOCK_NAME for i, a in enumerate(argv[:-1]) if a == "--resume")


@pytest.mark.parametrize("mode", ["in-process", "subprocess"])
@pytest.mark.parametrize("argv, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_rejects_bad_input_cleanly(ws, argv, fragments, mode, capsys, cli_runner):
    argv = _fill(argv, ws)
    skip = _resumed_lock(argv, ws)
    before = _hashes(ws, skip)
    if mode == "in-process":
        status = main(argv)
        cap = capsys.readouterr()
        out, err = cap.out, cap.err
    else:
        status, out, err = cli_runner(argv, ws)
    assert status == 2, err
    assert "Traceback" not in err and not out
    assert err.startswith("innergrad: error:") and err.count("\n") == 1, err  # one line
    flat = " ".join(err.split())
    for frag in fragments:
        assert frag in flat, f"{frag!r} not in {flat!r}"
    assert _hashes(ws, skip) == before  # no file of the user's changed, none created, none lost
    assert not (ws / "runs").exists()


ISSUE_24_CASES = [c for c in CASES[next(i for i, c in enumerate(CASES) if c[0] == "export-out-exists"):]]


def test_enough_distinct_malformed_inputs():
    # Issue 24 asks for at least 40 more, across export, experiment, table, fit, bench, eval/predict and check.
    assert len(ISSUE_24_CASES) >= 40
    commands = {c[1][0] if c[1][0] != "experiment" else f"experiment {c[1][1]}" for c in ISSUE_24_CASES}
    assert {"export", "eval", "predict", "check", "bench", "report", "experiment table", "experiment hnn",
            "experiment forces"} <= commands
    # Issue 13 asks for at least 60 across the CLI and the library (issue 4 for 30); tests/test_data.py
    # holds another ~45 data-file cases.
    assert len(CASES) + len(LIBRARY_CASES) + len(PRIMITIVE_CASES) >= 60
    assert len(CASES) >= 60
    ids = [c[0] for c in CASES + LIBRARY_CASES + PRIMITIVE_CASES]
    assert len(set(ids)) == len(ids)


# ------------------------------------------------------------------------------- the library, in-process

def _lib_config(**kw):
    from innergrad.train import TrainConfig

    return lambda ws: TrainConfig.from_mapping(kw, "settings")


def _lib_memory(ws):
    from innergrad.train import TrainConfig
    from innergrad.train._config import check_memory

    check_memory(TrainConfig(hidden_size=10**9), input_size=4, where="TrainConfig")


def _lib_changed_data(ws):
    from innergrad.train._runs import check_data_unchanged

    check_data_unchanged(ws / "good.npz", "0" * 64)


def _lib_write_over_user_files(ws):
    _user_folder(ws)
    RunFolder.create(ws / "mine")


def _lib_busy(ws):
    _busy_run(ws)
    RunFolder.open_for_resume(ws / "run")


def _lib_hard_link_out(ws):
    from innergrad.train._runs import refuse_input

    refuse_input(ws / _hard_link(ws, "x_link.npz", "x_only.npz"), [ws / "x_only.npz"])


def _lib_load_data(name_fn):
    from innergrad.data.sequences import load_data

    return lambda ws: load_data(ws / name_fn(ws))


def _lib_read_config(name_fn):
    from innergrad.train import read_config_file

    return lambda ws: read_config_file(ws / name_fn(ws))


def _lib_run_config(ws):
    from innergrad.train._config import load_run_config

    load_run_config(ws / _list_config(ws))


def _lib_fit_into_user_files(ws):
    _user_folder(ws)
    ig.train.fit(ig.HamiltonianNet(2, (8,)), torch.randn(8, 2), torch.randn(8, 2), steps=1, out=ws / "mine")


def _lib_write_output(name_fn, **kw):
    from innergrad.core.files import write_output

    return lambda ws: write_output(ws / name_fn(ws), b"new", **{k: v(ws) if callable(v) else v for k, v in kw.items()})


def _lib_export_over_a_file(ws):
    ig.export(ig.GradRNN(2, 3, (4,)), ws / _write(ws, "old.pt2", b"an earlier export"))


def _lib_save_over_its_input(ws):
    synthetic_data(4, 3, 2).save(ws / "good.npz", inputs=[ws / "good.npz"])


def _lib_trajectories(cell):
    from innergrad.data import load_trajectories

    return lambda ws: load_trajectories(ws / _traj(ws, "lib_traj.csv", cell))


def _lib_expression(expr):
    from innergrad.data import evaluate_expression

    return lambda ws: evaluate_expression(expr, {"q": np.array([0.0, 1.0]), "p": np.array([1.0, 2.0])})


def _lib_time_derivative_nan(ws):
    from innergrad.data import time_derivative

    time_derivative(np.arange(4.0), np.array([0.0, 1.0, np.nan, 3.0]))


LIBRARY_CASES = [
    # ---- issue 24: outputs (core/files.write_output), fit's folder, data and numerics
    ("lib-fit-out-user-files", _lib_fit_into_user_files, ValueError, r"holds other files and no run"),
    ("lib-write-output-exists", _lib_write_output(lambda ws: "notes.txt"), ig.InnergradError,
     r"notes.txt exists; give another file name, or add --overwrite"),
    ("lib-write-output-input", _lib_write_output(lambda ws: _hard_link(ws, "x_link.npz", "x_only.npz"),
                                                 inputs=lambda ws: [("--data", ws / "x_only.npz")], overwrite=True),
     ig.InnergradError, r"is the input file given to --data"),
    ("lib-write-output-edit-changed", _lib_write_output(lambda ws: "notes.txt", expect=b"not what it holds"),
     ig.InnergradError, r"changed while this command ran"),
    ("lib-export-over-a-file", _lib_export_over_a_file, ig.InnergradError, r"old.pt2 exists"),
    ("lib-save-over-its-input", _lib_save_over_its_input, ig.InnergradError,
     r"good.npz is an input file of this command"),
    ("lib-trajectory-text-cell", _lib_trajectories((7, "p", "x7")), ig.InnergradError,
     r"column 'p' \(state\) must be numbers, got text 'x7' at data row 7 \(line 8\)"),
    ("lib-trajectory-nan-cell", _lib_trajectories((9, "q", "nan")), ig.InnergradError,
     r"column 'q' \(state\) has a missing or non-finite value at data row 9 \(line 10\): 'nan'"),
    ("lib-expression-out-argument", _lib_expression("cos(q, p)"), ig.InnergradError,
     r"cos takes exactly 1 argument, got 2"),
    ("lib-expression-overflow", _lib_expression("p ** 2000"), ig.InnergradError,
     r"'p \*\* 2000' is infinite .* at data row 2"),
    ("lib-expression-log-zero", _lib_expression("log(q) + p"), ig.InnergradError, r"'log\(q\)' is infinite"),
    ("lib-time-derivative-nan", _lib_time_derivative_nan, ValueError, r"x holds NaN or infinite values at row 2"),

    ("lib-seed", _lib_config(seed=-1), ig.InnergradError, r"settings: seed must be >= 0, got -1"),
    ("lib-lr", _lib_config(lr=1e300), ig.InnergradError, r"lr must be <= 1000"),
    ("lib-device", _lib_config(device="meta"), ig.InnergradError, r"unknown device 'meta'"),
    ("lib-memory", _lib_memory, ig.InnergradError, r"training this would need about .* GB are free here"),
    ("lib-runfolder-user-files", _lib_write_over_user_files, ig.InnergradError, r"not this run's, e.g. thesis.tex"),
    ("lib-runfolder-busy", _lib_busy, ig.InnergradError, rf"process {os.getpid()} is writing into this run folder"),
    ("lib-runfolder-below-file", lambda ws: RunFolder.create(ws / "notes.txt" / "r"), ig.InnergradError,
     r"notes.txt is a file, so no folder can be made below it"),
    ("lib-out-hard-link", _lib_hard_link_out, ValueError, r"the same file on disk"),
    ("lib-data-fifo", _lib_load_data(lambda ws: _fifo(ws, "f.npz")), ig.InnergradError, r"named pipe \(FIFO\)"),
    ("lib-data-dev-zero", _lib_load_data(lambda ws: _dev_zero_link(ws, "z.csv")), ig.InnergradError,
     r"character device"),
    ("lib-csv-step-1e8", _lib_load_data(_gap_csv), ig.InnergradError, r"no row for t=1"),
    ("lib-config-fifo", _lib_read_config(lambda ws: _fifo(ws, "c.json")), ig.InnergradError, r"named pipe"),
    ("lib-run-config-list", _lib_run_config, ig.InnergradError, r"expected a JSON object, got a JSON list"),
    ("lib-data-changed", _lib_changed_data, ig.InnergradError, r"the data file changed since the run was trained"),
    ("lib-load-dev-zero", lambda ws: ig.load(ws / _dev_zero_link(ws, "z.safetensors")), ig.InnergradError,
     r"the checkpoint is a character device"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in LIBRARY_CASES], ids=[c[0] for c in LIBRARY_CASES])
def test_library_rejects_bad_input_cleanly(ws, call, exc, match):
    before = _hashes(ws)
    with pytest.raises(exc, match=match) as info:
        call(ws)
    assert "\n" not in str(info.value)
    after = _hashes(ws)
    made = set(after) - set(before)  # what the case itself set up (a pipe, a link) is the user's input
    assert {k: v for k, v in after.items() if k not in made} == before
    assert not (ws / "runs").exists()


def test_summary_and_metrics_are_strict_json(tmp_path):
    """A NaN reaches the files as null, which every JSON reader takes (Python's json alone reads NaN)."""
    write_json(tmp_path / "s.json", {"val_mse": float("nan"), "r2": [1.0, float("inf")], "n": np.float32("nan")})
    text = (tmp_path / "s.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"val_mse": None, "r2": [1.0, None], "n": None}


def test_real_process_prints_no_traceback(ws):
    """The same path end to end through `python -m innergrad` (exit status and stderr of a real process)."""
    SETUP["cfg_binary"](ws)
    before = _hashes(ws)
    res = subprocess.run([sys.executable, "-m", "innergrad", "train", "--config", "binary.toml"], cwd=ws,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("innergrad: error: binary.toml: not a UTF-8 text file")
    assert _hashes(ws) == before


# ------------------------------------------------------------------------------- primitive arguments

_mlp = ig.MLP((3, 2), (8,))
_x, _h = torch.randn(4, 3), torch.randn(4, 2)

PRIMITIVE_CASES = [
    ("argnums-twice", lambda: ig.value_and_grad(_mlp, _x, _h, argnums=(1, 1)), ValueError,
     r"argnums \(1, 1\) names an argument twice"),
    ("argnums-bool", lambda: ig.value_and_grad(_mlp, _x, _h, argnums=True), ValueError,
     r"argnums must be an int or a non-empty tuple of ints, got True"),
    ("batch-mismatch", lambda: ig.value_and_grad(_mlp, _x, _h[:3], argnums=1), ValueError,
     r"MLP: inputs 0 and 1 must agree in every dimension but the last \(the batch\), got shapes \(4, 3\) and \(3, 2\)"),
    ("dtype-mix", lambda: ig.value_and_grad(_mlp, _x.double(), _h.double(), argnums=1), TypeError,
     r"MLP: input 0 has dtype torch.float64, but the weights are torch.float32; convert the input"),
    ("numpy-input", lambda: ig.value_and_grad(_mlp, _x.numpy(), _h, argnums=1), TypeError,
     r"MLP: input 0 must be a torch.Tensor, got ndarray; wrap it with torch.as_tensor"),
    ("gradrnn-float64-x", lambda: ig.GradRNN(2, 3, (4,))(torch.randn(4, 1, 2, dtype=torch.float64)), TypeError,
     r"has dtype torch.float64, but the weights are torch.float32"),
    ("gradrnn-zero-hidden", lambda: ig.GradRNN(2, 0), ValueError, r"in_features must be positive ints, got \(2, 0\)"),
    ("gradrnn-activation", lambda: ig.GradRNN(2, 3, activation="swish"), ValueError,
     r"unknown activation 'swish'; expected one of \['elu'"),
    ("gradrnn-lengths-float", lambda: ig.GradRNN(2, 3, (4,))(torch.randn(4, 2, 2), lengths=torch.tensor([1.0, 2.0])),
     ValueError, r"lengths must be integers in \[0, T=4\]"),
    ("gradrnn-h0-numpy", lambda: ig.GradRNN(2, 3, (4,))(torch.randn(4, 2, 2), h0=np.zeros((2, 3), np.float32)),
     TypeError, r"argument 1 must be a torch.Tensor to differentiate it, got ndarray; wrap it with torch.as_tensor"),
    ("gradrnn-h0-float64", lambda: ig.GradRNN(2, 3, (4,))(torch.randn(4, 2, 2), h0=torch.zeros(2, 3).double()),
     TypeError, r"MLP: input 1 has dtype torch.float64, but the weights are torch.float32"),
    ("load-missing", lambda: ig.load("/nonexistent/run"), ck.CheckpointError,
     r"/nonexistent/run: no such run folder or checkpoint file"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in PRIMITIVE_CASES], ids=[c[0] for c in PRIMITIVE_CASES])
def test_primitive_rejects_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_checkpoint_errors_name_the_file_and_keep_it(tmp_path):
    p = tmp_path / "c.safetensors"
    for raw, match in [(b"", r"truncated checkpoint \(0 bytes"),
                       ((10**9).to_bytes(8, "little") + b"{}", r"header claims 1000000000 bytes"),
                       (b"\x08\x00\x00\x00\x00\x00\x00\x00not json", r"damaged checkpoint or not a safetensors file")]:
        p.write_bytes(raw)
        with pytest.raises(ck.CheckpointError, match=match) as info:
            ig.load(p)
        assert str(p) in str(info.value)
        assert p.read_bytes() == raw
    good = ck.encode_checkpoint({"model_spec": {"input_size": 1}, "model": {}})
    header = json.loads(good[8 : 8 + int.from_bytes(good[:8], "little")])
    assert len(header["__metadata__"]["sha256"]) == 64  # the digest is recorded at write time
