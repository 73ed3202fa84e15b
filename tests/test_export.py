"""ig.export: the exported programs (ONNX Runtime, torch.export) agree with eager PyTorch.

The eager reference is the model as trained (its default backend, e.g. the fused kernel); the exported
program evaluates F's input gradient in closed form, so agreement checks the whole chain.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import innergrad as ig
from innergrad.export import ExportError

SHAPES = [(T, B) for T in (1, 3, 57) for B in (1, 5, 16)]
REL = 1e-5  # fp32, relative to the largest reference value


def rel_err(got, ref) -> float:
    got, ref = (t.detach().numpy() if isinstance(t, torch.Tensor) else t for t in (got, ref))
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


_loaded: dict = {}


def ort_session(path):
    ort = pytest.importorskip("onnxruntime")
    key = ("onnx", str(path), path.stat().st_mtime_ns)
    if key not in _loaded:
        _loaded[key] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _loaded[key]


def pt2_module(path):
    """The loaded file, once per file (loading and the first call take seconds), as one callable: a
    recurrent model's file holds `"model"` (x alone) and `"with_h0"` ((x, h0)), loaded with torch alone."""
    from torch.export.pt2_archive._package import load_pt2

    key = (str(path), path.stat().st_mtime_ns)
    if key not in _loaded:
        programs = load_pt2(str(path)).exported_programs
        # as deployed: with grad on, each call traces the scan anew
        mods = {name: torch.no_grad()(ep.module()) for name, ep in programs.items()}

        def call(*args):
            return mods["with_h0"](*args) if "with_h0" in mods and len(args) == 2 else mods["model"](*args)

        _loaded[key] = call
    return _loaded[key]


def gradrnn(batch_first=False, learn_h0=False, activation="softplus"):
    torch.manual_seed(0)
    m = ig.GradRNN(3, 8, (16, 16), activation=activation, batch_first=batch_first, learn_h0=learn_h0).eval()
    if learn_h0:
        with torch.no_grad():
            m.h0.normal_()
    return m


def eager(model, x, h0=None):
    with torch.no_grad():
        y, h = model(x, h0)
    return y.numpy(), h.numpy()


@pytest.fixture(scope="module", params=[False, True], ids=["time_major", "batch_first"])
def exported_rnn(request, tmp_path_factory):
    model = gradrnn(batch_first=request.param, learn_h0=request.param)
    d = tmp_path_factory.mktemp("rnn")
    paths = {}
    paths[".pt2"] = ig.export(model, d / "rnn.pt2")
    if _has_onnx():
        paths[".onnx"] = ig.export(model, d / "rnn.onnx")
    return model, paths


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _x(model, T, B):
    g = torch.Generator().manual_seed(T * 100 + B)
    shape = (B, T, model.input_size) if model.batch_first else (T, B, model.input_size)
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("T,B", SHAPES)
def test_gradrnn_pt2_matches_eager(exported_rnn, T, B):
    model, paths = exported_rnn
    prog = pt2_module(paths[".pt2"])
    x = _x(model, T, B)
    h0 = torch.randn(B, model.hidden_size, generator=torch.Generator().manual_seed(B))
    y, h = prog(x, h0)
    y_ref, h_ref = eager(model, x, h0)
    assert rel_err(y, y_ref) < REL and rel_err(h, h_ref) < REL
    # h0 = the model's own initial state reproduces the call without h0
    own = (model.h0.detach() if model.h0 is not None else torch.zeros(model.hidden_size)).expand(B, -1)
    y, h = prog(x, own.contiguous())
    y_ref, h_ref = eager(model, x)
    assert rel_err(y, y_ref) < REL and rel_err(h, h_ref) < REL


def test_gradrnn_pt2_takes_x_alone_with_torch_export_load(exported_rnn):
    """`torch.export.load(f).module()(x)` (torch alone): the model's own initial state, learned or zeros."""
    model, paths = exported_rnn
    prog = torch.no_grad()(torch.export.load(str(paths[".pt2"])).module())
    for T, B in ((1, 1), (4, 3)):
        x = _x(model, T, B)
        y, h = prog(x)
        y_ref, h_ref = eager(model, x)
        assert rel_err(y, y_ref) < REL and rel_err(h, h_ref) < REL


