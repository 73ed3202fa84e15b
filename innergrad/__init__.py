"""innergrad: models whose forward pass contains the gradient of a learned scalar function.

Explicit re-exports of the library (core, models); the application layers (`ig.train`, `ig.data`,
`ig.load`) load on first use, so that `import innergrad` costs little more than `import torch`.
The layers and where to add things: docs/architecture.md.
"""

from importlib import import_module as _import_module

from .core.activations import ACTIVATIONS
from .core.backends import BACKENDS, Backend, backends, register_backend
from .core.checks import CouplingError, SecondOrderWarning
from .core.errors import CheckFailed, InnergradError, ShapeError
from .core.mlp import MLP
from .core.primitive import (
    Gradient,
    divergence,
    grad,
    hessian,
    hvp,
    jvp,
    value_and_grad,
    value_grad_and_hessian,
)
from .core.settings import Settings, current_settings, settings
from .core.version import __version__

# Eager, not lazy: importing the subpackage `innergrad.export` binds its name on this package, so a
# lazy `ig.export` would become the module (not callable) after any `import innergrad.export...`.
from .export import export
from .models.compiled import CompileFallbackWarning, compile
from .models.conservative import ConservativeField
from .models.dissipative import DissipativeHNN
from .models.gradrnn import GradRNN, GradRNNCell
from .models.hamiltonian import HamiltonianNet
from .models.integrators import integrate, leapfrog, rk4, rollout
from .models.lagrangian import LagrangianNet
from .models.protocol import Program
from .models.registry import MODELS, register_model

#: Loaded on first access: name -> (module, attribute or None for the module itself).
_LAZY = {
    "train": ("innergrad.train", None),
    "data": ("innergrad.data", None),
    "load": ("innergrad.train", "load"),
    "metrics": ("innergrad.train.metrics", None),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'innergrad' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = _import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "Backend",
    "CheckFailed",
    "CompileFallbackWarning",
    "ConservativeField",
    "CouplingError",
    "DissipativeHNN",
    "GradRNN",
    "GradRNNCell",
    "Gradient",
    "HamiltonianNet",
    "InnergradError",
    "LagrangianNet",
    "MLP",
    "MODELS",
    "Program",
    "SecondOrderWarning",
    "Settings",
    "ShapeError",
    "__version__",
    "backends",
    "compile",
    "current_settings",
    "data",
    "divergence",
    "export",
    "grad",
    "hessian",
    "hvp",
    "integrate",
    "jvp",
    "leapfrog",
    "load",
    "metrics",
    "register_backend",
    "register_model",
    "rk4",
    "rollout",
    "settings",
    "train",
    "value_and_grad",
    "value_grad_and_hessian",
]
