"""sequence_trainer, config, checkpoints (round trip, atomicity, fallback), exact resume, signals, divergence."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch

import innergrad as ig
from innergrad.core.backends import AUTO_ORDER, BACKENDS, AutogradBackend, register_backend
from innergrad.core.errors import InnergradError
from innergrad.data.sequences import SequenceData, synthetic_data
from innergrad.train import TrainConfig, TrainingDiverged, check_model, masked_metrics, predict, read_config_file
from innergrad.train import _checkpoint as ck
from innergrad.train._build import sequence_trainer

from .runs import metrics_records

TINY = dict(n_sequences=24, seq_len=6, input_size=2, hidden_size=4, hidden_layers=(8,), epochs=3, batch_size=8,
            lr=1e-2)


def tiny(**kw) -> TrainConfig:
    return TrainConfig.from_mapping({**TINY, **kw})


def params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------- config


def test_config_defaults_are_the_documented_learner():
    c = TrainConfig()
    assert (c.hidden_size, c.hidden_layers, c.activation, c.mode, c.backend) == (32, (128, 128), "softplus",
                                                                                "exact", "auto")


def test_config_unknown_key_suggests():
    with pytest.raises(InnergradError, match=r"unknown setting 'hiden_size' \(did you mean 'hidden_size'\?\)"):
        TrainConfig.from_mapping({"hiden_size": 3})


@pytest.mark.parametrize(
    "values, match",
    [
        ({"epochs": "many"}, r"epochs must be an integer, got 'many'"),
        ({"epochs": 0}, r"epochs must be >= 1, got 0"),
        ({"lr": -1.0}, r"lr must be a positive number"),
        ({"lr": True}, r"lr must be a number"),
        ({"mode": "half"}, r"mode must be 'exact' or 'detached'"),
        ({"backend": "magic"}, r"backend must be one of \['auto'"),
        ({"activation": "swish"}, r"activation must be one of"),
        ({"val_fraction": 1.0}, r"val_fraction must be between 0 and 1"),
        ({"hidden_layers": [0]}, r"hidden_layers must be one or more positive widths"),
        ({"hidden_layers": "a,b"}, r"hidden_layers must be a list of integer widths"),
        ({"tbptt": -2}, r"tbptt must be >= 0"),
        ({"keep_checkpoints": 1}, r"keep_checkpoints must be >= 2"),
        ({"learn_h0": "maybe"}, r"learn_h0 must be true or false"),
    ],
)
def test_config_bad_values(values, match):
    with pytest.raises(InnergradError, match=match):
        TrainConfig.from_mapping(values)


def test_config_hidden_layers_forms():
    for v in ([64, 32], (64, 32), "64,32", "64 32", ["64", "32"], ["64,32"]):
        assert TrainConfig.from_mapping({"hidden_layers": v}).hidden_layers == (64, 32)


def test_config_files(tmp_path):
    t = tmp_path / "c.toml"
    t.write_text('epochs = 7\nhidden_layers = [16, 16]\nmode = "detached"\n')
    assert read_config_file(t) == {"epochs": 7, "hidden_layers": [16, 16], "mode": "detached"}
    j = tmp_path / "config.json"
    j.write_text(json.dumps({"train": {"epochs": 5}, "model": {}}))
    assert read_config_file(j) == {"epochs": 5}
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3")
    with pytest.raises(InnergradError, match=r"bad.toml: invalid TOML"):
        read_config_file(bad)
    with pytest.raises(InnergradError, match=r"config files must end in .toml or .json"):
        read_config_file(_touch(tmp_path / "c.yaml"))
    with pytest.raises(InnergradError, match=r"config file not found"):
        read_config_file(tmp_path / "nope.toml")


def _touch(p):
    p.write_text("x")
    return p


# ------------------------------------------------------------------------------- metrics


def test_masked_metrics_ignores_padding():
    y = np.array([[1.0, 2.0, 99.0], [3.0, 5.0, 7.0]])
    p = np.array([[1.0, 3.0, -99.0], [3.0, 5.0, 6.0]])
    m = masked_metrics(y, p, np.array([2, 3]))
    yt = np.array([1.0, 2.0, 3.0, 5.0, 7.0])
    assert m["mse"] == pytest.approx(2.0 / 5)
    assert m["r2"] == pytest.approx(1 - 2.0 / ((yt - yt.mean()) ** 2).sum())
    assert m["n_steps"] == 5


# ------------------------------------------------------------------------------- checkpoints


def test_flatten_round_trip_of_nested_state():
    state = {
        "a": torch.arange(6.0).reshape(2, 3), "step": torch.tensor(3.0), "n": 4, "f": float("inf"), "none": None,
        "tup": (0.9, 0.999), "by_int": {0: {"m": torch.ones(2)}, 7: "x"}, "np": np.arange(5, dtype=np.uint32),
        "list": [1, torch.zeros(1, dtype=torch.uint8)], "__odd": 1,
    }
    raw = ck.encode_checkpoint(state)
    back = ck.decode_checkpoint(raw)
    assert torch.equal(back["a"], state["a"]) and back["step"].shape == ()
    assert back["tup"] == (0.9, 0.999) and back["by_int"][7] == "x"
    assert torch.equal(back["by_int"][0]["m"], torch.ones(2))
    assert back["np"].dtype == np.uint32 and back["np"].tolist() == [0, 1, 2, 3, 4]
    assert back["f"] == float("inf") and back["none"] is None and back["__odd"] == 1
    assert back["list"][1].dtype == torch.uint8


def test_checkpoint_is_safetensors_without_pickle(tmp_path):
    tr = sequence_trainer(tiny(), tmp_path / "run")
    path = tr.save_checkpoint()
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:  # a plain safetensors file: readable by any safetensors reader
        assert "model/cell.F.layers.0.weight" in f.keys()
        assert f.metadata()["format"] == ck.FORMAT
    assert b"\x80\x04" not in path.read_bytes()[:16]  # no pickle protocol header


def test_checkpoint_round_trip_bit_identical(tmp_path):
    run = tmp_path / "run"
    tr = sequence_trainer(tiny(), run)
    for _ in range(3):
        tr.train_step()
    tr.save_checkpoint()
    tr2 = sequence_trainer(tiny(), run)
    assert tr2.resume() == 3
    assert_same_params(params(tr.model), params(tr2.model))
    o1, o2 = tr.optimizer.state_dict(), tr2.optimizer.state_dict()
    for i in o1["state"]:
        for k in o1["state"][i]:
            assert torch.equal(o1["state"][i][k], o2["state"][i][k])
    assert o1["param_groups"] == o2["param_groups"]
    loaded = ig.load(run)
    assert isinstance(loaded, ig.GradRNN) and not loaded.training
    assert_same_params(params(tr.model), params(loaded))


def test_atomic_save_keeps_previous_and_leaves_no_temp_files(tmp_path):
    run = tmp_path / "run"
    tr = sequence_trainer(tiny(), run)
    for _ in range(4):
        tr.train_step()
        tr.save_checkpoint()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-00000003.safetensors", "step-00000004.safetensors"]


def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path):
    run = tmp_path / "run"
    tr = sequence_trainer(tiny(), run)
    tr.train_step()
    tr.save_checkpoint()
    good = params(tr.model)
    tr.train_step()
    newest = tr.save_checkpoint()
    newest.write_bytes(newest.read_bytes()[:1000])  # cut short, as by a crash on a non-atomic file system
    with pytest.warns(UserWarning, match="skipped unreadable checkpoint"):
        model = ig.load(run)
    assert_same_params(good, params(model))


def test_load_errors(tmp_path):
    with pytest.raises(ck.CheckpointError, match="no such run folder or checkpoint file"):
        ig.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ck.CheckpointError, match="no checkpoints found"):
        ig.load(tmp_path / "empty")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}     ")
    with pytest.raises(ck.CheckpointError, match="damaged checkpoint"):
        ig.load(bad)


# ------------------------------------------------------------------------------- exact resume


def _ragged_npz(tmp_path):
    d = synthetic_data(20, 7, 2, seed=1)
    lengths = np.random.default_rng(0).integers(3, 8, 20)
    path = tmp_path / "ragged.npz"
    np.savez(path, x=d.x, y=d.y, lengths=lengths)
    return str(path)


@pytest.mark.parametrize("extra", [{}, {"tbptt": 3, "mode": "detached"}, {"data": "RAGGED", "tbptt": 4}])
def test_resume_equals_uninterrupted(tmp_path, extra):
    if extra.get("data") == "RAGGED":
        extra = {**extra, "data": _ragged_npz(tmp_path)}
    cfg = tiny(**extra)
    full = sequence_trainer(cfg, tmp_path / "full")
    s_full = full.fit()
    assert s_full["status"] == "completed"

    part = sequence_trainer(cfg, tmp_path / "part")
    s_part = part.fit(max_steps=4)
    assert s_part["status"] == "stopped" and s_part["step"] == 4
    torch.manual_seed(1234)  # resume must not depend on the process's RNG state
    again = sequence_trainer(cfg, tmp_path / "part")
    assert again.resume() == 4
    s_again = again.fit()
    assert s_again["step"] == s_full["step"] == full.total_steps
    assert_same_params(params(full.model), params(again.model))
    assert s_again["val_mse"] == s_full["val_mse"]
    assert metrics_records(tmp_path / "full") == metrics_records(tmp_path / "part")


def test_resume_rejects_changed_settings(tmp_path):
    tr = sequence_trainer(tiny(), tmp_path / "run")
    tr.fit(max_steps=2)
    other = sequence_trainer(tiny(lr=0.5), tmp_path / "run")
    with pytest.raises(InnergradError, match=r"made with other settings \{'lr'"):
        other.resume()


def test_resume_rejects_changed_data_file(tmp_path):
    path = _ragged_npz(tmp_path)
    sequence_trainer(tiny(data=path), tmp_path / "run").fit(max_steps=2)
    d = np.load(path)
    np.savez(path, x=d["x"], y=d["y"] + 1.0, lengths=d["lengths"])
    with pytest.raises(InnergradError, match=r"the data file changed since the run started"):
        sequence_trainer(tiny(data=path), tmp_path / "run").resume()


@pytest.fixture
def interactive_sigint():
    """SIGINT as in a terminal, also when pytest itself runs with SIGINT ignored (nohup, `cmd &`)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_sigint_checkpoints_and_resume_is_exact(tmp_path, interactive_sigint):
    cfg = tiny()
    full = sequence_trainer(cfg)
    full.fit()

    tr = sequence_trainer(cfg, tmp_path / "run")
    step = tr.train_step

    def step_then_interrupt():
        loss = step()
        if tr.step == 5:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C during step 5
        return loss

    tr.train_step = step_then_interrupt
    summary = tr.fit()
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT" and summary["step"] == 5
    assert ck.list_checkpoints(tmp_path / "run")[0][0] == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored

    again = sequence_trainer(cfg, tmp_path / "run")
    again.resume()
    again.fit()
    assert_same_params(params(full.model), params(again.model))


