"""Fixtures of the training tests: the small dataset, rendered by the real simulator."""

import json
from pathlib import Path

import pytest
from training_support import skip_without_simulator

from training.data.generate import generate


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> tuple[Path, dict]:
    """The "small" preset rendered by the real simulator once per test session (~30 s)."""
    skip_without_simulator()
    root = tmp_path_factory.mktemp("small")
    manifest_path = generate("small", root, progress=False)
    return root, json.loads(manifest_path.read_text())
