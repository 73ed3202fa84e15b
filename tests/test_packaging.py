"""Packaging: a plain install (no extras) runs the CLI end to end; typed user code passes mypy --strict."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _optional_packages() -> list[str]:
    """Import names of every package that only an extra installs (read from pyproject.toml)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    names = set()
    for spec in re.findall(r'"([A-Za-z0-9_.\-]+)', block):
        name = re.split(r"[<>=!~\[]", spec)[0].strip().lower()
        if name and name != "innergrad":
            names.add(name.replace("-", "_"))
    return sorted(names)


def test_pyproject_lists_the_extras_we_block():
    # The blocking test below is only as good as this list.
    names = _optional_packages()
    assert {"matplotlib", "scipy", "onnx", "onnxruntime", "mypy"} <= set(names)
    assert "safetensors" not in names and "tqdm" not in names  # core dependencies


BLOCKER = """
import sys
# None in sys.modules: `import name` fails and importlib.util.find_spec(name) says "not installed".
for name in {names!r}:
    sys.modules[name] = None
from innergrad.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_plain_install_runs_train_eval_predict_export(tmp_path):
    """The CLI with every extra's package unimportable, as after `pip install innergrad` with no extras."""
    import numpy as np

    code = BLOCKER.format(names=_optional_packages())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)

    r = cli("train", "--out", "run", "--n-sequences", "16", "--seq-len", "5", "--epochs", "1",
            "--hidden-size", "4", "--hidden-layers", "8")
    assert r.returncode == 0, r.stderr
    assert "matplotlib is not installed" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "run" / "checkpoints").is_dir()
    r = cli("eval", "--run", "run")
    assert r.returncode == 0, r.stderr
    np.savez(tmp_path / "new.npz", x=np.random.default_rng(0).normal(size=(3, 6, 4)).astype("float32"))
    r = cli("predict", "--run", "run", "--data", "new.npz", "--out", "y.npz")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "y.npz")["y"].shape == (3, 6)
    r = cli("export", "--run", "run", "--out", "m.pt2")
    assert r.returncode == 0, r.stderr
    assert "largest relative difference" in r.stdout
    r = cli("export", "--run", "run", "--out", "m.onnx")  # needs the export extra: refused in one line
    assert r.returncode == 2 and "innergrad[export]" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_user_script_passes_mypy_strict(tmp_path):
    pytest.importorskip("mypy")
    script = ROOT / "tests" / "typing" / "user_script.py"
    # follow-imports=silent: innergrad is checked for its types but, as for an installed package,
    # only the user's file reports errors.
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--cache-dir",
                        str(tmp_path / "cache"), str(script)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "MYPYPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr


def test_package_ships_license_and_type_marker():
    assert (ROOT / "innergrad" / "py.typed").is_file()
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    text = (ROOT / "pyproject.toml").read_text()
    assert 'license-files = ["LICENSE"]' in text and 'license = "MIT"' in text