@pytest.mark.parametrize("T,B", SHAPES)
def test_gradrnn_onnx_matches_eager(exported_rnn, T, B):
    model, paths = exported_rnn
    if ".onnx" not in paths:
        pytest.skip("onnx / onnxruntime not installed (the `export` extra)")
    sess = ort_session(paths[".onnx"])
    x = _x(model, T, B)
    y, h = sess.run(["y", "h_last"], {"x": x.numpy()})  # h0 left out: the model's own initial state
    y_ref, h_ref = eager(model, x)
    assert rel_err(y, y_ref) < REL and rel_err(h, h_ref) < REL
    h0 = torch.randn(B, model.hidden_size, generator=torch.Generator().manual_seed(B))
    y, h = sess.run(["y", "h_last"], {"x": x.numpy(), "h0": h0.numpy()})
    y_ref, h_ref = eager(model, x, h0)
    assert rel_err(y, y_ref) < REL and rel_err(h, h_ref) < REL


def test_onnx_names_and_dynamic_axes(exported_rnn):
    model, paths = exported_rnn
    if ".onnx" not in paths:
        pytest.skip("onnx / onnxruntime not installed (the `export` extra)")
    import onnx

    m = onnx.load(str(paths[".onnx"]))
    assert [i.name for i in m.graph.input] == ["x", "h0"]
    assert [o.name for o in m.graph.output] == ["y", "h_last"]
    # the time loop is one Scan node, not T unrolled steps
    assert [n.op_type for n in m.graph.node].count("Scan") == 1
    x_dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert x_dims == (["batch", "T", 3] if model.batch_first else ["T", "batch", 3])


@pytest.mark.parametrize("activation", ["tanh", "gelu", "silu", "elu", "sin", "sigmoid"])
def test_every_activation_exports(tmp_path, activation):
    model = gradrnn(activation=activation)
    x = _x(model, 7, 4)
    y_ref, h_ref = eager(model, x)
    y, h = pt2_module(ig.export(model, tmp_path / "m.pt2"))(x, torch.zeros(4, 8))
    assert rel_err(y, y_ref) < REL and rel_err(h, h_ref) < REL
    if _has_onnx():
        y, h = ort_session(ig.export(model, tmp_path / "m.onnx")).run(None, {"x": x.numpy()})
        assert rel_err(y, y_ref) < REL and rel_err(h, h_ref) < REL


def test_float64_model_exports_float64(tmp_path):
    model = gradrnn().double()
    x = _x(model, 5, 3).double()
    y_ref, h_ref = eager(model, x)
    y, h = pt2_module(ig.export(model, tmp_path / "m.pt2"))(x, torch.zeros(3, 8, dtype=torch.float64))
    assert y.dtype == torch.float64 and rel_err(y, y_ref) < 1e-12 and rel_err(h, h_ref) < 1e-12
    if _has_onnx():
        y, h = ort_session(ig.export(model, tmp_path / "m.onnx")).run(None, {"x": x.numpy()})
        assert y.dtype == np.float64 and rel_err(y, y_ref) < 1e-12 and rel_err(h, h_ref) < 1e-12


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
@pytest.mark.parametrize("B", [1, 5, 16])
def test_hamiltonian_exports_vector_field(tmp_path, suffix, B):
    if suffix == ".onnx" and not _has_onnx():
        pytest.skip("onnx / onnxruntime not installed (the `export` extra)")
    torch.manual_seed(1)
    model = ig.HamiltonianNet(4, (32, 32)).eval()
    x = torch.randn(B, 4)
    ref = model(x).detach().numpy()
    path = ig.export(model, tmp_path / f"h{suffix}")
    got = pt2_module(path)(x) if suffix == ".pt2" else ort_session(path).run(["dx"], {"x": x.numpy()})[0]
    assert rel_err(got, ref) < REL


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
@pytest.mark.parametrize("B", [1, 5, 16])
def test_conservative_exports_energy_and_forces(tmp_path, suffix, B):
    if suffix == ".onnx" and not _has_onnx():
        pytest.skip("onnx / onnxruntime not installed (the `export` extra)")
    torch.manual_seed(2)
    model = ig.ConservativeField(ig.MLP(3, (32, 32))).eval()
    x = torch.randn(B, 3)
    e_ref, f_ref = (t.detach().numpy() for t in model(x))
    path = ig.export(model, tmp_path / f"c{suffix}")
    if suffix == ".pt2":
        e, f = pt2_module(path)(x)
    else:
        e, f = ort_session(path).run(["energy", "forces"], {"x": x.numpy()})
    assert rel_err(e, e_ref) < REL and rel_err(f, f_ref) < REL


