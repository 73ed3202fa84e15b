"""Build-on-first-use loader of the C++ CPU kernel of the "fused" backend (`csrc/fused_cpu.cpp`).

The kernel is compiled once per machine and source version (about 15 s on 2 cores, with `ninja`
and a C++ compiler with OpenMP; PyTorch caches the result under `TORCH_EXTENSIONS_DIR`, by default
`~/.cache/torch_extensions`). `innergrad build-kernels` builds it ahead of time (containers,
clusters) and reports what the build needs. Where it cannot be built, the fused backend runs its
Python loop (same math and results; measured 1.5-3.4x slower on 2 cores, about 2x at the
benchmark's size) and says so once, naming what is missing and the command that fixes it.
`INNERGRAD_CPU_KERNEL=0` turns the kernel off; `INNERGRAD_VERBOSE_BUILD=1` shows the compiler's
output; `INNERGRAD_BUILD_WAIT_S` bounds the wait for another process's build (default 300 s).

Builds never block each other for good: a build holds an OS lock (`fcntl.flock`, released by the
OS when its process dies, however it dies) with its PID inside, so a build killed midway leaves
nothing that makes later runs wait; torch's own lock file, left behind by such a build, is removed
by the next builder. A library is loaded only when its sha256 matches the one recorded when it was
built; a damaged or unverified one is rebuilt from a clean build folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..core.activations import kernel_codes
from ..core.files import sha256
from ..core.settings import current_settings, settings

SOURCE = Path(__file__).parent / "csrc" / "fused_cpu.cpp"
#: Activation name -> the kernel's code for it (`enum Act` in the source), from core's table.
ACTIVATIONS = kernel_codes("cpu")
#: How long a run waits for another process's build of the same kernel before running the Python loop.
BUILD_WAIT_S = 300.0

_lock = threading.Lock()
_state: dict[str, object] = {}


@contextmanager
def python_loop() -> Iterator[None]:
    """Inside this block (this thread or task only) the fused backend runs its Python loop, not the kernel:
    `ig.settings(cpu_kernel=False)` under its old name.

    The benchmark times the loop beside the kernel and the tests hold the two to each other; a
    scoped setting cannot outlive them or reach another thread's model, as a module flag could.
    """
    with settings(cpu_kernel=False):
        yield


def in_use() -> bool:
    """Whether the fused backend may use the kernel here (False inside `python_loop()`)."""
    return current_settings().cpu_kernel


class BuildError(RuntimeError):
    """The kernel could not be built or loaded; the message names the cause and the fix."""


def _capability() -> str:
    cpu = getattr(torch.backends, "cpu", None)
    return cpu.get_cpu_capability() if cpu is not None else "DEFAULT"


def _flags(cap: str) -> list[str]:
    # -fopenmp: at::parallel_for is a header template, parallel only when compiled with OpenMP
    # (without it the blocks of the batch silently ran one after the other: measured).
    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    # Loops as wide as the kernels PyTorch itself picked for this CPU (measured 1.6x on the
    # softplus loop from AVX2 to AVX-512).
    if cap in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    if cap == "AVX512":
        flags += ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw"]
    return flags


def _tool_path() -> str:
    # `pip install ninja` puts ninja next to the interpreter, which is not on PATH when the venv's
    # python is called directly (as the Makefile does); torch looks for ninja on PATH.
    dirs = [os.path.dirname(sys.executable)]
    try:
        import ninja  # type: ignore[import-not-found]

        dirs.append(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    return os.pathsep.join([*dirs, os.environ.get("PATH", "")])


def library_name() -> str:
    """The build's name: source, flags and torch version in it, so that a cache shared by machines or
    versions never mixes builds, and an edited source never loads a stale library."""
    cap = _capability()
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([*_flags(cap), torch.__version__]).encode()).hexdigest()[:10]
    return f"innergrad_fused_cpu_{cap.lower()}_{key}"


def build_dir(name: str | None = None) -> Path:
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name or library_name(), False))


# --- what the build needs ----------------------------------------------------------------------

def _fixes() -> dict[str, str]:
    mac = sys.platform == "darwin"
    return {
        "compiler": "xcode-select --install" if mac else "sudo apt-get install g++",
        "ninja": f"{sys.executable} -m pip install ninja",
        "openmp": "brew install libomp" if mac else "sudo apt-get install libgomp1",
    }


def compiler() -> str | None:
    """The C++ compiler torch's build uses (`$CXX`, else c++ / g++ on PATH), or None."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx) or (cxx if os.path.isfile(cxx) else None)
    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def ninja_path() -> str | None:
    return shutil.which("ninja", path=_tool_path())


