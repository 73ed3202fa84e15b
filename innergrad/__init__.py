"""innergrad: models whose forward pass contains the gradient of a learned scalar function."""

from ._impl import fused as _fused  # noqa: F401  (registers the whole-sequence "fused" backend)
from ._impl.activations import ACTIVATIONS
from ._impl.backends import BACKENDS, Backend, backends, register_backend
from ._impl.checkpoint import load
from ._impl.checks import CouplingError, SecondOrderWarning
from ._impl.compiled import CompileFallbackWarning, compile
from ._impl.conservative import ConservativeField
from ._impl.gradrnn import GradRNN, GradRNNCell
from ._impl.hamiltonian import HamiltonianNet
from ._impl.integrators import integrate, leapfrog, rk4, rollout
from ._impl.mlp import MLP
from ._impl.primitive import Gradient, divergence, grad, hvp, jvp, value_and_grad

try:  # the fused "triton" backend registers itself when triton is installed (the `triton` extra)
    from ._impl import triton_rnn as _triton_rnn  # noqa: F401
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
    "divergence",
    "grad",
    "hvp",
    "integrate",
    "jvp",
    "leapfrog",
    "load",
    "register_backend",
    "rk4",
    "rollout",
    "value_and_grad",
]
