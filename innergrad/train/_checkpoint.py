"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically; no pickle.

A checkpoint is one `.safetensors` file. Its tensors are the leaves of a nested state (model
weights, optimizer moments, RNG states) under slash-separated keys; the rest of the state (step
counters, hyperparameters, the model's constructor arguments) is JSON in the file's metadata, with
each tensor replaced by a reference to its key. Loading parses JSON and raw tensor bytes, so it
never executes code, unlike `torch.load` of a pickle.

Files are written to a temporary name, fsync-ed, renamed over the final name (atomic on POSIX and
Windows) and the folder is fsync-ed; the previous checkpoint is deleted only after the new one is
in place, so a crash at any moment leaves at least one complete checkpoint.

The metadata carries a SHA-256 of the JSON state and of every tensor byte, so a file cut short or
with a flipped bit is reported as damaged (naming the file) instead of loading wrong weights;
safetensors alone checks only the header's layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from ..core.errors import InnergradError
from ..core.files import fsync_dir, regular_file, write_atomic

FORMAT = "innergrad-checkpoint/1"
CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d+)\.safetensors$")


class CheckpointError(InnergradError):
    """A checkpoint or run folder that cannot be read."""


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint was unreadable, so an older one was used (the message names both)."""


# ------------------------------------------------------------------------------- state <-> (json, tensors)


def flatten_state(obj, prefix: str = "") -> tuple[object, dict[str, torch.Tensor]]:
    """Split a nested state into a JSON-able tree and a flat `{key: tensor}` dict.

    Tensors and numpy arrays become `{"__tensor__": key}` references; tuples and dicts with
    non-string keys (an optimizer's `state` is keyed by int) are tagged so `unflatten_state`
    rebuilds them exactly.
    """
    tensors: dict[str, torch.Tensor] = {}

    def sub(path: str, k) -> str:
        return f"{path}/{k}" if path else str(k)

    def enc(o, path: str):
        if isinstance(o, torch.Tensor):
            t = o.detach().to("cpu").contiguous().clone()
            tensors[path] = t
            return {"__tensor__": path}
        if isinstance(o, np.ndarray):
            a = np.ascontiguousarray(o)
            store = a.astype(np.int64) if a.dtype.kind in "u" and a.dtype.itemsize >= 2 else a
            tensors[path] = torch.from_numpy(store.copy())
            return {"__ndarray__": path, "dtype": str(a.dtype)}
        if isinstance(o, np.generic):
            return enc(o.item(), path)
        if isinstance(o, tuple):
            return {"__tuple__": [enc(v, sub(path, i)) for i, v in enumerate(o)]}
        if isinstance(o, list):
            return [enc(v, sub(path, i)) for i, v in enumerate(o)]
        if isinstance(o, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in o):
                return {k: enc(v, sub(path, k)) for k, v in o.items()}
            return {"__items__": [[enc(k, sub(path, f"key{i}")), enc(v, sub(path, k))]
                                  for i, (k, v) in enumerate(o.items())]}
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        if isinstance(o, torch.dtype):
            return {"__dtype__": str(o).removeprefix("torch.")}
        raise TypeError(f"cannot store a {type(o).__name__} in a checkpoint (at {path or 'the root'})")

    return enc(obj, prefix), tensors


def unflatten_state(tree, tensors: dict[str, torch.Tensor]):
    """Inverse of `flatten_state`."""

    def dec(o):
        if isinstance(o, list):
            return [dec(v) for v in o]
        if isinstance(o, dict):
            if "__tensor__" in o:
                return tensors[o["__tensor__"]]
            if "__ndarray__" in o:
                return tensors[o["__ndarray__"]].numpy().astype(np.dtype(o["dtype"]))
            if "__tuple__" in o:
                return tuple(dec(v) for v in o["__tuple__"])
            if "__items__" in o:
                return {dec(k): dec(v) for k, v in o["__items__"]}
            if "__dtype__" in o:
                return getattr(torch, o["__dtype__"])
            return {k: dec(v) for k, v in o.items()}
        return o

    return dec(tree)


# ------------------------------------------------------------------------------- checkpoints


def encode_checkpoint(state: dict) -> bytes:
    """The bytes of a checkpoint file for `state` (a nested dict of tensors and JSON-able values)."""
    from safetensors.torch import save

    tree, tensors = flatten_state(state)
    text = json.dumps(tree)
    raw = save(tensors, metadata={"format": FORMAT, "state": text})
    # Put the digest of (state JSON, tensor bytes) into the header. The tensors' offsets are relative
    # to the data section, so rewriting the header (padded with spaces to 8 bytes, as safetensors
    # does) leaves the file a valid safetensors file.
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    header["__metadata__"]["sha256"] = _digest(text, data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + data


def _digest(state_text: str, data: bytes) -> str:
    h = hashlib.sha256(state_text.encode())
    h.update(data)
    return h.hexdigest()


def decode_checkpoint(raw: bytes, where: str = "<bytes>") -> dict:
    """Parse checkpoint bytes (safetensors header + JSON metadata); never executes code."""
    from safetensors.torch import load

    if len(raw) < 8:
        raise CheckpointError(f"{where}: truncated checkpoint ({len(raw)} bytes, expected a safetensors file)")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise CheckpointError(
            f"{where}: truncated or damaged checkpoint (its header claims {n} bytes, the file has {len(raw)})"
        )
    try:
        header = json.loads(raw[8 : 8 + n])
        meta = header.get("__metadata__") or {}
    except Exception as e:  # not JSON: not a safetensors file, or a damaged one
        raise CheckpointError(
            f"{where}: damaged checkpoint or not a safetensors file (header: {type(e).__name__}: {e})"
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{where}: not an innergrad checkpoint (format {meta.get('format')!r}, expected {FORMAT!r}); "
            "give a file from a run folder's checkpoints/"
        )
    want = meta.get("sha256")
    if want is not None and _digest(meta.get("state", ""), raw[8 + n :]) != want:
        raise CheckpointError(
            f"{where}: damaged checkpoint (the SHA-256 of its contents does not match the one recorded when "
            "it was written: the file was truncated or altered)"
        )
    try:
        tree = json.loads(meta["state"])
        tensors = load(raw)
        return unflatten_state(tree, tensors)
    except Exception as e:  # any parse failure means a damaged file
        raise CheckpointError(f"{where}: damaged checkpoint ({type(e).__name__}: {e})") from None


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CKPT_DIR


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """`[(step, path), ...]` of the run's checkpoints, newest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write `checkpoints/step-<step>.safetensors` atomically; keep the newest `keep` (>= 2) files.

    The older files are removed only after the new one is durable, so the previous good
    checkpoint survives a crash during the write.
    """
    path = checkpoint_dir(run_dir) / f"step-{int(step):08d}.safetensors"
    write_atomic(path, encode_checkpoint(state))
    for _, old in list_checkpoints(run_dir)[max(2, int(keep)):]:
        try:
            old.unlink()
        except OSError:
            pass
    return path


def load_checkpoint(where: str | Path, skipped: list[tuple[Path, str]] | None = None) -> tuple[dict, Path]:
    """Load a checkpoint file, or the newest readable one of a run folder: `(state, path)`, on the CPU.

    A damaged newest file (e.g. the machine died mid-write on a file system without atomic
    rename, or the disk flipped a bit) is skipped in favour of the previous one, with a
    `CheckpointFallbackWarning`; pass a list as `skipped` to receive `(path, reason)` pairs instead.
    """
    state, _, path = read_checkpoint(where, skipped)
    return state, path


def read_checkpoint(where: str | Path, skipped: list[tuple[Path, str]] | None = None) -> tuple[dict, bytes, Path]:
    """Like `load_checkpoint`, also returning the file's bytes (to send to other processes)."""
    p = regular_file(where, "the checkpoint", CheckpointError)
    if p.is_file():
        candidates = [p]
    elif p.is_dir():
        candidates = [c for _, c in list_checkpoints(p)]
        if not candidates:
            raise CheckpointError(
                f"{p}: no checkpoints found (expected {CKPT_DIR}/step-*.safetensors); is this a run "
                "folder made by `innergrad train`?"
            )
    else:
        raise CheckpointError(f"{p}: no such run folder or checkpoint file")
    errors: list[tuple[Path, str]] = []
    for c in candidates:
        try:
            raw = regular_file(c, "the checkpoint", CheckpointError).read_bytes()
            state = decode_checkpoint(raw, str(c))
        except (CheckpointError, OSError) as e:
            errors.append((c, str(e)))
            continue
        if errors:
            if skipped is not None:
                skipped.extend(errors)
            else:
                warnings.warn(
                    f"skipped unreadable checkpoint(s): {'; '.join(m for _, m in errors)}; using the previous "
                    f"one, {c}", CheckpointFallbackWarning, stacklevel=3,
                )
        return state, raw, c
    fix = ("restore a checkpoint from a backup, or start a new run with --out" if p.is_dir()
           else "give another checkpoint file, or a run folder to use its newest readable one")
    raise CheckpointError("no readable checkpoint: " + "; ".join(m for _, m in errors) + f". To go on, {fix}")


def set_aside(path: str | Path) -> Path:
    """Rename a damaged checkpoint to `<name>.damaged` (kept for inspection; ignored from then on)."""
    path = Path(path)
    target = path.with_name(path.name + ".damaged")
    k = 1
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}.damaged-{k}")
    os.replace(path, target)
    fsync_dir(path.parent)
    return target


