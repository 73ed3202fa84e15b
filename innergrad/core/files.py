"""File helpers shared by every layer.

`write_output` is the one way a command creates an output file (export, eval/predict, experiment
results and reports, `table --save/--readme`, `bench --json`, report plots): see its docstring for
the rules. `write_atomic` is for a run's own files, which a run replaces as it goes (checkpoints,
config.json, summary.json) inside a folder it holds locked.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, Union

from .errors import InnergradError


def sha256(path: str | Path) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def regular_file(path: str | os.PathLike, what: str = "the file", error: type[Exception] = InnergradError) -> Path:
    """`path`, refused when it is (or links to) a pipe, device or socket: reading one may never end
    (a FIFO waits for a writer, /dev/zero never runs out). Missing paths and folders pass through, for
    the caller's own message."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except OSError:
        return p
    for test, kind in _KINDS:
        if test(mode):
            link = f" (a link to {os.path.realpath(p)})" if os.path.islink(p) else ""
            raise error(f"{p}: {what} is {kind}{link}, not a regular file; give a file saved on disk")
    return p


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


_UMASK = _umask()


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to `path` via a temporary file in the same folder, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def strict_json(obj):
    """`obj` with every non-finite float as None, so it serialises as strict JSON (no bare NaN)."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json(path: str | Path, obj) -> Path:
    """Strict JSON (a NaN or inf is written as null, which every JSON reader takes), atomically."""
    return write_atomic(path, json.dumps(strict_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


# ------------------------------------------------------------------------------- output files


class OutputError(InnergradError):
    """An output file that cannot be written: it exists, it is an input, another writer made it first."""


Content = Union[bytes, str, Callable[[BinaryIO], object]]  # noqa: UP007 (a runtime alias on Python 3.10)
InputSpec = Union[str, os.PathLike, None, "tuple[str, str | os.PathLike | None]"]
MAX_INPUT_FILES = 100_000  # a folder given as an input is walked; past this many files it is refused


def _cut(text: object, n: int = 120) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 3] + "..."


def _input_files(inputs: Iterable[InputSpec]) -> list[tuple[str, str]]:
    """`(label, path)` for every file the command reads: a folder stands for every file below it."""
    out: list[tuple[str, str]] = []
    for item in inputs:
        label, src = item if isinstance(item, tuple) else ("", item)
        if src is None:
            continue
        src = os.fspath(src)
        if os.path.isdir(src):
            for root, _, files in os.walk(src):
                out += [(label, os.path.join(root, f)) for f in files]
                if len(out) > MAX_INPUT_FILES:
                    raise OutputError(f"input folder {_cut(src)} holds more than {MAX_INPUT_FILES} files; give "
                                      "the files the command reads instead")
        out.append((label, src))
    return out


def _is_input(out: Path, src: str) -> bool:
    """`out` is `src` by identity (device and inode: hard links, symlinks, other spellings) or by resolved
    name (a file about to be read that does not exist yet)."""
    try:
        if os.path.samefile(out, src):
            return True
    except OSError:
        pass
    return os.path.realpath(out) == os.path.realpath(src)


def _why(e: OSError) -> str:
    return {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
            errno.EISDIR: "it is a folder", errno.ENOTDIR: "a part of the path is a file",
            errno.ENAMETOOLONG: "the name is too long"}.get(e.errno or 0, e.strerror or str(e))


def _fill(fd: int, content: Content) -> None:
    with os.fdopen(fd, "wb", closefd=False) as fh:
        if callable(content):
            content(fh)
        else:
            fh.write(content.encode() if isinstance(content, str) else bytes(content))
        fh.flush()
        os.fsync(fh.fileno())


def _link_exclusive(tmp: str, path: Path) -> None:
    """Give the finished temporary file its final name, failing with FileExistsError when that name exists
    (so of two writers exactly one succeeds and no file is ever seen half-written)."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
            raise
    # A file system without hard links: claim the name exclusively, then rename over the (empty) claim.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.replace(tmp, path)


def _still(path: Path, expect: bytes, option: str, shown: str) -> None:
    """Refuse an edit in place when the file no longer holds what the caller read (another writer)."""
    try:
        now = path.read_bytes()
    except OSError as e:
        raise OutputError(f"{option} {shown}: cannot read it to edit it ({_why(e)})") from None
    if now != expect:
        raise OutputError(f"{option} {shown} changed while this command ran (another writer); nothing was "
                          "written. Run the command again")


