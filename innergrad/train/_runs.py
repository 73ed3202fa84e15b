"""Run folders: created exclusively, locked for a run's lifetime, never mixed with other files.

- A new run gets a folder nobody else has: `runs/<YYYYmmdd-HHMMSS>-<random>` made with an atomic
  `mkdir` (several runs started in the same second, from several processes, get several folders).
- A run holds an `fcntl.flock` on `<folder>/.innergrad.lock` while it writes (the file holds its PID).
  A second writer is refused, naming that PID. The kernel drops the lock when its holder dies, so a
  crashed run's folder is taken over without a stale-lock timeout.
- An existing folder is used only when it is empty. A folder with files (the user's, or a finished
  run's) is refused unless `overwrite=True`, which removes innergrad's own files only.
- Outputs never replace inputs: `refuse_input(out, inputs)` compares files by identity (device and
  inode), so a hard link or another spelling of the input path is caught too.

    with RunFolder.create(out=None) as run:           # or RunFolder.create("runs/exp1")
        ...write into run.path...
    with RunFolder.open_for_resume("runs/exp1") as run:
        ...
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from ..core.errors import InnergradError
from ..core.files import check_output

LOCK_NAME = ".innergrad.lock"
# What innergrad writes into a run folder; `overwrite` removes these and nothing else.
OWN_FILES = ("config.json", "metrics.jsonl", "summary.json", "report.md", "loss.png", "predictions.png",
             "hidden.png", LOCK_NAME)
OWN_DIRS = ("checkpoints",)
OWN_PATTERNS = ("eval-*.npz", "eval-*.csv", "predict-*.npz", "predict-*.csv", ".*.tmp")


class RunFolderError(InnergradError):
    """A run folder that cannot be used: taken by another run, not empty, or not a folder."""


class RunFolderBusy(RunFolderError):
    """Another live process holds the folder's lock."""

    def __init__(self, path: Path, pid: int | None):
        self.path, self.pid = path, pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{path}: {who} is writing into this run folder right now; wait for it to finish, "
                         "or choose another --out")


def _lock_module():
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; folders are still created exclusively
        return None
    return fcntl


