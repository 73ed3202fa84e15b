"""Models built on the primitive: the gradient-RNN and its sequence engines, HamiltonianNet,
ConservativeField, integrators."""

# The kernels register their backends ("fused"; "triton" where triton is installed) into core's
# registry here, where the models that run them are imported; core's AUTO_ORDER decides the order.
from ..kernels import fused as _fused  # noqa: F401

try:
    from ..kernels import triton_rnn as _triton_rnn  # noqa: F401
except ImportError:  # the `triton` extra is not installed
    pass
