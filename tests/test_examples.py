"""The examples run and do what they claim, at small sizes."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_icnn_gradient_map_is_monotone_and_fits():
    err, mono = _load("icnn_gradient_map").main(steps=300)
    assert mono >= 0  # convex potential => monotone gradient map, by construction
    assert err < 0.1


@pytest.mark.parametrize("mode", ["exact", "detached"])
def test_gradrnn_example_learns(mode):
    ex = _load("gradrnn_in_python")
    x, y = ex.make_data(T=6, B=32)
    untrained = ex.train(mode, x, y, steps=0)
    trained = ex.train(mode, x, y, steps=40)
    assert trained < 0.5 * untrained


def test_deploy_onnx_example_matches_pytorch():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    assert _load("deploy_onnx").main(steps=3) < 1e-5
