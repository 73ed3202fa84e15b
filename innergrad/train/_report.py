"""`report.md` and PNG plots for a finished run folder (matplotlib, headless Agg backend).

Everything is read back from the folder (`config.json`, `metrics.jsonl`, `summary.json`, the newest
checkpoint), so `innergrad report --run DIR` can redraw a report at any time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.errors import InnergradError
from ..core.files import write_atomic
from ..core.text import fmt
from ._checkpoint import load


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise InnergradError(
            "the report needs matplotlib; install the training extra: pip install 'innergrad[train]'"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: str | Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    out = []
    if p.is_file():
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def plot_losses(records: list[dict], path: Path, noise_floor: float | None = None) -> Path:
    plt = _plt()
    tr = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    va = [(r["step"], r["val_mse"]) for r in records if r.get("kind") == "val"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    if tr:
        ax.plot(*zip(*tr), lw=1.0, alpha=0.8, label="train MSE (10-step mean)")
    if va:
        ax.plot(*zip(*va), "o-", ms=3, lw=1.5, label="validation MSE")
    if noise_floor:
        ax.axhline(noise_floor, color="k", ls="--", lw=1, label=f"noise floor {noise_floor:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("mean squared error")
    ax.set_title("Loss curves")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_predictions(y_true: np.ndarray, y_pred: np.ndarray, lengths: np.ndarray, ids: list[str],
                     path: Path, n: int = 4) -> Path:
    plt = _plt()
    n = min(n, len(y_true))
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols / 1.4, 2.6 * rows), dpi=110, squeeze=False)
    for k in range(rows * cols):
        ax = axes[k // cols][k % cols]
        if k >= n:
            ax.axis("off")
            continue
        L = int(lengths[k])
        t = np.arange(L)
        ax.plot(t, y_true[k, :L], "o", ms=3, color="0.3", label="true y")
        ax.plot(t, y_pred[k, :L], "-", lw=1.6, color="C3", label="predicted y")
        ax.set_title(f"validation sequence {ids[k]}", fontsize=9)
        ax.set_xlabel("t")
        ax.grid(True, alpha=0.3)
        if k == 0:
            ax.legend(fontsize=8)
    fig.suptitle("Predicted vs true y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_hidden(hs: np.ndarray, lengths: np.ndarray, ids: list[str], path: Path, n_seq: int = 2,
                n_units: int = 6) -> Path:
    plt = _plt()
    n_seq = min(n_seq, len(hs))
    units = min(n_units, hs.shape[2])
    fig, axes = plt.subplots(1, n_seq, figsize=(4.6 * n_seq, 3.2), dpi=110, squeeze=False, sharey=True)
    for k in range(n_seq):
        ax = axes[0][k]
        L = int(lengths[k])
        for u in range(units):
            ax.plot(np.arange(L), hs[k, :L, u], lw=1.2, label=f"h[{u}]")
        ax.set_title(f"validation sequence {ids[k]}", fontsize=9)
        ax.set_xlabel("t")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("h_t = dF/dh")
    axes[0][-1].legend(fontsize=7, ncol=2, framealpha=0.85)
    fig.suptitle(f"Hidden-state trajectories (first {units} units)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(v, digits=4) -> str:
    if not isinstance(v, float):
        return fmt(v, "")
    return fmt(v, f".{digits}g" if abs(v) < 1e-3 or abs(v) >= 1e4 else f".{digits}f")


def _report_lines(run: Path, cfg, whole: dict, met: dict, summary: dict, floor) -> list[str]:
    """report.md as lines: result, model and data, settings, plots."""
    secs = summary.get("train_seconds")
    steps = summary.get("step")
    speed = f"{steps / secs:.1f}" if secs and steps else "-"
    spec = whole.get("model", {})
    backend = spec.get("backend")
    if backend == "auto" and whole.get("backend_used"):
        backend = f"auto ({whole['backend_used']})"
    data = whole.get("data", {})
    widths = " -> ".join(str(w) for w in [spec.get("input_size", 0) + spec.get("hidden_size", 0),
                                          *spec.get("hidden_layers", []), 1])
    lines = [
        f"# innergrad run report: `{run.name}`",
        "",
        "## Result",
        "",
        "| metric | value |",
        "|---|---|",
        f"| validation MSE | {_fmt(met['mse'])} |",
        f"| validation R^2 | {_fmt(met['r2'])} |",
    ]
    if floor is not None:
        lines.append(f"| noise floor (MSE of the true function) | {_fmt(floor)} |")
    lines += [
        f"| validation data | {met['n_sequences']} sequences, {met['n_steps']} steps |",
        f"| training time | {_fmt(secs, 3)} s ({steps} steps, {speed} steps/s) |",
        f"| status | {summary.get('status', 'unknown')} |",
        "",
        "## Model and data",
        "",
        f"- GradRNN: input {spec.get('input_size')}, hidden {spec.get('hidden_size')}, "
        f"F = MLP {widths} ({spec.get('activation')}), mode `{spec.get('mode')}`, backend `{backend}`.",
        f"- Data: {data.get('source')} ({data.get('n_sequences')} sequences of up to {data.get('seq_len')} "
        f"steps, input size {data.get('input_size')}); validation fraction {cfg.val_fraction}, seed {cfg.seed}.",
    ]
    if data.get("kind") == "synthetic":
        t = data.get("teacher", {})
        lines.append(
            f"- Built-in teacher: GradRNN with hidden {t.get('hidden_size')}, F layers "
            f"{t.get('hidden_layers')} ({t.get('activation')}); y standardised, noise std {data.get('noise')}."
        )
    lines += [
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | {'-' if v is None else v} |" for k, v in cfg.to_dict().items()],
        "",
        "## Plots",
        "",
        "![loss curves](loss.png)",
        "",
        "![predicted vs true y](predictions.png)",
        "",
        "![hidden-state trajectories](hidden.png)",
        "",
    ]
    return lines


def write_report(run_dir: str | Path, allow_changed_data: bool = False, say=None) -> Path:
    """Draw `loss.png`, `predictions.png`, `hidden.png` and write `report.md` for a run folder.

    The validation split is drawn again from the run's data file, which must be the one it trained on
    (`allow_changed_data` lets a changed file through, with a note to `say`).
    """
    from ._config import load_run_config
    from ._runs import check_data_unchanged, recorded_sha256
    from ._sequence_task import masked_metrics, predict, run_data

    run = Path(run_dir)
    cfg, whole = load_run_config(run)
    check_data_unchanged(cfg.data, recorded_sha256(whole), allow_changed_data, say)
    model = load(run)
    _, val = run_data(cfg).split(cfg.val_fraction, cfg.seed)
    y_pred, hs = predict(model, val, return_hidden=True)
    met = masked_metrics(val.y, y_pred, val.lengths)
    records = read_metrics(run)
    summary = {}
    if (run / "summary.json").is_file():
        summary = json.loads((run / "summary.json").read_text())
    floor = whole.get("data", {}).get("noise_floor_mse")

    plot_losses(records, run / "loss.png", floor)
    plot_predictions(val.y, y_pred, val.lengths, val.ids, run / "predictions.png")
    plot_hidden(hs, val.lengths, val.ids, run / "hidden.png")

    lines = _report_lines(run, cfg, whole, met, summary, floor)
    return write_atomic(run / "report.md", "\n".join(lines))


def compare_runs(run_dirs: list[str | Path], plot: str | Path | None = None, overwrite: bool = False) -> str:
    """A Markdown table of finished runs side by side (and, with `plot`, their validation curves: a new
    file, or with `overwrite` a replaced one, never a file of the runs; see `core/files.write_output`)."""
    from ..core.files import check_output, write_figure
    from ._config import load_run_config
    from ._runs import run_inputs

    inputs = [item for d in run_dirs for item in run_inputs(d)]
    if plot is not None:
        fmt = Path(plot).suffix.lower().lstrip(".")
        if fmt not in ("png", "pdf", "svg"):
            raise InnergradError(f"--plot {plot}: unknown image format {('.' + fmt) if fmt else '(no suffix)'!r}; "
                                 "name the file *.png, *.pdf or *.svg")
        check_output(plot, inputs=inputs, overwrite=overwrite, option="--plot")  # before reading the runs

    rows = ["| run | mode | val MSE | val R^2 | training time | steps/s |", "|---|---|---|---|---|---|"]
    curves = []
    for d in run_dirs:
        run = Path(d)
        cfg, _ = load_run_config(run)
        sp = run / "summary.json"
        if not sp.is_file():
            raise InnergradError(f"{run}: no summary.json; the run has not finished (continue it with --resume)")
        s = json.loads(sp.read_text())
        secs = s["train_seconds"]
        rows.append(f"| {run.name} | {cfg.mode} | {s['val_mse']:.4f} | {s['val_r2']:.4f} | {secs:.1f} s | "
                    f"{s['step'] / max(secs, 1e-9):.1f} |")
        curves.append((f"{run.name} ({cfg.mode})",
                       [(r["step"], r["val_mse"]) for r in read_metrics(run) if r.get("kind") == "val"]))
    if plot is not None:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
        for label, pts in curves:
            if pts:
                ax.plot(*zip(*pts), "o-", ms=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("validation MSE")
        ax.set_title("Validation MSE")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        try:
            write_figure(fig, plot, inputs=inputs, overwrite=overwrite, option="--plot")
        finally:
            plt.close(fig)
    return "\n".join(rows)


__all__ = ["compare_runs", "plot_hidden", "plot_losses", "plot_predictions", "read_metrics", "write_report"]
