"""ig.train.fit on any module, its callbacks, its run folder (exact resume) and its signal handling."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import innergrad as ig
from innergrad.train import Callback, EarlyStopping, LRSchedule, NanPolicy, TensorBoardLogger
from innergrad.train import _checkpoint as ck
from innergrad.train._runs import lock_holder

from .runs import metrics_records


def spring(n=64, seed=0):
    """States of the spring H = (q^2 + p^2) / 2 and their time derivatives (p, -q), as numpy."""
    x = np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32)
    return x, np.stack([x[:, 1], -x[:, 0]], 1)


def small_hnn(seed=0):
    torch.manual_seed(seed)
    return ig.HamiltonianNet(2, (16,))


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class StopAt(Callback):
    """Stops the run after global step `n`, as a crash or a Ctrl-C would between two steps."""

    def __init__(self, n):
        self.n = n

    def on_step_end(self, trainer, loss):
        if trainer.step == self.n:
            trainer.should_stop = "stopped by the test"


def test_fit_hamiltonian_net_numpy_full_batch_loss_falls_tenfold():
    x, dx = spring()
    hist = ig.train.fit(small_hnn(), x, dx, steps=150, lr=1e-2)
    assert hist.status == "completed" and len(hist.losses) == 150 and hist.steps[-1] == 150
    assert hist.losses[-1] < hist.losses[0] / 10, (hist.losses[0], hist.losses[-1])


def test_fit_batch_first_gradrnn_minibatches_with_validation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, 2, generator=g)
    y = x.sum(-1).cumsum(1) / 3  # (B, T): a running sum, batch first
    torch.manual_seed(0)
    model = ig.GradRNN(2, 4, (8,), batch_first=True)
    assert model(x)[0].shape == y.shape
    seen = []

    class Sizes(Callback):
        def on_step_start(self, trainer):
            seen.append(trainer.step)

    hist = ig.train.fit(model, x[:32], y[:32], epochs=4, batch_size=8, lr=1e-2, val=(x[32:], y[32:]),
                        callbacks=[Sizes()])
    assert len(hist.losses) == 16 and seen == list(range(16))  # 4 minibatches per epoch
    assert [v["step"] for v in hist.val] == [4, 8, 12, 16]
    assert all(np.isfinite(v["loss"]) for v in hist.val)
    assert hist.val[-1]["loss"] < hist.val[0]["loss"]


def test_fit_dataloader_equals_the_same_batches_as_arrays():
    x, dx = spring(32)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(dx))
    a = small_hnn()
    ig.train.fit(a, torch.utils.data.DataLoader(ds, batch_size=8), epochs=2, lr=1e-2)
    b = small_hnn()
    opt = torch.optim.Adam(b.parameters(), lr=1e-2)
    for _ in range(2):
        for s in range(0, 32, 8):
            loss = torch.nn.functional.mse_loss(b(torch.from_numpy(x[s : s + 8])), torch.from_numpy(dx[s : s + 8]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert same(weights(a), weights(b))


def test_fit_adam_weight_decay_is_l2_and_adamw_is_decoupled():
    x, dx = spring(16)
    ref = small_hnn()
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        loss = torch.nn.functional.mse_loss(ref(torch.from_numpy(x)), torch.from_numpy(dx))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m = small_hnn()
    ig.train.fit(m, x, dx, steps=3, lr=1e-2, weight_decay=0.1)
    assert same(weights(m), weights(ref))
    w = small_hnn()
    ig.train.fit(w, x, dx, steps=3, lr=1e-2, weight_decay=0.1, optimizer="adamw")
    assert not same(weights(w), weights(ref))


def test_fit_callable_loss_gets_the_first_output_of_a_tuple():
    x = torch.randn(12, 3, 2)
    seen = []

    def loss(out, y):
        seen.append(out.shape)
        return (out - y).abs().mean()

    model = ig.GradRNN(2, 3, (4,), batch_first=True)
    ig.train.fit(model, x, torch.zeros(12, 3), steps=2, loss=loss)
    assert seen == [torch.Size([12, 3])] * 2


def test_fit_out_resumes_bit_identical_to_an_uninterrupted_run(tmp_path):
    x, dx = spring(48)
    kw = dict(epochs=3, batch_size=16, lr=1e-2, val=spring(16, seed=1))
    full_model = small_hnn()
    full = ig.train.fit(full_model, x, dx, out=tmp_path / "full", **kw)

    part_model = small_hnn()
    part = ig.train.fit(part_model, x, dx, out=tmp_path / "part", callbacks=[StopAt(4)], **kw)
    assert part.status == "stopped by the test" and len(part.losses) == 4
    assert ck.list_checkpoints(tmp_path / "part")[0][0] == 4
    torch.manual_seed(1234)  # resume must not depend on the process's RNG state
    again_model = small_hnn(seed=99)  # different initial weights: the checkpoint's must win
    again = ig.train.fit(again_model, x, dx, out=tmp_path / "part", **kw)
    assert again.status == "completed"
    assert same(weights(full_model), weights(again_model))
    assert again.losses == full.losses and again.val == full.val and again.steps == full.steps
    assert metrics_records(tmp_path / "full") == metrics_records(tmp_path / "part")
    cfg = json.loads((tmp_path / "part" / "config.json").read_text())
    assert cfg["fit"]["epochs"] == 3 and cfg["fit"]["model"].endswith("HamiltonianNet")
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["status"] == "completed"
    state, _ = ck.load_checkpoint(tmp_path / "part")
    assert same(state["model"], weights(full_model))


def test_fit_dataloader_resumes_mid_epoch_exactly(tmp_path):
    x, dx = spring(32)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(dx))
    full = small_hnn()
    h_full = ig.train.fit(full, torch.utils.data.DataLoader(ds, batch_size=8), epochs=2, lr=1e-2)
    ig.train.fit(small_hnn(), torch.utils.data.DataLoader(ds, batch_size=8), epochs=2, lr=1e-2,
                 out=tmp_path / "run", callbacks=[StopAt(6)])
    again = small_hnn(seed=5)
    h_again = ig.train.fit(again, torch.utils.data.DataLoader(ds, batch_size=8), epochs=2, lr=1e-2,
                           out=tmp_path / "run")
    assert same(weights(full), weights(again)) and h_again.losses == h_full.losses


def test_fit_says_when_a_shuffling_dataloader_cannot_resume_exactly(tmp_path):
    x, dx = spring(32)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(dx))
    kw = dict(epochs=2, lr=1e-2, out=tmp_path / "run")
    ig.train.fit(small_hnn(), torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True), callbacks=[StopAt(6)],
                 **kw)
    with pytest.warns(UserWarning, match="shuffling DataLoader.*order differs"):
        ig.train.fit(small_hnn(), torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True), **kw)


def test_fit_progress_lines_without_a_terminal(capsys):
    x, dx = spring(8)
    ig.train.fit(small_hnn(), x, dx, steps=20, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 10 and err[-1].startswith("step 20/20 (epoch 20): loss ")
    ig.train.fit(small_hnn(), x, dx, steps=20, progress=False)
    assert capsys.readouterr().err == ""


def test_fit_out_refuses_other_settings_and_foreign_folders(tmp_path):
    x, dx = spring(16)
    ig.train.fit(small_hnn(), x, dx, steps=2, out=tmp_path / "run")
    with pytest.raises(ValueError, match=r"other settings \{'lr'"):
        ig.train.fit(small_hnn(), x, dx, steps=4, lr=0.5, out=tmp_path / "run")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="holds other files"):
        ig.train.fit(small_hnn(), x, dx, steps=2, out=mine)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("kw, err, match", [
    (dict(), ValueError, "exactly one of steps"),
    (dict(steps=2, epochs=2), ValueError, "exactly one of steps"),
    (dict(steps=0), ValueError, "steps must be >= 1, got 0"),
    (dict(steps=2, seed=-1), ValueError, "seed must be >= 0, got -1"),
    (dict(steps=2, grad_clip=-1.0), ValueError, "grad_clip must be >= 0"),
    (dict(steps=2, lr_schedule="linear"), ValueError, "lr_schedule must be 'cosine' or 'constant', got 'linear'"),
    (dict(steps=2, on_nan="ignore"), ValueError, "on_nan must be 'stop' or 'skip'"),
    (dict(steps=2, batch_size=2.5), ValueError, "batch_size must be an integer, got 2.5"),
    (dict(steps=2, batch_size=0), ValueError, "batch_size must be"),
    (dict(steps=2, lr=float("nan")), ValueError, "lr must be"),
    (dict(steps=2, optimizer="rmsprop"), ValueError, "optimizer must be"),
    (dict(steps=2, loss="huber2"), ValueError, "loss must be one of"),
    (dict(steps=2, val=[1, 2, 3]), TypeError, "val must be"),
])
def test_fit_rejects_bad_arguments(kw, err, match):
    x, dx = spring(8)
    with pytest.raises(err, match=match):
        ig.train.fit(small_hnn(), x, dx, **kw)


def test_fit_rejects_mismatched_data():
    x, dx = spring(8)
    with pytest.raises(ValueError, match="inputs have 8 rows .* targets 7"):
        ig.train.fit(small_hnn(), x, dx[:7], steps=1)
    with pytest.raises(ValueError, match=r"output has shape \(8, 2\) but the targets \(8, 1\)"):
        ig.train.fit(small_hnn(), x, dx[:, :1], steps=1)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        ig.train.fit(lambda t: t, x, dx, steps=1)


def test_callback_hooks_run_in_order():
    calls = []

    class Rec(Callback):
        def on_train_start(self, trainer):
            calls.append("start")

        def on_step_start(self, trainer):
            calls.append(f"step_start {trainer.step}")

        def on_step_end(self, trainer, loss):
            calls.append(f"step_end {trainer.step}")

        def on_validation_end(self, trainer, metrics):
            calls.append(f"val {trainer.step} {sorted(metrics)}")

        def on_train_end(self, trainer, summary):
            calls.append(f"end {summary['status']}")

        def teardown(self, trainer):
            calls.append("teardown")

    x, dx = spring(8)
    ig.train.fit(small_hnn(), x, dx, epochs=2, batch_size=4, val=(x, dx), callbacks=[Rec()])
    assert calls == ["start", "step_start 0", "step_end 1", "step_start 1", "val 2 ['loss']", "step_end 2",
                     "step_start 2", "step_end 3", "step_start 3", "val 4 ['loss']", "step_end 4",
                     "end completed", "teardown"]


def test_early_stopping_and_lr_schedule():
    x, dx = spring(8)
    lrs = []

    class SeeLR(Callback):
        def on_step_end(self, trainer, loss):
            lrs.append(trainer.optimizer.param_groups[0]["lr"])

    hist = ig.train.fit(small_hnn(), x, dx, epochs=50, lr=1e-2, val=(x, dx + 100.0),
                        callbacks=[EarlyStopping(patience=2, min_delta=1e9), LRSchedule("cosine"), SeeLR()])
    assert hist.status.startswith("early stopping") and len(hist.losses) == 3
    assert lrs[0] == 1e-2 and lrs[1] < lrs[0]


def test_nan_policy_skip_and_stop():
    x, dx = spring(8)
    bad = dx.copy()
    bad[:] = np.inf
    with pytest.raises(ig.train.TrainingDiverged, match="the loss became inf at step 0"):
        ig.train.fit(small_hnn(), x, bad, steps=3)
    m = small_hnn()
    before = weights(m)
    hist = ig.train.fit(m, x, bad, steps=3, callbacks=[NanPolicy("skip")])
    assert hist.summary["skipped_steps"] == [0, 1, 2] and all(np.isnan(hist.losses))
    assert same(before, weights(m))  # no update from a skipped batch


def test_tensorboard_logger(tmp_path):
    pytest.importorskip("tensorboard")
    x, dx = spring(8)
    ig.train.fit(small_hnn(), x, dx, steps=10, callbacks=[TensorBoardLogger(tmp_path / "tb")], out=tmp_path / "r")
    assert any((tmp_path / "tb").iterdir())


# ------------------------------------------------------------------------------- signals (issue 13 item 5)


class SeeSigint(Callback):
    """Notes the SIGINT handler in force during each step."""

    def __init__(self, seen: list):
        self.seen = seen

    def on_step_end(self, trainer, loss):
        self.seen.append(signal.getsignal(signal.SIGINT))


def test_fit_restores_the_handlers_it_found():
    def mine(signum, frame):  # a handler the user installed before fit
        pass

    old_int, old_term = signal.signal(signal.SIGINT, mine), signal.getsignal(signal.SIGTERM)
    during = []
    try:
        x, dx = spring(8)
        ig.train.fit(small_hnn(), x, dx, steps=2, callbacks=[SeeSigint(during)])
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is old_term
        assert during and during[0] is not mine  # fit had its own while it ran
    finally:
        signal.signal(signal.SIGINT, old_int)


def test_fit_installs_no_sigint_handler_where_sigint_is_ignored():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job or under nohup
    during = []
    try:
        x, dx = spring(8)
        hist = ig.train.fit(small_hnn(), x, dx, steps=3, callbacks=[SeeSigint(during)])
        # A SIGINT now (e.g. the shell's Ctrl-C to its foreground job) is ignored, as the user chose.
        assert hist.status == "completed" and during == [signal.SIG_IGN] * 3
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.slow  # a second pytest process: ~30 s on a busy 2-core machine
def test_sigint_tests_pass_when_started_with_sigint_ignored(tmp_path):
    """The signal tests of this file, run by a pytest whose SIGINT is ignored (as `nohup` or `cmd &` do)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = textwrap.dedent("""
        import signal, sys
        import pytest
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-k",
                              "restores_the_handlers or no_sigint_handler or sigint_checkpoints",
                              "tests/test_fit.py", "tests/test_training.py"]))
    """)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"\b3 passed", proc.stdout), proc.stdout[-2000:]


