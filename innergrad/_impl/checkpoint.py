"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically; no pickle.

A checkpoint is one `.safetensors` file. Its tensors are the leaves of a nested state (model
weights, optimizer moments, RNG states) under slash-separated keys; the rest of the state (step
counters, hyperparameters, the model's constructor arguments) is JSON in the file's metadata, with
each tensor replaced by a reference to its key. Loading parses JSON and raw tensor bytes, so it
never executes code, unlike `torch.load` of a pickle.

Files are written to a temporary name, fsync-ed, renamed over the final name (atomic on POSIX and
Windows) and the folder is fsync-ed; the previous checkpoint is deleted only after the new one is
in place, so a crash at any moment leaves at least one complete checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

FORMAT = "innergrad-checkpoint/1"
CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d+)\.safetensors$")


class CheckpointError(UserError):
    """A checkpoint or run folder that cannot be read."""


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


# ------------------------------------------------------------------------------- atomic files


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


_UMASK = _umask()


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to `path` via a temporary file in the same folder, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def write_json(path: str | Path, obj) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ------------------------------------------------------------------------------- checkpoints


def encode_checkpoint(state: dict) -> bytes:
    """The bytes of a checkpoint file for `state` (a nested dict of tensors and JSON-able values)."""
    from safetensors.torch import save

    tree, tensors = flatten_state(state)
    meta = {"format": FORMAT, "state": json.dumps(tree)}
    return save(tensors, metadata=meta)


def decode_checkpoint(raw: bytes, where: str = "<bytes>") -> dict:
    """Parse checkpoint bytes (safetensors header + JSON metadata); never executes code."""
    from safetensors.torch import load

    if len(raw) < 8:
        raise CheckpointError(f"{where}: truncated checkpoint ({len(raw)} bytes)")
    n = int.from_bytes(raw[:8], "little")
    try:
        header = json.loads(raw[8 : 8 + n])
        meta = header.get("__metadata__") or {}
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{where}: not an innergrad checkpoint (format {meta.get('format')!r})")
        tree = json.loads(meta["state"])
        tensors = load(raw)
    except CheckpointError:
        raise
    except Exception as e:  # any parse failure means a damaged file
        raise CheckpointError(f"{where}: damaged checkpoint ({type(e).__name__}: {e})") from None
    return unflatten_state(tree, tensors)


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


def load_checkpoint(where: str | Path) -> tuple[dict, Path]:
    """Load a checkpoint file, or the newest readable one of a run folder: `(state, path)`, on the CPU.

    A damaged newest file (e.g. the machine died mid-write on a file system without atomic
    rename) is skipped with a warning in favour of the previous one.
    """
    p = Path(where)
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
    errors = []
    for c in candidates:
        try:
            state = decode_checkpoint(c.read_bytes(), str(c))
        except (CheckpointError, OSError) as e:
            errors.append(str(e))
            continue
        if errors:
            warnings.warn(f"skipped unreadable checkpoint(s): {'; '.join(errors)}; using {c}", stacklevel=2)
        return state, c
    raise CheckpointError("no readable checkpoint: " + "; ".join(errors))


# ------------------------------------------------------------------------------- the model


MODEL_KEYS = ("input_size", "hidden_size", "hidden_layers", "activation", "mode", "backend", "learn_h0")


def build_model(spec: dict, where: str = "checkpoint"):
    """A `GradRNN` from its constructor arguments (`MODEL_KEYS`), time-major."""
    from .gradrnn import GradRNN

    unknown = sorted(set(spec) - set(MODEL_KEYS))
    if unknown:
        raise CheckpointError(f"{where}: unknown model argument(s) {unknown}; expected {list(MODEL_KEYS)}")
    kw = dict(spec)
    kw["hidden_layers"] = tuple(int(w) for w in kw.get("hidden_layers", (128, 128)))
    try:
        return GradRNN(**kw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: cannot build the model from {spec}: {e}") from None


def load(run: str | Path, checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
         mode: str | None = None, backend: str | None = None):
    """The trained `GradRNN` of a run folder (newest checkpoint), in eval mode.

    ```python
    model = ig.load("runs/20250101-120000")
    y, h_last = model(x)          # x: (T, B, input_size), time-major like GradRNN's default
    ```

    **Arguments:** `run`: a run folder or a `.safetensors` checkpoint file; `checkpoint`: a specific
    file instead of the newest; `device`; `mode`, `backend`: override the trained model's settings
    (e.g. evaluate a detached-trained model in exact mode: the forward pass is the same).
    """
    state, path = load_checkpoint(checkpoint if checkpoint is not None else run)
    spec = dict(state.get("model_spec") or {})
    if not spec or "model" not in state:
        raise CheckpointError(f"{path}: has no model (missing 'model_spec' or 'model' entries)")
    if mode is not None:
        spec["mode"] = mode
    if backend is not None:
        spec["backend"] = backend
    model = build_model(spec, str(path))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit the model {spec}: {e}") from None
    return model.to(device).eval()


__all__ = [
    "CheckpointError", "FORMAT", "build_model", "decode_checkpoint", "encode_checkpoint", "flatten_state",
    "list_checkpoints", "load", "load_checkpoint", "save_checkpoint", "unflatten_state", "write_atomic",
    "write_json",
]