def check_output(path: str | os.PathLike, *, inputs: Iterable[InputSpec] = (), overwrite: bool = False,
                 option: str = "--out", expect: bytes | None = None) -> Path:
    """`write_output`'s checks without writing: call it before the work, so a refusal costs nothing.
    Returns `path` as a Path; raises `OutputError`."""
    path = Path(path)
    shown = _cut(path)
    for label, src in _input_files(inputs):
        if _is_input(path, src):
            given = f"the input file given to {label}" if label else "an input file of this command"
            raise OutputError(f"{option} {shown} is {given} ({_cut(src)}, the same file on disk); writing there "
                              f"would replace your data. Give another {option}")
    if path.is_dir():
        raise OutputError(f"{option} {shown} is a folder; give a file name (in it or elsewhere)")
    exists = os.path.lexists(path)
    if expect is None and exists and not overwrite:
        raise OutputError(f"{option} {shown} exists; give another file name, or add --overwrite to replace it")
    if expect is not None:
        _still(path, expect, option, shown)
    for parent in reversed(path.absolute().parents):
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{option} {shown}: {_cut(parent)} is a file, so nothing can be written below it; "
                              "give a path below a folder")
    return path


def write_output(path: str | os.PathLike, content: Content, *, inputs: Iterable[InputSpec] = (),
                 overwrite: bool = False, option: str = "--out", expect: bytes | None = None,
                 verify: Callable[[Path], object] | None = None) -> Path:
    """Create the output file `path` holding `content`; the one function every command writes outputs with.

    **Arguments:**

    - `content`: bytes, text (UTF-8), or a function that writes into a binary file object
      (`lambda fh: fig.savefig(fh, format="png")`).
    - `inputs`: every file the command (and the run it reads) reads: paths, or `(label, path)` pairs
      (the label, e.g. `"--data"`, is named in the error); a folder stands for every file below it.
    - `overwrite`: replace an existing `path` (atomically); without it an existing file is refused.
    - `option`: the option that named `path`, for the messages.
    - `expect`: for an edit in place (a README's generated block): the bytes the caller read from
      `path`. The file must still hold them (else another writer changed it meanwhile: refused) and is
      replaced atomically; `overwrite` is then not needed.
    - `verify`: called with the finished temporary file before it gets the final name (e.g. run an
      exported program against the model); an exception there leaves nothing written.

    **Rules:** never a path that is an input (by identity: `os.path.samefile`, so hard links, symlinks
    and other spellings count; or by resolved name); content written to a temporary file in the same
    folder and fsynced, then linked to the final name, which fails if the name exists: of two writers
    exactly one succeeds, the other gets `OutputError`, and nobody ever sees half a file. Missing
    parent folders are made. Raises `OutputError` (a `ValueError`) with a one-line message.
    """
    path = check_output(path, inputs=inputs, overwrite=overwrite, option=option, expect=expect)
    shown = _cut(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"{option} {shown}: cannot write there ({_why(e)}); give another {option}") from None
    try:
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        except (OSError, AttributeError):
            pass
        _fill(fd, content)
        os.close(fd)
        fd = -1
        if verify is not None:
            verify(Path(tmp))
        if expect is not None:
            _still(path, expect, option, shown)  # again, just before the swap: the window is the replace alone
            os.replace(tmp, path)
        elif overwrite:
            os.replace(tmp, path)
        else:
            _link_exclusive(tmp, path)
    except FileExistsError:
        raise OutputError(f"{option} {shown} was created by another writer while this command ran; nothing was "
                          f"written. Give another {option}, or add --overwrite to replace it") from None
    except OSError as e:
        raise OutputError(f"{option} {shown}: cannot write there ({_why(e)}); give another {option}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
    fsync_dir(path.parent)
    return path


def write_figure(fig, path: str | os.PathLike, *, inputs: Iterable[InputSpec] = (), overwrite: bool = False,
                 option: str = "--out", **savefig) -> Path:
    """A matplotlib figure saved through `write_output` (format from the suffix: png, pdf or svg)."""
    fmt = Path(path).suffix.lower().lstrip(".") or "png"
    return write_output(path, lambda fh: fig.savefig(fh, format=fmt, **savefig), inputs=inputs,
                        overwrite=overwrite, option=option)