class Quadratic(nn.Module):
    """A custom (non-MLP) F with its input gradient written out: exports through `value_and_input_grad`."""

    def __init__(self, n: int):
        super().__init__()
        self.A = nn.Parameter(torch.randn(n, n) / n)

    def forward(self, x, h):
        z = torch.cat([x, h], -1)
        return 0.5 * ((z @ self.A) * z).sum(-1)

    def value_and_input_grad(self, x, h, argnums=0):
        z = torch.cat([x, h], -1)
        value = 0.5 * ((z @ self.A) * z).sum(-1)
        g = 0.5 * z @ (self.A + self.A.t())  # not .T: see ExportError's hint
        parts = (g[..., : x.shape[-1]], g[..., x.shape[-1]:])
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        return value, tuple(parts[i] for i in nums)


class Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(11, 1)

    def forward(self, x, h):
        return torch.tanh(self.lin(torch.cat([x, h], -1))).squeeze(-1)


def test_custom_F_with_closed_form_gradient_exports(tmp_path):
    torch.manual_seed(3)
    model = ig.GradRNN(3, 8, F=Quadratic(11), backend="autograd").eval()
    x = _x(model, 6, 5)
    y_ref, h_ref = eager(model, x)
    y, h = pt2_module(ig.export(model, tmp_path / "q.pt2"))(x, torch.zeros(5, 8))
    assert rel_err(y, y_ref) < REL and rel_err(h, h_ref) < REL
    if _has_onnx():
        y, h = ort_session(ig.export(model, tmp_path / "q.onnx")).run(None, {"x": x.numpy()})
        assert rel_err(y, y_ref) < REL and rel_err(h, h_ref) < REL


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_custom_F_without_closed_form_is_refused_clearly(tmp_path, suffix):
    model = ig.GradRNN(3, 8, F=Opaque(), backend="autograd")
    with pytest.raises(ExportError, match="Opaque.*value_and_input_grad"):
        ig.export(model, tmp_path / f"o{suffix}")
    assert not list(tmp_path.iterdir())  # nothing written


def test_refusals(tmp_path):
    model = gradrnn()
    with pytest.raises(ExportError, match=r"\.onnx.*\.pt2"):
        ig.export(model, tmp_path / "m.tflite")
    with pytest.raises(ExportError, match="GradRNN around it"):
        ig.export(model.cell, tmp_path / "m.pt2")
    with pytest.raises(ExportError, match="expected an ig.GradRNN"):
        ig.export(nn.Linear(2, 2), tmp_path / "m.pt2")
    with pytest.raises(ExportError, match="example=x"):
        ig.export(ig.ConservativeField(Opaque()), tmp_path / "m.pt2")
    keep = tmp_path / "keep.pt2"
    keep.write_bytes(b"mine")
    with pytest.raises(ExportError, match="exists"):
        ig.export(model, keep)
    assert keep.read_bytes() == b"mine"
    ig.export(model, keep, overwrite=True)
    assert keep.read_bytes() != b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.pt2"]  # no temporary files left


