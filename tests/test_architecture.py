"""The package's layers import one way, down; `import innergrad` stays light.

Layers, lowest first (docs/architecture.md): core < kernels < models < data, train, export <
experiments, bench < cli. A module may import its own layer and the layers below it, never one
above. Every import is read from the source with `ast`, including imports inside functions (a
lazy import that runs upward is still a dependency upward).
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import innergrad

ROOT = Path(innergrad.__file__).parent

#: Top-level subpackage -> its layer (same number: the same layer, they may import each other).
LAYERS = {
    "core": 0,
    "kernels": 1,
    "models": 2,
    "data": 3,
    "train": 3,
    "export": 3,
    "experiments": 4,
    "bench": 4,
    "cli": 5,
}
TOP = max(LAYERS.values()) + 1  # innergrad/__init__.py and __main__.py: above every layer

#: Modules `import innergrad` must not load: each costs 0.3-1 s, and most uses never need them.
HEAVY = ("torch._dynamo", "torch._inductor", "sympy", "matplotlib", "scipy", "triton")


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """`(line, absolute module)` for every import in the file, at any depth."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None:  # `from .. import x`: x may be a submodule
                out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return out


def _layer(module: str) -> int | None:
    """The layer of an innergrad module (TOP for the root package), None for other packages."""
    parts = module.split(".")
    if parts[0] != "innergrad":
        return None
    # The root package, its __main__ and names re-exported by it (`from .. import x`) sit on top;
    # a subpackage missing from LAYERS fails test_every_subpackage_has_a_layer.
    return LAYERS.get(parts[1], TOP) if len(parts) > 1 else TOP


def _violations(root: Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        own = _layer(_module_name(path, root))
        for line, target in _imports(path, root):
            layer = _layer(target)
            if layer is not None and layer > own:
                bad.append(f"{path.relative_to(root.parent)}:{line} imports {target} (a layer above)")
    return bad


def test_every_subpackage_has_a_layer():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(LAYERS), f"packages without a layer: {sorted(packages - set(LAYERS))}"


def test_imports_run_down_the_layers():
    assert _violations(ROOT) == []


def test_the_walk_sees_relative_and_function_level_imports(tmp_path):
    # The checker itself can fail: an upward import inside a function, and one through `from ..`.
    pkg = tmp_path / "innergrad"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "x.py").write_text(
        "from . import mlp\n"
        "def f():\n    from ..train import trainer\n"
        "def g():\n    from .. import __version__\n"
        "import innergrad.models.gradrnn\n"
    )
    got = _violations(pkg)
    assert sorted(v.split(" imports ")[1] for v in got) == [
        "innergrad.__version__ (a layer above)", "innergrad.models.gradrnn (a layer above)",
        "innergrad.train (a layer above)",
    ]
    # ... and the real tree has imports it classifies (the walk is not vacuous).
    found = {t for p in ROOT.rglob("*.py") for _, t in _imports(p)}
    assert {"innergrad.core.mlp", "innergrad.core.backends", "innergrad.kernels.fused"} <= found


def test_import_innergrad_loads_no_heavy_module():
    code = (
        "import json, sys, innergrad\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"`import innergrad` loads {loaded[:10]}; import them where they are used"


@pytest.mark.parametrize("name", ["train", "data", "load"])
def test_lazy_attributes_resolve(name):
    assert getattr(innergrad, name) is not None
    assert name in dir(innergrad)


def test_the_command_line_help_loads_no_heavy_module():
    # `innergrad --help` and every command's --help: what a user waits for before anything runs.
    code = (
        "import json, sys\n"
        "from innergrad.cli import COMMANDS, _command_module, main\n"
        "names = [_command_module(c) and c.replace('_', '-') for c in COMMANDS]\n"
        "for argv in [['--help']] + [[n, '--help'] for n in names if n]:\n"
        "    assert main(argv) == 0, argv\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"--help loads {loaded[:10]}; import them inside the command's run()"
