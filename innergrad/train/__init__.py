"""Training: the loop, run folders, checkpoints, distributed runs, reports."""
