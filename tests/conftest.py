import pytest

from innergrad._impl import checks


@pytest.fixture(autouse=True)
def _fresh_warning_registry():
    # SecondOrderWarning fires once per activation type per process; tests that check it need a clean slate.
    checks._warned.clear()
    yield