class RunFolder:
    """A run folder held by this process (a context manager; `close()` releases the lock)."""

    def __init__(self, path: Path, fd: int | None, created: bool = False):
        self.path = path
        self._fd = fd
        self._created = created  # this process made the folder: `close` may remove it again while empty
        self._made_root: Path | None = None  # and the `runs` folder above it

    # ---- making and opening

    @classmethod
    def create(cls, out: str | os.PathLike | None = None, root: str | os.PathLike = "runs",
               overwrite: bool = False, inputs: Iterable[str | os.PathLike] = (), prefix: str = "") -> RunFolder:
        """A folder for a new run: `out`, or a fresh `root/<prefix><timestamp>-<random>` when `out` is None.

        `out` may exist when it is an empty folder (or, with `overwrite`, a folder whose innergrad files
        are removed first). `inputs` are files the run reads; a folder that holds one of them is refused
        with `overwrite` too, so that removing innergrad's files can never remove an input.
        """
        if out is None:
            root = Path(root)
            new_root = not root.exists()
            path = _fresh_folder(root, prefix)
            try:
                run = cls(path, _lock(path), created=True)
            except BaseException:
                _remove_if_empty(path)
                raise
            run._made_root = root if new_root else None
            return run
        path = Path(out)
        _make_parents(path)
        created = False
        try:
            os.mkdir(path)
            created = True
        except FileExistsError:
            if not path.is_dir():
                raise RunFolderError(f"--out {path} is a file; give a folder for the run (an existing file is "
                                     "never replaced)") from None
        except OSError as e:
            raise _os_error(path, e) from None
        inputs = list(inputs)
        if not created:
            _check_claim(path, overwrite, inputs)  # before the lock file is made: a refusal leaves no trace
        had_lock = (path / LOCK_NAME).exists()
        try:
            run = cls(path, _lock(path), created)
        except BaseException:
            if created:
                _remove_if_empty(path)
            raise
        try:
            _check_claim(path, overwrite, inputs)  # again, now that no other run can change it
            if overwrite:
                remove_own_files(path)
        except BaseException:
            if not had_lock:
                (path / LOCK_NAME).unlink(missing_ok=True)
            run.close()
            raise
        return run

    @classmethod
    def open_for_resume(cls, path: str | os.PathLike) -> RunFolder:
        """An existing run's folder, locked: refused while another process writes into it."""
        path = Path(path)
        if not path.is_dir():
            raise RunFolderError(f"{path}: no such run folder; give a folder made by 'innergrad train'")
        if not (path / "config.json").is_file():
            raise RunFolderError(f"{path}: not a run folder (no config.json); give a folder made by "
                                 "'innergrad train'")
        return cls(path, _lock(path))

    # ---- the lock's lifetime

    def close(self) -> None:
        """Release the lock. A folder that got nothing but the lock (a run that failed before writing) goes
        again, so a refused run leaves no trace."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if [p.name for p in self.path.iterdir()] == [LOCK_NAME]:
                (self.path / LOCK_NAME).unlink()  # while still held, so nobody locks the orphaned file
                if self._created:
                    _remove_if_empty(self.path)
                    if self._made_root is not None:
                        _remove_if_empty(self._made_root)
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r}, held={self.held})"


def open_run_folder(out: str | os.PathLike | None, *, resume: bool | None = False, overwrite: bool = False,
                    inputs: Iterable[str | os.PathLike] = ()) -> RunFolder:
    """The one way a training run gets its folder, held locked until `close()`.

    `resume=True`: an existing run's folder (`innergrad train --resume`); `False`: a new one (`out`, or
    a fresh `runs/<time>-<random>` for None; see `RunFolder.create`); `None` (`fit(out=...)`): a fit's
    own folder is resumed, a new or empty one is created, and one holding other files is refused.
    """
    if resume:
        return RunFolder.open_for_resume(out)  # type: ignore[arg-type]
    if resume is None and out is not None:
        p = Path(out)
        if p.exists() and not p.is_dir():
            raise RunFolderError(f"fit: out={str(p)!r} is a file; give a folder for the run")
        if (p / "config.json").is_file():
            return RunFolder.open_for_resume(p)
        if p.is_dir() and any(p.iterdir()):
            raise RunFolderError(f"fit: out={str(p)!r} holds other files and no run; give a new or empty folder")
    return RunFolder.create(out, overwrite=overwrite, inputs=inputs)


def _check_claim(path: Path, overwrite: bool, inputs: list) -> None:
    """Refuse a folder with files in it, unless `overwrite` (and then never one holding an input)."""
    others = [p for p in path.iterdir() if p.name != LOCK_NAME]
    if not others:
        return
    held = [str(p) for p in inputs if _inside(p, path)]
    if held:
        raise RunFolderError(f"--out {path} holds the run's input {held[0]}; give another --out so that "
                             "the input stays untouched")
    if not overwrite:
        what = (f"a run (config.json); continue it with 'innergrad train --resume {path}', or"
                if (path / "config.json").exists()
                else f"{len(others)} file(s) that are not this run's, e.g. {others[0].name};")
        raise RunFolderError(f"--out {path} already holds {what} choose another --out, or add --overwrite "
                             "to remove innergrad's files there (other files are kept)")


def _fresh_folder(root: Path, prefix: str = "") -> Path:
    _make_parents(root / "x")
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"{root} is a file, so run folders cannot go below it; give --out")
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for _ in range(100):
        path = root / f"{prefix}{stamp}-{secrets.token_hex(3)}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise _os_error(path, e) from None
    raise RunFolderError(f"{root}: could not make a new run folder (100 names taken); give --out")


def _make_parents(path: Path) -> None:
    """Create the folders above `path`; a regular file among them is a user error, not a traceback."""
    for parent in reversed(path.absolute().parents):
        if parent.exists() and not parent.is_dir():
            raise RunFolderError(f"--out {path}: {parent} is a file, so no folder can be made below it; "
                                 "give a path below a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _os_error(path.parent, e) from None


def _os_error(path: Path, e: OSError) -> RunFolderError:
    why = {errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
           errno.ENOSPC: "no space left"}.get(e.errno or 0, e.strerror or str(e))
    return RunFolderError(f"cannot make the run folder {path}: {why}; give another --out")


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _lock(path: Path) -> int | None:  # noqa: D401
    """An fd holding the folder's flock (None without fcntl); RunFolderBusy names a live holder."""
    for _ in range(10):
        fd = _try_lock(path)
        if fd is not None:
            return fd
    raise RunFolderError(f"{path}: its lock file keeps changing; another process is making and removing it")