def test_conservative_with_custom_energy_needs_and_uses_example(tmp_path):
    class Pair(nn.Module):
        """E(x) for x (B, atoms, 3), gradient in closed form."""

        def forward(self, x):
            return 0.5 * (x * x).sum((-1, -2))

        def value_and_input_grad(self, x, argnums=0):
            return 0.5 * (x * x).sum((-1, -2)), (x,)

    model = ig.ConservativeField(Pair(), backend="autograd")
    x = torch.randn(5, 4, 3)
    path = ig.export(model, tmp_path / "p.pt2", example=torch.randn(1, 4, 3))
    e, f = pt2_module(path)(x)
    e_ref, f_ref = model(x)
    assert rel_err(e, e_ref.detach()) < REL and rel_err(f, f_ref.detach()) < REL


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run with the default model settings (tiny data, one epoch)."""
    from innergrad.cli import main

    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(out), "--n-sequences", "16", "--seq-len", "5", "--epochs", "1",
                 "--no-report", "--quiet"]) == 0
    return out


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_cli_export_of_a_default_run_matches_eager(trained_run, tmp_path, capsys, suffix):
    from innergrad.cli import main

    if suffix == ".onnx" and not _has_onnx():
        pytest.skip("onnx / onnxruntime not installed (the `export` extra)")
    out = tmp_path / f"model{suffix}"
    assert main(["export", "--run", str(trained_run), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"wrote {out}" in said and "largest relative difference" in said
    model = ig.load(trained_run)
    for T, B in SHAPES:
        x = _x(model, T, B)
        y_ref, h_ref = eager(model, x)
        if suffix == ".pt2":
            y, h = pt2_module(out)(x, torch.zeros(B, model.hidden_size))
        else:
            y, h = ort_session(out).run(["y", "h_last"], {"x": x.numpy()})
        assert rel_err(y, y_ref) < REL and rel_err(h, h_ref) < REL, (T, B)


def test_cli_export_refusals(trained_run, tmp_path, capsys):
    from innergrad.cli import main

    assert main(["export", "--run", str(trained_run), "--out", str(tmp_path / "m.tflite")]) == 2
    assert "name the file *.onnx" in capsys.readouterr().err
    keep = tmp_path / "keep.pt2"
    keep.write_bytes(b"mine")
    assert main(["export", "--run", str(trained_run), "--out", str(keep)]) == 2
    assert "--overwrite" in capsys.readouterr().err and keep.read_bytes() == b"mine"
    assert main(["export", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.pt2")]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "m.pt2").exists()


def test_aoti_refusals_leave_nothing(tmp_path):
    for batch in (None, 0, 2.5, True):
        with pytest.raises(ExportError, match="only at a fixed batch size.*aoti_batch=B"):
            ig.export(gradrnn(), tmp_path / "r.pt2", aoti=True, aoti_batch=batch)
    with pytest.raises(ExportError, match=r"name the file \*.pt2"):
        ig.export(ig.HamiltonianNet(2, (8,)), tmp_path / "h.onnx", aoti=True)
    with pytest.raises(ExportError, match="takes any batch, so leave aoti_batch out"):
        ig.export(ig.HamiltonianNet(2, (8,)), tmp_path / "h.pt2", aoti=True, aoti_batch=4)
    with pytest.raises(ExportError, match="aoti_batch applies with aoti=True"):
        ig.export(gradrnn(), tmp_path / "r.pt2", aoti_batch=4)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # AOTInductor compiles C++ twice: about two minutes on 2 cores
def test_aoti_package_of_a_gradrnn_at_a_fixed_batch_takes_x_alone_or_h0(tmp_path):
    from innergrad.export import check_exported, load_pt2

    model = gradrnn(learn_h0=True)
    path = ig.export(model, tmp_path / "r.pt2", aoti=True, aoti_batch=4)
    compiled = torch._inductor.aoti_load_package(str(path))  # "model": x alone, from the learned h0
    for T in (1, 9):
        x = _x(model, T, 4)
        y, h = compiled(x)
        y_ref, h_ref = eager(model, x)
        assert rel_err(y, y_ref) < REL and rel_err(h, h_ref) < REL
        h0 = torch.randn(4, model.hidden_size)
        y, h = load_pt2(path)(x, h0)
        y_ref, h_ref = eager(model, x, h0)
        assert rel_err(y, y_ref) < REL and rel_err(h, h_ref) < REL
    assert check_exported(model, path, B=4) < REL


@pytest.mark.slow  # AOTInductor compiles C++: about a minute on 2 cores
def test_aoti_package_of_a_hamiltonian_net_matches_eager(tmp_path):
    from innergrad.export import check_exported

    torch.manual_seed(4)
    model = ig.HamiltonianNet(4, (16,)).eval()
    path = ig.export(model, tmp_path / "h.pt2", aoti=True)
    compiled = torch._inductor.aoti_load_package(str(path))
    for B in (1, 7):
        x = torch.randn(B, 4)
        assert rel_err(compiled(x), model(x).detach()) < REL
    assert check_exported(model, path) < REL