def remove_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete temporary files left by a write that a crash interrupted (`.step-*.tmp`); returns them."""
    d = checkpoint_dir(run_dir)
    gone = []
    if d.is_dir():
        for t in d.glob(".step-*.safetensors.*.tmp"):
            try:
                t.unlink()
                gone.append(t)
            except OSError:
                pass
    return gone


# ------------------------------------------------------------------------------- the model


def build_model(spec: dict, where: str = "checkpoint"):
    """The model a spec describes, through the model table (`models/registry.py`)."""
    from ..models.registry import build

    return build(spec, where)


def _no_spec(path: Path, state: dict) -> CheckpointError:
    config = state.get("config")
    name = config.get("model") if isinstance(config, dict) else None  # fit's record: the model's class
    if isinstance(name, str) and name:
        return CheckpointError(
            f"{path}: the run records no spec of its model ({name}): its class, or a module inside it such as a "
            "custom F, was not in innergrad's model table when it trained (or innergrad 0.1 wrote it); build the "
            "model yourself and load the weights: model.load_state_dict(ig.train.load_checkpoint(run)[0]"
            "['model']), or register the class (ig.register_model(MyModel)) before training")
    return CheckpointError(
        f"{path}: has no model (expected 'model_spec' and 'model' entries, as `innergrad train` and "
        "ig.train.fit(out=...) write)")


def _recorded_spec(run: str | Path) -> dict | None:
    """The model spec a run folder's config.json records (`innergrad train`: "model"; fit: "fit"."model_spec")."""
    try:
        cfg = json.loads((Path(run) / "config.json").read_text())
    except (OSError, ValueError):  # no run folder, or no readable config: nothing to compare with
        return None
    if not isinstance(cfg, dict):
        return None
    spec = cfg.get("model") if isinstance(cfg.get("model"), dict) else (cfg.get("fit") or {}).get("model_spec")
    return spec if isinstance(spec, dict) and spec else None


