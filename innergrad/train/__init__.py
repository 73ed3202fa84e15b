"""Training: `fit`, the `Trainer` loop and its callbacks, run folders, checkpoints, distributed runs, reports.

```python
import innergrad as ig
hist = ig.train.fit(model, x, y, epochs=50, batch_size=64, out="runs/mine")
```

Names load on first use, so `import innergrad` does not pay for the training stack.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "fit": "fitting",
    "Trainer": "loop", "Task": "loop", "TrainingDiverged": "callbacks",
    "Callback": "callbacks", "Checkpointing": "callbacks", "EarlyStopping": "callbacks", "History": "callbacks",
    "LRSchedule": "callbacks", "MetricsLog": "callbacks", "NanPolicy": "callbacks", "ProgressBar": "callbacks",
    "RunFiles": "callbacks", "TensorBoardLogger": "callbacks",
    "LocalContext": "distributed", "DistContext": "distributed", "init_distributed": "distributed",
    "load": "checkpoint", "load_checkpoint": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
