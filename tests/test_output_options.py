"""Every output option of every command, against every rule of core/files.write_output.

The options are found in the argparse parsers (`build_parser()`), not listed by hand: an option that
takes a value and is called `--out` or whose help says it writes, saves, draws or outputs something is
an output. Each must have a row in FILE_OUTPUTS (a file) or be a run folder (FOLDER_OUTPUTS, whose rules
are RunFolder's: tests/test_runs.py); a new output option fails `test_every_output_option_is_covered`
until it is given a row here. Each file output is then run against each rule:

- `new`: a new file is created, with no temporary file left beside it;
- `exists`: an existing file is refused without --overwrite (exit 2, one line, every file unchanged);
- `overwrite`: with --overwrite it is replaced;
- `input`: a hard link of one of the command's inputs (or of the run it reads) is refused, even with
  --overwrite;
- `race`: another writer that creates the name while the command writes wins; the command is refused
  and the other writer's bytes stay.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest

import innergrad.core.files as files
from innergrad.cli import build_parser, main
from innergrad.data.sequences import synthetic_data

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-sequences", "16", "--seq-len", "5", "--input-size", "2", "--hidden-size", "4", "--hidden-layers", "8",
        "--epochs", "1", "--batch-size", "4", "--quiet", "--no-report"]
_WRITES = re.compile(r"\b(write|writes|written|rewrite|save|saves|draw|output)\b", re.I)


def output_options() -> set[tuple[str, str]]:
    """`(command, option)` of every option, in every (sub)command's parser, that names something written."""
    found = set()

    def walk(parser, path):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, [*path, name])
            elif a.option_strings and a.nargs != 0 and (a.dest == "out" or _WRITES.search(a.help or "")):
                found.add((" ".join(path), a.option_strings[-1]))

    walk(build_parser(), [])
    return found


# (command, option) -> (argv with OUT for the output, suffix, the input a hard link of which is refused)
FILE_OUTPUTS = {
    ("eval", "--out"): (["eval", "--run", "run", "--data", "good.npz", "--out", "OUT"], ".npz", "good.npz"),
    ("predict", "--out"): (["predict", "--run", "run", "--data", "good.npz", "--out", "OUT"], ".csv", "good.npz"),
    ("export", "--out"): (["export", "--run", "run", "--out", "OUT"], ".pt2", "CHECKPOINT"),
    ("bench", "--json"): (["bench", "--device", "cpu", "--T", "2", "--B", "2", "--width", "4", "--layers", "1",
                           "--reps", "1", "--warmup", "0", "--ways", "naive", "--no-memory", "--json", "OUT"],
                          ".json", None),  # the bench reads no file
    ("experiment table", "--save"): (["experiment", "table", "hnn.json", "--save", "OUT"], ".json", "hnn.json"),
    ("report", "--plot"): (["report", "--run", "run", "--compare", "run2", "--plot", "OUT"], ".png",
                           "run/metrics.jsonl"),
}
# An edit in place of an existing file: its rules are `input` and `race` (a change by another writer).
EDIT_OUTPUTS = {("experiment table", "--readme"): ["experiment", "table", "hnn.json", "--readme", "OUT"]}
# Run folders (RunFolder: made exclusively, locked, never one with other files; tests/test_runs.py).
FOLDER_OUTPUTS = {("train", "--out"), ("experiment hnn", "--out"), ("experiment lnn", "--out"),
                  ("experiment dhnn", "--out"), ("experiment forces", "--out")}


