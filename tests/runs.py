"""Helpers shared by the training and fault tests."""

import json
from pathlib import Path


def metrics_records(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl without the wall-clock fields, so two runs' records compare exactly."""
    out = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for volatile in ("elapsed", "steps_per_s"):
            r.pop(volatile, None)
        out.append(r)
    return out