def load(run: str | Path, checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
         mode: str | None = None, backend: str | None = None):
    """The trained model of a run folder (newest checkpoint), rebuilt from its recorded spec, in eval mode.

    ```python
    model = ig.load("runs/20250101-120000")      # any model of the table: GradRNN, HamiltonianNet, ...
    y, h_last = model(x)          # a GradRNN from `innergrad train`: x (T, B, input_size), time-major
    ```

    **Arguments:** `run`: a run folder (of `innergrad train` or `ig.train.fit(out=...)`) or a
    `.safetensors` checkpoint file; `checkpoint`: a specific file instead of the newest; `device`;
    `mode`, `backend`: override the trained model's settings (e.g. evaluate a detached-trained model in
    exact mode: the forward pass is the same). A model of your own class needs
    `ig.register_model(MyModel)` first (in training and in loading).
    """
    state, path = load_checkpoint(checkpoint if checkpoint is not None else run)
    spec = state.get("model_spec") if isinstance(state, dict) else None
    if not isinstance(spec, dict) or not spec or not isinstance(state.get("model"), dict):
        raise _no_spec(path, state if isinstance(state, dict) else {})
    spec = dict(spec)
    for key, value in (("mode", mode), ("backend", backend)):
        if value is not None:
            if key not in spec:
                raise CheckpointError(f"{path}: {key}={value!r} cannot apply: the run's model "
                                      f"({spec.get('kind')}) has no {key} setting; leave {key} out")
            spec[key] = value
    model = build_model(spec, str(path))
    weights = state["model"]
    floats = [t.dtype for t in weights.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if floats:  # a float64-trained model stays float64
        model = model.to(floats[0])
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: the weights do not fit the model {spec}: {' '.join(str(e).split())}") from None
    recorded = _recorded_spec(run) if checkpoint is not None else None
    if recorded:  # a checkpoint from elsewhere: it must hold the model the run folder records
        from ..models.registry import check_same_model

        check_same_model(recorded, state["model_spec"], f"{path}: this checkpoint holds",
                         ("in the run's config.json", "here"), f"give a checkpoint of {run}, or the run folder it "
                         "belongs to")
    return model.to(device).eval()


__all__ = [
    "CheckpointError", "CheckpointFallbackWarning", "FORMAT", "build_model", "decode_checkpoint",
    "encode_checkpoint", "flatten_state", "list_checkpoints", "load", "load_checkpoint", "read_checkpoint",
    "remove_stale_temp_files", "save_checkpoint", "set_aside", "unflatten_state",
]
