"""Data sets and their preparation."""

from .trajectories import Trajectories, evaluate_expression, load_trajectories, time_derivative

__all__ = ["Trajectories", "evaluate_expression", "load_trajectories", "time_derivative"]