def openmp_works(cxx: str) -> bool:
    """Whether `cxx -fopenmp` compiles and links a program (a second's test in a temporary folder)."""
    src = "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory(prefix="innergrad-omp-") as d:
        (Path(d) / "t.cpp").write_text(src)
        try:
            r = subprocess.run([cxx, "-fopenmp", "t.cpp", "-o", "t"], cwd=d, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
    return r.returncode == 0


def missing() -> list[tuple[str, str]]:
    """`(what is missing, the command that fixes it)` for the build's prerequisites; empty when all are there."""
    fix = _fixes()
    out = []
    cxx = compiler()
    if cxx is None:
        out.append(("a C++ compiler (c++, g++ or $CXX)", fix["compiler"]))
    elif not openmp_works(cxx):
        out.append((f"OpenMP for {cxx} (-fopenmp does not compile)", fix["openmp"]))
    if ninja_path() is None:
        out.append(("ninja (torch builds extensions with it)", fix["ninja"]))
    return out


# --- the build lock ----------------------------------------------------------------------------

@contextmanager
def _build_lock(path: Path, wait_s: float) -> Iterator[None]:
    """Hold an OS lock on `path` (one builder per kernel at a time), waiting at most `wait_s` seconds.

    The OS drops the lock when its holder dies, so a killed build never blocks a later one. The
    holder's PID is written in the file, for the message of a process that waits.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock file is all there is
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, said = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                if time.monotonic() >= deadline:
                    raise BuildError(
                        f"process {holder} has been building the kernel for over {wait_s:.0f} s (lock {path}); "
                        "INNERGRAD_BUILD_WAIT_S sets how long to wait") from None
                if not said:
                    print(f"innergrad: waiting for process {holder} to finish building the C++ CPU kernel "
                          f"(up to {wait_s:.0f} s; lock {path})...", file=sys.stderr, flush=True)
                    said = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# --- the verified library ----------------------------------------------------------------------

def _record_path(lib: Path) -> Path:
    return lib.with_name(lib.name + ".sha256")


def _verified(lib: Path) -> bool:
    """Whether `lib` is the library this package built: its sha256 as recorded after the build."""
    try:
        return _record_path(lib).read_text().strip() == sha256(lib)
    except OSError:
        return False


def cached() -> bool:
    """Whether a verified library of this source, flags and torch version is in the cache."""
    name = library_name()
    return _verified(build_dir(name) / f"{name}.so")


def _clean(folder: Path) -> None:
    """Empty the build folder: its library is damaged or unverified, so its objects are suspect too."""
    for p in folder.iterdir() if folder.is_dir() else ():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _wait_s() -> float:
    try:
        return max(0.0, float(os.environ.get("INNERGRAD_BUILD_WAIT_S", BUILD_WAIT_S)))
    except ValueError:
        return BUILD_WAIT_S


def _load(lib: Path) -> None:
    torch.ops.load_library(str(lib))


def build(rebuild: bool = False):
    """Load the verified cached kernel, else build it, in this process; returns its `torch.ops` namespace.

    Raises BuildError naming what went wrong and the fix. `rebuild`: compile from a clean folder.
    """
    name = library_name()
    folder = build_dir(name)
    lib = folder / f"{name}.so"
    if not rebuild and _verified(lib):
        # Built and recorded before: loaded without a lock, ninja or write access (a read-only cache
        # in a container works), and without waiting for anyone.
        _load_verified(lib)
        return torch.ops.innergrad_cpu
    with _build_lock(folder.parent / f"{name}.lock", _wait_s()):
        if not rebuild and _verified(lib):  # built by the process we waited for
            _load_verified(lib)
            return torch.ops.innergrad_cpu
        absent = missing()  # before cleaning: without the tools, a good library stays where it is
        if absent:
            raise BuildError("missing " + "; ".join(f"{what} (fix: {cmd})" for what, cmd in absent))
        # Under the lock no other builder runs: torch's lock file here is a killed build's leftover
        # (it would make torch's `load` wait forever), and objects without a verified library are suspect.
        _clean(folder)
        print("innergrad: building the C++ CPU kernel of the 'fused' backend (once per machine, ~15 s)...",
              file=sys.stderr, flush=True)
        _compile_and_load(name, folder)
        _record_path(lib).write_text(sha256(lib) + "\n")
    return torch.ops.innergrad_cpu


def _load_verified(lib: Path) -> None:
    try:
        _load(lib)
    except OSError as e:  # verified bytes that do not load: a runtime library missing, not damage
        raise BuildError(f"the cached kernel {lib} does not load ({e}); `innergrad build-kernels --rebuild` "
                         "rebuilds it") from e


def _compile_and_load(name: str, folder: Path) -> None:
    from torch.utils.cpp_extension import load

    old_path = os.environ.get("PATH")
    os.environ["PATH"] = _tool_path()
    try:
        load(name=name, sources=[str(SOURCE)], extra_cflags=_flags(_capability()), extra_ldflags=["-fopenmp"],
             is_python_module=False, verbose=os.environ.get("INNERGRAD_VERBOSE_BUILD") == "1")
    except Exception as e:
        _clean(folder)  # a failed build leaves nothing a later one would trust
        lines = str(e).strip().splitlines()
        raise BuildError(f"{type(e).__name__}: {lines[-1] if lines else ''}") from e
    finally:
        if old_path is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = old_path


def ops():
    """The kernel's `torch.ops` namespace, or None when it is turned off or could not be built."""
    if "ops" in _state:
        return _state["ops"]
    with _lock:
        if "ops" not in _state:
            ops_, why = None, None
            if os.environ.get("INNERGRAD_CPU_KERNEL", "1") == "0":
                why = "turned off by INNERGRAD_CPU_KERNEL=0"
            else:
                try:
                    ops_ = build()
                except Exception as e:  # no compiler, no ninja, a failed build: run the Python loop
                    lines = str(e).strip().splitlines()
                    why = str(e) if isinstance(e, BuildError) else f"{type(e).__name__}: {lines[-1] if lines else ''}"
                    warnings.warn(
                        f"innergrad: the C++ CPU kernel of the 'fused' backend could not be built ({why}). "
                        "The fused backend runs its Python loop instead: same results, about 2x slower. "
                        "`innergrad build-kernels` reports what the build needs; INNERGRAD_VERBOSE_BUILD=1 "
                        "shows the build, INNERGRAD_CPU_KERNEL=0 silences this.",
                        RuntimeWarning, stacklevel=3)
            _state["why"] = why
            _state["ops"] = ops_
    return _state["ops"]


def unavailable_reason() -> str | None:
    """Why `ops()` is None (after it was called), else None."""
    return _state.get("why")  # type: ignore[return-value]


def supports(activation: str, dtype: torch.dtype) -> bool:
    """Whether the kernel covers this activation and dtype (else the Python loop runs)."""
    return activation in ACTIVATIONS and dtype in (torch.float32, torch.float64)
