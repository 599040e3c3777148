"""Shared fixtures. No torch here: test/runtime/ runs on a robot (colcon test) without it."""

import importlib.util

import numpy as np
import pytest
from support import synthetic_frames

# The training tests need torch and the simulator's tooling; a robot has neither.
collect_ignore = [] if importlib.util.find_spec("torch") else ["training"]


@pytest.fixture
def frames() -> list[np.ndarray]:
    return synthetic_frames(12)