def _try_lock(path: Path) -> int | None:
    """The locked fd, or None when the lock file was replaced meanwhile (then try again)."""
    lock = path / LOCK_NAME
    try:
        st = os.lstat(lock)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(st.st_mode):
            raise RunFolderError(f"{lock} is not a regular file; remove it to use this run folder")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise _os_error(path, e) from None
    fcntl = _lock_module()
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pid = _read_pid(fd)
        os.close(fd)
        raise RunFolderBusy(path, pid) from None
    try:  # a closing run may have unlinked the file we opened: then its lock guards nothing
        same = os.path.samestat(os.fstat(fd), os.stat(lock))
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def lock_holder(path: str | os.PathLike) -> int | None:
    """The PID holding a run folder's lock, or None when no live process holds it."""
    fcntl = _lock_module()
    lock = Path(path) / LOCK_NAME
    if fcntl is None or not lock.is_file():
        return None
    fd = os.open(lock, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def remove_own_files(path: Path) -> list[Path]:
    """Delete what innergrad wrote into a run folder (never the lock: it is held); returns what went."""
    gone = []
    names = {p for pat in OWN_PATTERNS for p in path.glob(pat)}
    names |= {path / n for n in OWN_FILES if n != LOCK_NAME}
    for p in sorted(names):
        if p.is_file() and not p.is_symlink():
            p.unlink()
            gone.append(p)
    for d in OWN_DIRS:
        p = path / d
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            gone.append(p)
    return gone


def _inside(file: str | os.PathLike, folder: Path) -> bool:
    try:
        return Path(file).resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when `a` and `b` are one file (hard links and other spellings included); False if one is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], option: str = "--out",
                 input_option: str = "--data") -> None:
    """Refuse to write `out` when it is one of `inputs` (by identity: a hard link or another spelling of the
    same path counts), naming the input. The rule lives in `core/files.check_output`."""
    check_output(out, inputs=[(input_option, src) for src in inputs], overwrite=True, option=option)


def run_inputs(run_dir: str | os.PathLike, data: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The files a command that uses a trained run reads: its config.json, checkpoints, metrics and summary
    and its data file (as `(label, path)` for `core/files.write_output(inputs=...)`)."""
    run_dir = Path(run_dir)
    out = [("--run", run_dir / n) for n in ("config.json", "summary.json", "metrics.jsonl")]
    out += [("--run", p) for p in sorted((run_dir / "checkpoints").glob("*"))] if (run_dir / "checkpoints").is_dir() \
        else []
    if data is None:
        try:
            data = json.loads((run_dir / "config.json").read_text())["train"]["data"]
        except (OSError, ValueError, KeyError, TypeError):
            data = None
    if data:
        out.append(("--run (its training data)", Path(data)))
    return out


# ------------------------------------------------------------------------------- a run's files


def read_run_json(path: str | Path, what: str = "config") -> dict:
    """A run's JSON file as a dict; anything else (damaged, a list, not a regular file) is a InnergradError."""
    p = Path(path)
    from ..core.files import regular_file

    regular_file(p, f"the run's {p.name}")
    try:
        obj = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InnergradError(f"{p}: damaged {what} ({e})") from None
    if not isinstance(obj, dict):
        raise InnergradError(f"{p}: damaged {what}: expected a JSON object, got a JSON {type(obj).__name__}; restore "
                        f"the file from the run (innergrad writes an object of settings)")
    return obj


def recorded_sha256(run_record: dict) -> str | None:
    """The sha256 of the data file a run's config.json recorded (None for the built-in data)."""
    data = run_record.get("data")
    sha = data.get("sha256") if isinstance(data, dict) else None
    return sha if isinstance(sha, str) else None


def check_data_unchanged(data: str | Path | None, recorded: str | None, allow_changed: bool = False,
                         say=None) -> None:
    """Refuse when the data file's sha256 differs from the one its run recorded (`allow_changed` lets it
    pass with a note through `say`)."""
    if not data or not recorded:
        return
    from ..core.files import regular_file, sha256

    p = Path(data)
    if not p.exists():
        raise InnergradError(f"{p}: the run's data file is gone; restore it, or give the data with --data")
    now = sha256(regular_file(p, "the run's data file"))
    if now == recorded:
        return
    msg = (f"{p}: the data file changed since the run was trained (sha256 {recorded[:12]}... then, {now[:12]}... "
           "now), so its validation split is other sequences")
    if not allow_changed:
        raise InnergradError(msg + "; restore the file, or add --allow-changed-data to use it as it is now")
    if say is not None:
        say(msg + "; used anyway (--allow-changed-data): figures are not comparable with the run's own")



__all__ = ["RunFolder", "RunFolderBusy", "RunFolderError", "check_data_unchanged", "lock_holder", "open_run_folder",
           "read_run_json",
           "recorded_sha256", "refuse_input", "remove_own_files", "run_inputs", "same_file"]
