import pytest
import torch

from innergrad._impl import checks

# The tests use small networks, where a second intra-op thread costs more than it gains (and on a
# busy 2-core machine, far more).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_warning_registry():
    # SecondOrderWarning fires once per activation type per process; tests that check it need a clean slate.
    checks._warned.clear()
    yield
