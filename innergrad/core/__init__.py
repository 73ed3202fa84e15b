"""The primitive (value and per-sample gradient of a scalar function), the backend registry, activations,
checks, MLP."""