def test_diverged_loss_stops_with_a_clear_error(tmp_path):
    d = synthetic_data(16, 5, 2)
    d.y[:] = 1e20  # the squared error overflows float32: the loss becomes inf
    tr = sequence_trainer(tiny(), tmp_path / "run", data=d)
    with pytest.raises(TrainingDiverged, match=r"the loss became inf at step 0 .*Lower --lr"):
        tr.fit()


def test_trainer_python_use_without_run_folder():
    d = synthetic_data(20, 5, 3, seed=2)
    tr = sequence_trainer(tiny(epochs=1), data=d)
    s = tr.fit()
    assert s["run_dir"] is None and s["step"] == tr.total_steps and np.isfinite(s["val_mse"])
    y = predict(tr.model, SequenceData.from_arrays(d.x[:2]))
    assert y.shape == (2, 5)


def test_predict_rejects_wrong_input_size():
    tr = sequence_trainer(tiny(epochs=1))
    with pytest.raises(InnergradError, match=r"input_size 3 .* trained with input_size 2"):
        predict(tr.model, synthetic_data(4, 3, 3))


# ------------------------------------------------------------------------------- gradient checks


def test_check_model_passes_for_a_trained_model():
    tr = sequence_trainer(tiny(epochs=1))
    tr.fit()
    rows = check_model(tr.model, tr.task.val_data)
    assert rows and all(r["passed"] for r in rows), [r for r in rows if not r["passed"]]
    checks = {r["check"].split(" ")[0] for r in rows}
    assert {"gradcheck", "gradgradcheck", "exact", "detached"} <= checks


class _WrongGradBackend(AutogradBackend):
    """A deliberately wrong backend: its gradient is 1% too large."""

    name = "wrong_for_test"

    def value_and_grad(self, f, args, argnums, create_graph, keep_value_graph):
        v, g = super().value_and_grad(f, args, argnums, create_graph, keep_value_graph)
        return v, tuple(1.01 * t for t in g)


def test_check_model_catches_a_wrong_backend():
    register_backend(_WrongGradBackend())
    try:
        model = ig.GradRNN(2, 3, (8,))
        rows = check_model(model)
    finally:
        BACKENDS.pop("wrong_for_test")
        assert "wrong_for_test" not in AUTO_ORDER
    wrong = [r for r in rows if r["backend"] == "wrong_for_test"]
    assert wrong and any(not r["passed"] for r in wrong)
    assert all(r["passed"] for r in rows if r["backend"] != "wrong_for_test")
