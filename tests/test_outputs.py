"""core/files.write_output: the one function that creates every command's output files.

Each rule on its own here; tests/test_output_options.py runs every output option of every command
against each rule through the CLI.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from innergrad.core.files import OutputError, write_output


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_creates_the_file_with_its_content_and_no_temporary_left(tmp_path):
    out = write_output(tmp_path / "sub" / "y.json", "{}\n")
    assert out.read_text() == "{}\n"
    assert _listing(out.parent) == ["y.json"]
    write_output(tmp_path / "b.bin", lambda fh: fh.write(b"\x00\x01"))
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert oct((tmp_path / "b.bin").stat().st_mode & 0o777) != oct(0o600)  # the usual permissions


def test_an_existing_file_needs_overwrite_and_is_then_replaced(tmp_path):
    p = tmp_path / "y.npz"
    p.write_bytes(b"mine")
    with pytest.raises(OutputError, match=r"--out .*y.npz exists; give another file name, or add --overwrite"):
        write_output(p, b"new")
    assert p.read_bytes() == b"mine"
    write_output(p, b"new", overwrite=True)
    assert p.read_bytes() == b"new" and _listing(tmp_path) == ["y.npz"]


def test_a_dangling_symlink_counts_as_existing(tmp_path):
    os.symlink(tmp_path / "nowhere", tmp_path / "link.json")
    with pytest.raises(OutputError, match="exists"):
        write_output(tmp_path / "link.json", "x")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("spelling", ["same", "hard-link", "symlink", "dotted", "in-folder", "not-yet-there"])
def test_an_input_is_never_the_output(tmp_path, spelling):
    src = tmp_path / "data" / "train.npz"
    src.parent.mkdir()
    src.write_bytes(b"data")
    inputs = [("--data", src)]
    out = {"same": src, "dotted": tmp_path / "data" / ".." / "data" / "train.npz"}.get(spelling)
    if spelling == "hard-link":
        out = tmp_path / "link.npz"
        os.link(src, out)
    elif spelling == "symlink":
        out = tmp_path / "sym.npz"
        os.symlink(src, out)
    elif spelling == "in-folder":
        out, inputs = src, [("the run", src.parent)]
    elif spelling == "not-yet-there":
        out, inputs = tmp_path / "later.csv", [("--data", tmp_path / "later.csv")]
    with pytest.raises(OutputError, match=r"is the input file given to (--data|the run) .*the same file on disk"):
        write_output(out, b"other", inputs=inputs, overwrite=True)
    assert src.read_bytes() == b"data"
    assert not (tmp_path / "later.csv").exists()


def test_a_failed_write_leaves_nothing(tmp_path):
    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_output(tmp_path / "y.csv", boom)
    assert _listing(tmp_path) == []
    (tmp_path / "y.csv").write_text("old")
    with pytest.raises(RuntimeError):
        write_output(tmp_path / "y.csv", boom, overwrite=True)
    assert (tmp_path / "y.csv").read_text() == "old" and _listing(tmp_path) == ["y.csv"]


def test_of_two_writers_exactly_one_succeeds(tmp_path):
    """Both have their content ready before either claims the name: one gets it, the other is refused."""
    n = 6
    ready = threading.Barrier(n)
    results: list = [None] * n

    def writer(i):
        def content(fh):
            fh.write(f"writer {i}\n".encode())
            ready.wait(timeout=30)
        try:
            write_output(tmp_path / "out.json", content)
            results[i] = "ok"
        except OutputError as e:
            results[i] = str(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results.count("ok") == 1, results
    assert all("created by another writer" in r or "exists" in r for r in results if r != "ok")
    winner = results.index("ok")
    assert (tmp_path / "out.json").read_text() == f"writer {winner}\n"
    assert _listing(tmp_path) == ["out.json"]


def test_an_edit_in_place_is_refused_when_the_file_changed_meanwhile(tmp_path):
    p = tmp_path / "README.md"
    p.write_text("old\n")
    write_output(p, "new\n", expect=b"old\n", option="--readme")
    assert p.read_text() == "new\n"
    with pytest.raises(OutputError, match=r"--readme .*README.md changed while this command ran"):
        write_output(p, "newer\n", expect=b"old\n", option="--readme")
    assert p.read_text() == "new\n"


def test_folders_and_files_in_the_way_are_one_line_errors(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a folder; give a file name"):
        write_output(tmp_path / "d", "x")
    with pytest.raises(OutputError, match="is a file, so nothing can be written below it"):
        write_output(tmp_path / "f" / "y.json", "x")
    assert (tmp_path / "f").read_text() == "x"
