"""innergrad: models whose forward pass contains the gradient of a learned scalar function."""

from .kernels import fused as _fused  # noqa: F401  (registers the whole-sequence "fused" backend)
from .core.activations import ACTIVATIONS
from .core.backends import BACKENDS, Backend, backends, register_backend
from .train.checkpoint import load
from .core.checks import CouplingError, SecondOrderWarning
from .models.compiled import CompileFallbackWarning, compile
from .models.conservative import ConservativeField
from .models.gradrnn import GradRNN, GradRNNCell
from .models.hamiltonian import HamiltonianNet
from .models.integrators import integrate, leapfrog, rk4, rollout
from .core.mlp import MLP
from .core.primitive import Gradient, divergence, grad, hvp, jvp, value_and_grad
from . import data
from .train import metrics

try:  # the fused "triton" backend registers itself when triton is installed (the `triton` extra)
    from .kernels import triton_rnn as _triton_rnn  # noqa: F401
except ImportError:
    pass

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "Backend",
    "CompileFallbackWarning",
    "ConservativeField",
    "CouplingError",
    "GradRNN",
    "GradRNNCell",
    "Gradient",
    "HamiltonianNet",
    "MLP",
    "SecondOrderWarning",
    "backends",
    "compile",
    "data",
    "divergence",
    "grad",
    "hvp",
    "integrate",
    "jvp",
    "leapfrog",
    "load",
    "metrics",
    "register_backend",
    "rk4",
    "rollout",
    "value_and_grad",
]
