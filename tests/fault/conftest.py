import os

import pytest

# The random-point trials: a few in CI, many with DISTBELIEF_FAULT_TRIALS=20 (the long mode).
TRIALS = int(os.environ.get("DISTBELIEF_FAULT_TRIALS", "6"))


@pytest.fixture(scope="session")
def trials() -> int:
    return TRIALS
