import pytest
import torch

from innergrad.core import checks

# The tests use small networks, where a second intra-op thread costs more than it gains (and on a
# busy 2-core machine, far more).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_warning_registry():
    # SecondOrderWarning fires once per activation type per process; tests that check it need a clean slate.
    checks._warned.clear()
    yield


@pytest.fixture(autouse=True, scope="session")
def _cpu_kernel_built():
    # Build (or load) the fused backend's C++ kernel once, up front: the CLI subprocesses of later
    # tests then load the cached library instead of each paying the first build inside its timeout.
    from innergrad.kernels import cpu as cpu_kernel

    cpu_kernel.ops()
    yield
