"""innergrad: models whose forward pass contains the gradient of a learned scalar function."""

from ._impl.activations import ACTIVATIONS
from ._impl.backends import BACKENDS, Backend, backends, register_backend
from ._impl.checks import CouplingError, SecondOrderWarning
from ._impl.gradrnn import GradRNN, GradRNNCell
from ._impl.mlp import MLP
from ._impl.primitive import Gradient, divergence, grad, hvp, jvp, value_and_grad

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "Backend",
    "CouplingError",
    "GradRNN",
    "GradRNNCell",
    "Gradient",
    "MLP",
    "SecondOrderWarning",
    "backends",
    "divergence",
    "grad",
    "hvp",
    "jvp",
    "register_backend",
    "value_and_grad",
]
