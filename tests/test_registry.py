"""The model protocol and its table: specs round-trip, run folders record them, ig.load rebuilds every
model of the table from CLI and fit(out=) runs, run identity compares whole specs, old run folders load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import innergrad as ig
from innergrad.core.errors import ModelSpecError
from innergrad.models.registry import MODELS, build, kind_of, spec_diff, spec_of
from innergrad.train import _checkpoint as ck

DATA = Path(__file__).parent / "data"


def spring(n=16, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32)
    return x, np.stack([x[:, 1], -x[:, 0]], 1)


def models() -> dict:
    """One small model of each built-in kind, in several settings (custom F / H / energy as nested specs)."""
    torch.manual_seed(0)
    return {
        "gradrnn": ig.GradRNN(2, 3, (5,), activation="tanh", learn_h0=True),
        "gradrnn_batch_first": ig.GradRNN(2, 3, (4, 4), mode="detached", batch_first=True),
        "gradrnn_own_mlp": ig.GradRNN(2, 3, F=ig.MLP((2, 3), (6,), "silu", out_bias=False)),
        "hamiltonian": ig.HamiltonianNet(4, (8,), activation="softplus"),
        "hamiltonian_own_H": ig.HamiltonianNet(2, H=ig.MLP(2, (8,), "tanh")),
        "conservative": ig.ConservativeField(ig.MLP(3, (8, 8), "gelu"), mode="detached"),
        "mlp": ig.MLP((2, 1), (3,), "sin"),
        "lagrangian": ig.LagrangianNet(4, (8,), init="lnn"),
        "lagrangian_own_L": ig.LagrangianNet(2, L=ig.MLP(2, (8,), "tanh"), kinetic=0.5),
        "dissipative": ig.DissipativeHNN(2, (8,), dissipation="momenta"),
        "dissipative_shared_deep": ig.DissipativeHNN(2, (8, 8), shared=True),
        "dissipative_own_D": ig.DissipativeHNN(4, (6,), D=ig.MLP(4, (5,), "softplus")),
        "dissipative_shared": ig.DissipativeHNN(2, (8,), shared=True),
    }


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", list(models()))
def test_every_model_rebuilds_from_its_spec(name):
    model = models()[name]
    spec = spec_of(model)
    assert spec["kind"] == kind_of(model) and MODELS[spec["kind"]] is type(model)
    json.dumps(spec)  # JSON-able, nested modules included
    again = build(json.loads(json.dumps(spec)))
    assert type(again) is type(model) and spec_of(again) == spec
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_gradrnn_spec_holds_F_sizes_and_activation():
    spec = spec_of(models()["gradrnn"])
    assert spec == {"kind": "GradRNN", "input_size": 2, "hidden_size": 3, "hidden_layers": [5], "activation": "tanh",
                    "mode": "exact", "backend": "auto", "batch_first": False, "learn_h0": True, "compile": False}
    own = spec_of(models()["gradrnn_own_mlp"])
    assert own["F"] == {"kind": "MLP", "in_features": [2, 3], "hidden_layers": [6], "activation": "silu",
                        "out_bias": False, "init": "default"}
    assert "hidden_layers" not in own


def test_spec_diff_names_every_differing_field():
    a = spec_of(ig.ConservativeField(ig.MLP(3, (8,), "tanh")))
    b = spec_of(ig.ConservativeField(ig.MLP(3, (9,), "softplus"), mode="detached"))
    assert spec_diff(a, b) == ["energy.hidden_layers ([8] then, [9] now)",
                               "energy.activation ('tanh' then, 'softplus' now)", "mode ('exact' then, 'detached' now)"]
    assert spec_diff(a, a) == []


def test_unknown_kinds_and_unregistered_classes_say_how_to_register():
    with pytest.raises(ModelSpecError, match=r"kind 'Mine' is not in innergrad's model table.*register_model\(Mine\)"):
        build({"kind": "Mine", "n": 2})

    class Mine(nn.Module):
        pass

    with pytest.raises(ModelSpecError, match=r"Mine is not in innergrad's model table.*ig.register_model\(Mine\)"):
        spec_of(Mine())
    with pytest.raises(ModelSpecError, match=r"cannot build a GradRNN from .*hidden_sise"):
        build({"kind": "GradRNN", "input_size": 2, "hidden_sise": 3})


def test_register_model_refusals():
    class NoSpec(nn.Module):
        pass

    class GradRNN(nn.Module):  # the name of a built-in
        def spec(self):
            return {}

    with pytest.raises(TypeError, match="pass the class itself"):
        ig.register_model(ig.GradRNN(2, 3, (4,)))
    with pytest.raises(TypeError, match=r"no spec\(\) method"):
        ig.register_model(NoSpec)
    with pytest.raises(ModelSpecError, match=r"kind 'GradRNN' is innergrad.models.gradrnn.GradRNN already.*kind="):
        ig.register_model(GradRNN)
    assert MODELS["GradRNN"] is ig.GradRNN


# ------------------------------------------------------------------------------- ig.load of fit(out=) runs


def _fit_and_load(model, x, y, out):
    ig.train.fit(model, x, y, steps=2, lr=1e-2, out=out, progress=False)
    loaded = ig.load(out)
    assert type(loaded) is type(model) and spec_of(loaded) == spec_of(model)
    assert same_weights(loaded, model)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["fit"]["model_spec"] == spec_of(model)
    return loaded


def test_ig_load_rebuilds_hamiltonian_and_conservative_from_fit_runs(tmp_path):
    x, dx = spring()
    torch.manual_seed(0)
    hnn = ig.HamiltonianNet(2, (8,), activation="softplus")
    loaded = _fit_and_load(hnn, x, dx, tmp_path / "hnn")
    xt = torch.from_numpy(x[:4])
    assert torch.equal(loaded(xt), hnn.eval()(xt))

    field = ig.ConservativeField(ig.MLP(2, (8,), "tanh"))
    wrapped = _EnergyOnly(field)  # fit's loss reads the first output: the energy
    ig.train.fit(wrapped, x, (x ** 2).sum(1) / 2, steps=2, out=tmp_path / "plain", progress=False)
    with pytest.raises(ck.CheckpointError, match=r"records no spec of its model .*_EnergyOnly.*ig.register_model"):
        ig.load(tmp_path / "plain")
    loaded = _fit_and_load(field, x, np.zeros((len(x),), np.float32), tmp_path / "field")
    e, f = loaded(xt)
    e_ref, f_ref = field(xt)
    assert torch.equal(e, e_ref) and torch.equal(f, f_ref)


def test_ig_load_rebuilds_a_lagrangian_net_from_a_fit_run(tmp_path):
    x, dx = spring()
    torch.manual_seed(0)
    lnn = ig.LagrangianNet(2, (8,))
    loaded = _fit_and_load(lnn, x, dx, tmp_path / "lnn")
    xt = torch.from_numpy(x[:4])
    assert torch.equal(loaded(xt), lnn.eval()(xt))


class _EnergyOnly(nn.Module):
    def __init__(self, field):
        super().__init__()
        self.field = field

    def forward(self, x):
        return self.field.energy(x)


def test_ig_load_rebuilds_a_gradrnn_from_a_fit_run(tmp_path):
    torch.manual_seed(0)
    rnn = ig.GradRNN(2, 3, (6,), activation="tanh", batch_first=True, learn_h0=True)
    x = torch.randn(8, 5, 2)
    loaded = _fit_and_load(rnn, x, torch.randn(8, 5), tmp_path / "rnn")
    assert loaded.batch_first and loaded.h0 is not None
    assert torch.equal(loaded(x)[0], rnn.eval()(x)[0])


def test_ig_load_rebuilds_a_gradrnn_from_a_cli_run(tmp_path):
    from innergrad.cli import main

    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--n-sequences", "8", "--seq-len", "4", "--input-size", "2",
                 "--hidden-size", "3", "--hidden-layers", "5", "--activation", "sin", "--epochs", "1",
                 "--batch-size", "4", "--no-report", "--quiet"]) == 0
    state, _ = ck.load_checkpoint(out)
    assert state["model_spec"]["kind"] == "GradRNN" and state["model_spec"]["activation"] == "sin"
    model = ig.load(out)
    assert isinstance(model, ig.GradRNN) and model.F.activation_name == "sin" and model.F.hidden_layers == (5,)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state["model"].items())


# ------------------------------------------------------------------------------- run identity (issue 24.5)


def test_fit_resume_compares_the_whole_spec_not_the_parameter_count(tmp_path):
    x, dx = spring()
    torch.manual_seed(0)
    ig.train.fit(ig.HamiltonianNet(2, (8,), activation="tanh"), x, dx, steps=2, out=tmp_path / "run", progress=False)
    other = ig.HamiltonianNet(2, (8,), activation="softplus")  # as many parameters, another model
    with pytest.raises(ValueError) as info:
        ig.train.fit(other, x, dx, steps=4, out=tmp_path / "run", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "another model: activation ('tanh' then, 'softplus' now)" in msg
    with pytest.raises(ValueError, match=r"hidden_layers \(\[8\] then, \[4, 2\] now\)"):
        ig.train.fit(ig.HamiltonianNet(2, (4, 2)), x, dx, steps=4, out=tmp_path / "run", progress=False)


def test_load_refuses_a_mode_for_a_model_without_one(tmp_path):
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    ig.train.fit(ig.MLP(3, (4,)), x, x.sum(1), steps=1, out=tmp_path / "mlp", progress=False)
    assert isinstance(ig.load(tmp_path / "mlp"), ig.MLP)
    with pytest.raises(ck.CheckpointError, match="has no mode setting; leave mode out"):
        ig.load(tmp_path / "mlp", mode="exact")


# ------------------------------------------------------------------------------- run folders of main aeb7002


EXPECTED = json.loads((DATA / "expected_aeb7002.json").read_text())


def test_cli_run_written_by_aeb7002_loads_with_its_outputs():
    model = ig.load(DATA / "run_cli_aeb7002")
    assert isinstance(model, ig.GradRNN) and model.h0 is not None and model.F.activation_name == "tanh"
    x = torch.tensor(EXPECTED["cli"]["x"])
    with torch.no_grad():
        y, h = model(x)
    assert torch.allclose(y, torch.tensor(EXPECTED["cli"]["y"]), rtol=1e-6, atol=1e-7)
    assert torch.allclose(h, torch.tensor(EXPECTED["cli"]["h_last"]), rtol=1e-6, atol=1e-7)


def test_cli_run_written_by_aeb7002_exports(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from innergrad.cli import main

    out = tmp_path / "old.onnx"
    assert main(["export", "--run", str(DATA / "run_cli_aeb7002"), "--out", str(out)]) == 0
    assert "largest relative difference" in capsys.readouterr().out


def test_fit_run_written_by_aeb7002_resumes_exactly_and_then_loads(tmp_path):
    run = tmp_path / "old"
    shutil.copytree(DATA / "run_fit_aeb7002", run)
    with pytest.raises(ck.CheckpointError, match="records no spec of its model .*HamiltonianNet"):
        ig.load(run)  # innergrad 0.1's fit recorded no spec
    x, dx = (np.array(EXPECTED["fit"][k], dtype=np.float32) for k in ("data_x", "data_dx"))
    torch.manual_seed(0)
    fresh = ig.HamiltonianNet(2, (4,), activation="softplus")  # as the old run was made
    ig.train.fit(fresh, x, dx, steps=4, lr=1e-2, progress=False)
    again = ig.HamiltonianNet(2, (4,), activation="softplus")
    assert ig.train.fit(again, x, dx, steps=4, lr=1e-2, out=run, progress=False).status == "completed"
    assert same_weights(again, fresh)
    loaded = ig.load(run)  # the resumed run's new checkpoint records the spec
    assert same_weights(loaded, fresh)


def test_fit_run_written_by_aeb7002_keeps_its_old_weights():
    state, _ = ck.load_checkpoint(DATA / "run_fit_aeb7002")
    model = ig.HamiltonianNet(2, (4,), activation="softplus")
    model.load_state_dict(state["model"])
    with torch.no_grad():
        got = model(torch.tensor(EXPECTED["fit"]["x"]))
    assert torch.allclose(got, torch.tensor(EXPECTED["fit"]["dxdt"]), rtol=1e-6, atol=1e-7)


def test_load_refuses_a_checkpoint_of_another_model_than_the_run_records(tmp_path):
    x, dx = spring()
    ig.train.fit(ig.HamiltonianNet(2, (8,), activation="tanh"), x, dx, steps=1, out=tmp_path / "a", progress=False)
    ig.train.fit(ig.HamiltonianNet(2, (8,), activation="sin"), x, dx, steps=1, out=tmp_path / "b", progress=False)
    other = ck.list_checkpoints(tmp_path / "b")[0][1]
    with pytest.raises(ModelSpecError) as info:
        ig.load(tmp_path / "a", checkpoint=other)
    msg = str(info.value)
    assert "\n" not in msg
    assert "another model: activation ('tanh' in the run's config.json, 'sin' here)" in msg
    own = ck.list_checkpoints(tmp_path / "a")[0][1]
    assert spec_of(ig.load(tmp_path / "a", checkpoint=own))["activation"] == "tanh"
    # a run of innergrad 0.1 records its GradRNN without a kind: still the same model as its checkpoint's
    old = DATA / "run_cli_aeb7002"
    assert isinstance(ig.load(old, checkpoint=ck.list_checkpoints(old)[0][1]), ig.GradRNN)


def test_cli_run_written_by_aeb7002_resumes_and_then_records_the_full_spec(tmp_path):
    from innergrad.cli import main

    run = tmp_path / "old"
    shutil.copytree(DATA / "run_cli_aeb7002", run)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-report", "--quiet"]) == 0
    state, _ = ck.load_checkpoint(run)
    assert state["trainer"]["step"] == 4 and state["model_spec"]["kind"] == "GradRNN"
    assert isinstance(ig.load(run), ig.GradRNN)


SECOND_ORDER = [lambda: ig.LagrangianNet(2, (8,), init="lnn"), lambda: ig.DissipativeHNN(2, (8,))]


@pytest.mark.parametrize("make", SECOND_ORDER)
def test_ig_load_rebuilds_second_order_models_from_fit_runs(tmp_path, make):
    x, dx = spring()
    torch.manual_seed(0)
    model = make()
    loaded = _fit_and_load(model, x, dx, tmp_path / "run")
    xt = torch.from_numpy(x[:4])
    assert torch.equal(loaded(xt), model.eval()(xt))


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_a_fit_run_of_a_dissipative_hnn_exports_through_the_cli(tmp_path, capsys, suffix):
    if suffix == ".onnx":
        pytest.importorskip("onnxruntime")
    from innergrad.cli import main

    x, dx = spring()
    ig.train.fit(ig.DissipativeHNN(2, (8,)), x, dx, steps=1, out=tmp_path / "run", progress=False)
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / f"d{suffix}")]) == 0
    said = capsys.readouterr().out
    assert "DissipativeHNN dim=2" in said and "largest relative difference" in said


@pytest.mark.parametrize("command", ["eval", "predict", "check", "report"])
def test_sequence_commands_refuse_a_fit_run_in_one_line(tmp_path, capsys, command):
    from innergrad.cli import main

    x, dx = spring()
    ig.train.fit(ig.HamiltonianNet(2, (4,)), x, dx, steps=1, out=tmp_path / "run", progress=False)
    extra = ["--data", str(tmp_path / "none.npz"), "--out", str(tmp_path / "y.npz")] if command == "predict" else []
    assert main([command, "--run", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "a run of ig.train.fit, not of `innergrad train`" in err and "ig.load(run)" in err