def test_importing_every_train_submodule_keeps_fit_the_function():
    """`ig.train.fit` stays the function once the package's submodules are imported (none is named `fit`)."""
    import importlib
    import pkgutil

    import innergrad.train as train_pkg

    for mod in pkgutil.iter_modules(train_pkg.__path__):
        importlib.import_module(f"innergrad.train.{mod.name}")
    assert callable(ig.train.fit) and ig.train.fit.__name__ == "fit"


# ------------------------------------------------------------------------------- signals in the library (issue 24.9)


class SignalAt(Callback):
    """Sends `sig` to this process at the end of step `step` (as a user's Ctrl-C or `timeout` would)."""

    def __init__(self, step: int, sig=signal.SIGINT):
        self.at, self.sig = step, sig

    def on_step_end(self, trainer, loss):
        if trainer.step == self.at:
            signal.raise_signal(self.sig)


def _newest_step(run) -> int:
    return ck.list_checkpoints(run)[0][0]


def test_fit_saves_on_sigint_then_raises_keyboard_interrupt(tmp_path):
    x, dx = spring(16)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, also under nohup
    try:
        with pytest.raises(KeyboardInterrupt):
            ig.train.fit(small_hnn(seed=3), x, dx, steps=12, out=tmp_path / "run", callbacks=[SignalAt(5)])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, old)
    assert _newest_step(tmp_path / "run") == 5  # the step it was in finished and was saved
    assert lock_holder(tmp_path / "run") is None
    # ... and the run continues from there exactly as if never stopped.
    resumed = small_hnn(seed=3)
    ig.train.fit(resumed, x, dx, steps=12, out=tmp_path / "run")
    whole = small_hnn(seed=3)
    ig.train.fit(whole, x, dx, steps=12)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()))


