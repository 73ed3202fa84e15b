"""Training: `fit`, the `Trainer` loop and its callbacks, run folders, checkpoints, distributed runs.

```python
import innergrad as ig
hist = ig.train.fit(model, x, y, epochs=50, batch_size=64, out="runs/mine")
```

The modules here are private (`_trainer`, `_fit`, ...); the names below are the public ones.
`ig.train` itself loads on first use, so `import innergrad` does not pay for the training stack.
"""

from . import metrics
from ._build import make_optimizer, sequence_trainer, standard_callbacks
from ._callbacks import (
    Callback,
    Checkpointing,
    EarlyStopping,
    History,
    LRSchedule,
    MetricsLog,
    NanPolicy,
    ProgressBar,
    RunFiles,
    TensorBoardLogger,
    TrainingDiverged,
)
from ._checkpoint import CheckpointError, CheckpointFallbackWarning, load, load_checkpoint
from ._config import TrainConfig, read_config_file
from ._distributed import DistContext, init_distributed
from ._fit import fit
from ._gradcheck import check_model
from ._runs import RunFolder, RunFolderBusy, RunFolderError
from ._sequence_task import SequenceTask, evaluate, masked_metrics, predict
from ._trainer import LocalContext, Task, Trainer

__all__ = [
    "Callback", "CheckpointError", "CheckpointFallbackWarning", "Checkpointing", "DistContext", "EarlyStopping",
    "History", "LRSchedule", "LocalContext", "MetricsLog", "NanPolicy", "ProgressBar", "RunFiles", "RunFolder",
    "RunFolderBusy", "RunFolderError", "SequenceTask", "Task", "TensorBoardLogger", "TrainConfig", "Trainer",
    "TrainingDiverged", "check_model", "evaluate", "fit", "init_distributed", "load", "load_checkpoint",
    "make_optimizer", "masked_metrics", "metrics", "predict", "read_config_file", "sequence_trainer",
    "standard_callbacks",
]
