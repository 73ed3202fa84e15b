"""The table of experiments: name -> class. A worker process rebuilds an experiment from its row.

Adding an experiment: its module (a subclass of `runner.Experiment`), one row here, a CLI entry in
cli/experiment.py, its tests.
"""

from __future__ import annotations

from .dhnn import DHNNDampedSpring
from .forces import ForcesData, MuellerBrownForces
from .hnn import HNNPaper
from .lnn import LNNDoublePendulum
from .own_data import HNNData, LNNData
from .runner import Experiment

EXPERIMENTS: dict[str, type[Experiment]] = {
    "hnn": HNNPaper,
    "hnn-data": HNNData,
    "lnn": LNNDoublePendulum,
    "lnn-data": LNNData,
    "dhnn": DHNNDampedSpring,
    "forces": MuellerBrownForces,
    "forces-data": ForcesData,
}


def build(name: str, options: dict) -> Experiment:
    """The experiment `name` with its options (checked by its constructor)."""
    return EXPERIMENTS[name](**options)
