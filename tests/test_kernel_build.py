"""Building the C++ kernel: a killed build never blocks later runs, a damaged library is rebuilt, and
a build in progress elsewhere is waited for within a bound (issue 13).

The fast cases replace torch's compile-and-load with a stand-in that writes a library file, so that
they test the lock and the verification without a compiler. The two `slow` cases build for real in
their own TORCH_EXTENSIONS_DIR: one kills a build midway, one damages a built library.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch.utils.cpp_extension as ext

from innergrad.kernels import cpu as cpu_kernel

ROOT = Path(__file__).parents[1]


@pytest.fixture
def fake_build(monkeypatch, tmp_path):
    """Builds go to tmp_path; `load` writes a fake library and records what it found."""
    calls = []

    def fake_load(name, **kw):
        folder = tmp_path / name
        calls.append({"torch_lock": (folder / "lock").exists(), "files": sorted(p.name for p in folder.iterdir())})
        (folder / f"{name}.so").write_bytes(b"library " + str(len(calls)).encode())

    monkeypatch.setattr(ext, "_get_build_directory", lambda name, verbose: str(tmp_path / name))
    monkeypatch.setattr(ext, "load", fake_load)
    monkeypatch.setattr(cpu_kernel, "_load", lambda lib: calls.append({"loaded": lib.read_bytes()}))
    monkeypatch.setattr(cpu_kernel, "missing", lambda: [])
    name = cpu_kernel.library_name()
    (tmp_path / name).mkdir()
    return tmp_path / name, calls


def _hold_lock(lock: Path) -> subprocess.Popen:
    """A live process holding the build lock, as a build in progress does."""
    code = textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        print("held", flush=True)
        time.sleep(120)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_killed_builds_lock_file_does_not_block(fake_build, capsys):
    folder, calls = fake_build
    (folder / "lock").touch()  # torch's lock file, as a build killed midway leaves it
    (folder / "fused_cpu.o").write_bytes(b"half an object")  # and a partial object file
    cpu_kernel.build()
    assert calls == [{"torch_lock": False, "files": []}]  # the leftovers were removed before the build
    lib = folder / f"{folder.name}.so"
    assert cpu_kernel._verified(lib)
    assert "building the C++ CPU kernel" in capsys.readouterr().err


def test_a_verified_library_is_loaded_a_damaged_one_rebuilt(fake_build, capsys):
    folder, calls = fake_build
    cpu_kernel.build()
    lib = folder / f"{folder.name}.so"
    (folder / "fused_cpu.o").write_bytes(b"object")
    capsys.readouterr()
    cpu_kernel.build()  # verified: loaded as is, nothing compiled or cleaned, no build message
    assert calls[-1] == {"loaded": b"library 1"} and (folder / "fused_cpu.o").exists()
    assert "building" not in capsys.readouterr().err
    lib.write_bytes(b"librar\x00 1")  # damaged on disk (same size, one byte changed)
    cpu_kernel.build()
    assert calls[-1] == {"torch_lock": False, "files": []}  # never loaded: cleaned, then rebuilt
    assert "building" in capsys.readouterr().err
    assert cpu_kernel._verified(lib) and lib.read_bytes() == b"library 3"


def test_a_live_build_is_waited_for_within_a_bound(fake_build, monkeypatch):
    folder, calls = fake_build
    (folder / "lock").touch()  # the live builder's torch lock: left alone while it lives
    holder = _hold_lock(folder.parent / f"{folder.name}.lock")
    try:
        monkeypatch.setenv("INNERGRAD_BUILD_WAIT_S", "1")
        t0 = time.monotonic()
        msg = rf"process {holder.pid} has been building the kernel for over 1 s"
        with pytest.raises(cpu_kernel.BuildError, match=msg):
            cpu_kernel.build()
        assert time.monotonic() - t0 < 30
        assert calls == [] and (folder / "lock").exists()
        # Through ops(): one warning naming the wait, then the Python loop.
        monkeypatch.setattr(cpu_kernel, "_state", {})
        with pytest.warns(RuntimeWarning, match=rf"could not be built \(process {holder.pid} has been building"):
            assert cpu_kernel.ops() is None
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # The holder died without cleaning up (SIGKILL): its OS lock went with it, and its torch lock file
    # is a leftover the next build removes.
    monkeypatch.setenv("INNERGRAD_BUILD_WAIT_S", "300")
    t0 = time.monotonic()
    cpu_kernel.build()
    assert time.monotonic() - t0 < 30
    assert calls == [{"torch_lock": False, "files": []}]


def test_missing_tools_are_named_with_their_fix(fake_build, monkeypatch):
    folder, calls = fake_build
    cpu_kernel.build()
    lib = folder / f"{folder.name}.so"
    monkeypatch.setattr(cpu_kernel, "missing",
                        lambda: [("ninja (torch builds extensions with it)", "pip install ninja")])
    with pytest.raises(cpu_kernel.BuildError, match=r"missing ninja .*\(fix: pip install ninja\)"):
        cpu_kernel.build(rebuild=True)
    assert cpu_kernel._verified(lib) and len(calls) == 1  # a rebuild that cannot run keeps the good library


# --- real builds ---------------------------------------------------------------------------------------------------

def _need_a_compiler():
    if os.environ.get("INNERGRAD_CPU_KERNEL", "1") == "0":
        pytest.skip("INNERGRAD_CPU_KERNEL=0 turns the kernel off in this run")
    if cpu_kernel.missing():
        pytest.skip(f"the kernel cannot be built here: {cpu_kernel.missing()}")


_USE_KERNEL = """
import warnings
warnings.simplefilter("error", RuntimeWarning)  # a fallback to the Python loop fails the run
import torch, innergrad as ig
from innergrad.kernels import cpu
assert cpu.ops() is not None, cpu.unavailable_reason()
torch.manual_seed(0)
a = ig.GradRNN(3, 4, (8,), backend="fused").double()
b = ig.GradRNN(3, 4, (8,), backend="autograd").double()
b.load_state_dict(a.state_dict())
x = torch.randn(5, 2, 3, dtype=torch.float64)
torch.testing.assert_close(a(x)[0], b(x)[0])
print("KERNEL OK")
"""


def _env(ext_dir: Path) -> dict:
    return {**os.environ, "TORCH_EXTENSIONS_DIR": str(ext_dir), "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_kill_during_a_kernel_build_then_the_next_run_finishes(tmp_path):
    _need_a_compiler()
    env = _env(tmp_path)
    folder = tmp_path / cpu_kernel.library_name()
    first = subprocess.Popen([sys.executable, "-c", "from innergrad.kernels import cpu; cpu.build()"], env=env,
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (folder / "lock").exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)  # torch's lock appears when the compile starts
        assert (folder / "lock").exists(), "the first build never started compiling"
        time.sleep(1.0)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the build and its compiler, as an OOM kill or Ctrl-C would
        first.wait(timeout=60)
    assert (folder / "lock").exists() and not (folder / f"{folder.name}.so.sha256").exists()
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", _USE_KERNEL], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0 and "KERNEL OK" in out.stdout, out.stderr[-3000:]
    assert "waiting for process" not in out.stderr
    print(f"next run after the killed build: {time.monotonic() - t0:.1f} s (a full build)")


@pytest.mark.slow
def test_a_damaged_cached_library_is_rebuilt_not_loaded(tmp_path):
    _need_a_compiler()
    assert cpu_kernel.ops() is not None, cpu_kernel.unavailable_reason()  # built in the default cache
    name = cpu_kernel.library_name()
    src = cpu_kernel.build_dir(name)
    shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("lock"))
    lib = tmp_path / name / f"{name}.so"
    assert cpu_kernel._verified(lib)
    data = bytearray(lib.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = b"\xff" * 4096  # damaged in the middle: would load, then crash
    lib.write_bytes(bytes(data))
    out = subprocess.run([sys.executable, "-c", _USE_KERNEL], env=_env(tmp_path), cwd=ROOT, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0 and "KERNEL OK" in out.stdout, out.stderr[-3000:]
    assert "building the C++ CPU kernel" in out.stderr
    assert cpu_kernel._verified(lib) and lib.read_bytes() != bytes(data)


# --- innergrad build-kernels ---------------------------------------------------------------------------------------

def _cli(*argv, env=None, timeout=900):
    env = env or {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "innergrad", *argv], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_build_kernels_reports_what_is_missing_and_the_fix(tmp_path):
    env = {**_env(tmp_path), "CXX": str(tmp_path / "no-such-compiler"), "PATH": str(tmp_path)}
    out = _cli("build-kernels", env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stdout.splitlines()
    compiler = next(line for line in lines if line.strip().startswith("compiler"))
    assert "MISSING; fix: " in compiler and ("g++" in compiler or "xcode" in compiler)
    kernel = next(line for line in lines if line.strip().startswith("kernel"))
    assert "NOT BUILT: missing a C++ compiler" in kernel and "Python loop" in kernel
    assert any(line.strip().startswith("triton") for line in lines)
    assert not any(tmp_path.iterdir()) or not list(tmp_path.rglob("*.so"))


def test_build_kernels_builds_or_verifies_the_kernel():
    _need_a_compiler()
    out = _cli("build-kernels")
    assert out.returncode == 0, out.stdout + out.stderr
    kernel = next(line for line in out.stdout.splitlines() if line.strip().startswith("kernel"))
    assert "ready (" in kernel and kernel.rstrip().endswith(".so")
    for what in ("compiler", "OpenMP", "ninja", "triton", "GPU"):
        assert any(line.strip().startswith(what) for line in out.stdout.splitlines()), what


def test_python_loop_is_scoped_to_the_block_and_the_thread():
    import threading

    seen = []
    with cpu_kernel.python_loop():
        assert not cpu_kernel.in_use()
        t = threading.Thread(target=lambda: seen.append(cpu_kernel.in_use()))
        t.start()
        t.join(timeout=30)
    assert seen == [True] and cpu_kernel.in_use()