def test_fit_with_handle_signals_false_leaves_sigint_to_python(tmp_path):
    x, dx = spring(16)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            ig.train.fit(small_hnn(), x, dx, steps=40, out=tmp_path / "run", callbacks=[SignalAt(5)],
                         handle_signals=False)
    finally:
        signal.signal(signal.SIGINT, old)
    assert _newest_step(tmp_path / "run") < 5  # no save of its own: the interrupt came at once


def test_fit_under_sigterm_saves_and_the_process_ends(tmp_path):
    """A script under `timeout` (SIGTERM), without a terminal: the checkpoint is written, then the process ends
    by the signal (it does not carry on with an undertrained model)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = textwrap.dedent(f"""
        import signal, sys, torch
        import innergrad as ig
        from innergrad.train import Callback
        from tests.test_fit import SignalAt, small_hnn, spring
        x, dx = spring(16)
        ig.train.fit(small_hnn(seed=3), x, dx, steps=12, out={str(tmp_path / "run")!r},
                     callbacks=[SignalAt(5, signal.SIGTERM)])
        print("carried on after SIGTERM")
    """)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, start_new_session=True)
    assert proc.returncode == -signal.SIGTERM, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "carried on" not in proc.stdout
    assert _newest_step(tmp_path / "run") == 5
    assert (tmp_path / "run" / "config.json").is_file() and lock_holder(tmp_path / "run") is None