def test_every_output_option_is_covered():
    assert output_options() == set(FILE_OUTPUTS) | set(EDIT_OUTPUTS) | FOLDER_OUTPUTS


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("outputs") / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture
def ws(tmp_path, finished_run, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    shutil.copytree(finished_run, ws / "run")
    shutil.copytree(finished_run, ws / "run2")
    synthetic_data(6, 5, 2, seed=4).save(ws / "good.npz")
    shutil.copy(ROOT / "results" / "hnn.json", ws / "hnn.json")
    return ws


def _hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _argv(argv: list[str], out: str) -> list[str]:
    return [out if a == "OUT" else a for a in argv]


def _refused(argv, ws, capsys, *fragments) -> None:
    before = _hashes(ws)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("innergrad: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in " ".join(err.split()), (f, err)
    assert _hashes(ws) == before


def _input_path(ws: Path, name: str) -> Path:
    if name == "CHECKPOINT":
        return sorted((ws / "run" / "checkpoints").glob("*.safetensors"))[-1]
    return ws / name


@pytest.mark.parametrize("rule", ["new", "exists", "overwrite", "input", "race"])
@pytest.mark.parametrize("key", sorted(FILE_OUTPUTS), ids=lambda k: f"{k[0]} {k[1]}".replace(" ", "-"))
def test_file_output_rules(ws, key, rule, capsys, monkeypatch):
    argv, suffix, input_name = FILE_OUTPUTS[key]
    option = key[1]
    out = f"out{suffix}"
    if rule == "new":
        assert main(_argv(argv, out)) == 0, capsys.readouterr().err
        assert (ws / out).stat().st_size > 0
        assert not [p for p in ws.iterdir() if p.name.endswith(".tmp")]
    elif rule in ("exists", "overwrite"):
        (ws / out).write_bytes(b"the user's file")
        if rule == "exists":
            _refused(_argv(argv, out), ws, capsys, f"{option} {out} exists", "--overwrite")
        else:
            assert main([*_argv(argv, out), "--overwrite"]) == 0, capsys.readouterr().err
            assert (ws / out).read_bytes() != b"the user's file"
            assert not [p for p in ws.iterdir() if p.name.endswith(".tmp")]
    elif rule == "input":
        if input_name is None:
            pytest.skip(f"{key[0]} reads no file")
        os.link(_input_path(ws, input_name), ws / out)
        _refused([*_argv(argv, out), "--overwrite"], ws, capsys, f"{option} {out} is the input file given to",
                 "the same file on disk")
    else:  # race: another writer creates the name after the checks, while this command writes its content
        fill = files._fill

        def other_writer_first(fd, content):
            (ws / out).write_bytes(b"the other writer's file")
            fill(fd, content)

        monkeypatch.setattr(files, "_fill", other_writer_first)
        assert main(_argv(argv, out)) == 2
        err = capsys.readouterr().err
        assert "was created by another writer while this command ran; nothing was written" in err, err
        last = err.rstrip("\n").splitlines()[-1]  # the bench talks on stderr before it writes
        assert last.startswith("innergrad: error:") and err.count("innergrad:") == 1 and "Traceback" not in err
        assert (ws / out).read_bytes() == b"the other writer's file"
        assert not [p for p in ws.iterdir() if p.name.endswith(".tmp")]


def _readme(ws: Path) -> Path:
    from innergrad.experiments import results

    p = ws / "README.md"
    p.write_text(f"# mine\n\nkept\n{results.START}\nold\n{results.END}\nkept too\n")
    return p


@pytest.mark.parametrize("rule", ["edit", "input", "race", "no-markers"])
def test_readme_edit_in_place_rules(ws, rule, capsys, monkeypatch):
    argv = EDIT_OUTPUTS[("experiment table", "--readme")]
    if rule == "edit":
        readme = _readme(ws)
        assert main(_argv(argv, "README.md")) == 0
        text = readme.read_text()
        assert text.startswith("# mine\n\nkept\n") and text.endswith("kept too\n") and "| Task |" in text
    elif rule == "input":
        os.link(ws / "hnn.json", ws / "README.md")
        _refused(_argv(argv, "README.md"), ws, capsys, "--readme README.md is the input file given to DIR_OR_JSON")
    elif rule == "no-markers":
        (ws / "README.md").write_text("# mine\n")
        _refused([*_argv(argv, "README.md"), "--save", "saved.json"], ws, capsys, "no generated HNN table")
    else:
        readme = _readme(ws)
        fill = files._fill

        def other_writer_first(fd, content):
            readme.write_text("# changed by someone else\n")
            fill(fd, content)

        monkeypatch.setattr(files, "_fill", other_writer_first)
        assert main(_argv(argv, "README.md")) == 2
        err = capsys.readouterr().err
        assert "--readme README.md changed while this command ran (another writer); nothing was written" in err
        assert readme.read_text() == "# changed by someone else\n"
        assert not [p for p in ws.iterdir() if p.name.endswith(".tmp")]
