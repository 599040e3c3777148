"""Helpers of the training tests, and the builders of the tiny untrained bundles (torch).

The committed test/runtime/data bundles come from here: from the repository root,
`PYTHONPATH=. python test/training/training_support.py` rewrites them, and
test_committed_tiny_bundles_are_what_the_builders_make checks they still match.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support import synthetic_frames

from training.data.episodes import EpisodeInfo, EpisodeWriter
from training.data.generate import (
    DEFAULT_SIM_PYTHON,
    MANIFEST_FILE,
    dataset_sha256,
    manifest_entry,
)
from training.export import BandMax, add_pooled_output, export_encoder, write_bundle
from training.models import VAE, VAEConfig
from vae_ood_monitor.backends import make_encoder
from vae_ood_monitor.decision import DecisionParams
from vae_ood_monitor.preprocessing import FlowPreprocessing, ImagePreprocessing
from vae_ood_monitor.scoring import LatentScore

IMAGE_VAE = VAEConfig(height=32, width=32, conv_channels=(8, 8), dense=(32,), latent=6)
FLOW_PREP = FlowPreprocessing(width=80, height=60, crop=(8, 6, 64, 48), stack=3)
FLOW_VAE = VAEConfig(
    in_channels=3, height=48, width=64, conv_channels=(4, 4), dense=(16,), latent=4, output="tanh"
)


def build_image_bundle(
    path: Path, decision: DecisionParams = DecisionParams(window=4, threshold=7.0)
):
    """An untrained tiny β-VAE bundle (real ONNX, real checksums) and its torch model."""
    torch.manual_seed(0)
    model = VAE(IMAGE_VAE).eval()
    onnx = export_encoder(model.encoder, (3, 32, 32), path / "work" / "image.onnx")
    write_bundle(
        path / "bundle",
        "bvae",
        ImagePreprocessing(32, 32),
        {"image": onnx},
        LatentScore("kl", {"image": [0, 2, 5]}),
        np.linspace(0.0, 5.0, 50),
        decision,
        {"note": "test"},
    )
    return model, path / "bundle"


def banded_encoder(path: Path, bands: BandMax) -> tuple[torch.nn.Module, Path, Path]:
    """An untrained tiny β-VAE (build_image_bundle), its exported encoder and a copy of that with
    `bands` added to the `pooled` output."""
    model, bundle_dir = build_image_bundle(path)
    plain = bundle_dir / "image.onnx"
    return model, plain, add_pooled_output(Path(shutil.copy(plain, path / "b.onnx")), bands)


def band_features(
    path: Path, bands: BandMax, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray, Path, Path]:
    """(the band maxima `bands` add to the encoder's `pooled` output for a random batch of
    `count` frames, the torch output of their conv block for that batch, the plain and the banded
    ONNX). Asserts that μ, logσ² and the pooled block means do not move."""
    model, plain, banded = banded_encoder(path, bands)
    batch = np.random.default_rng(seed).random((count, 3, 32, 32), dtype=np.float32)
    before, after = (
        make_encoder("onnxruntime", plain)(batch),
        make_encoder("onnxruntime", banded)(batch),
    )
    for name in ("mu", "logvar"):
        np.testing.assert_array_equal(after[name], before[name])
    means = before["pooled"].shape[1]
    np.testing.assert_array_equal(after["pooled"][:, :means], before["pooled"])
    with torch.no_grad():
        block = model.encoder.features[: bands.block + 1](torch.from_numpy(batch)).numpy()
    return after["pooled"][:, means:], block, plain, banded


def build_flow_bundle(path: Path, decision: DecisionParams = DecisionParams()):
    """An untrained tiny optical-flow bundle."""
    torch.manual_seed(1)
    files = {
        name: export_encoder(
            VAE(FLOW_VAE).eval().encoder, (3, 48, 64), path / "work" / f"{name}.onnx"
        )
        for name in ("horizontal", "vertical")
    }
    write_bundle(
        path / "bundle",
        "flow",
        FLOW_PREP,
        files,
        LatentScore("kl", {"horizontal": [0, 1], "vertical": [2, 3]}),
        np.linspace(0.0, 3.0, 30),
        decision,
        {},
    )
    return path / "bundle"


SPLITS = ("train", "calibration", "validation", "test")


def write_dataset(
    root: Path, specs: list[tuple[str, str, float, int, int | None]], split: str = "test"
) -> Path:
    """A dataset of real bags (EpisodeWriter) of synthetic frames and its manifest: per spec
    (name, scenario, fps, frames, onset frame), in `split` unless the name starts with another
    split's name; an onset turns the frames black."""
    entries, splits = [], {}
    for name, scenario, fps, frames, onset in specs:
        part = next(
            (s for s in ("train", "calibration", "validation") if name.startswith(s)), split
        )
        path = root / part / name
        category = "id" if scenario == "id" else "sensor"
        info = EpisodeInfo(name, scenario, category, onset_frame=onset, fps=fps, map="synthetic")
        with EpisodeWriter(path, info) as writer:
            for i, rgb in enumerate(synthetic_frames(frames)):
                ood = onset is not None and i >= onset
                writer.add_frame(np.zeros_like(rgb) if ood else rgb, ood)
        entries.append(manifest_entry(path, part, name))
        splits.setdefault(part, []).append(name)
    manifest = {"dataset_sha256": dataset_sha256(entries), "splits": splits, "episodes": entries}
    (root / MANIFEST_FILE).write_text(json.dumps(manifest))
    return root


def skip_without_simulator() -> None:
    """Skip the calling test or fixture where the simulator venv is missing, saying how."""
    if not DEFAULT_SIM_PYTHON.exists():
        pytest.skip(f"simulator venv missing at {DEFAULT_SIM_PYTHON}: `make sim-venv` builds it")


def write_tiny_bundles(data: Path) -> None:
    """Rebuild test/runtime/data/{bvae_tiny,flow_tiny}."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        _, image = build_image_bundle(Path(work) / "image")
        flow = build_flow_bundle(Path(work) / "flow")
        for name, built in (("bvae_tiny", image), ("flow_tiny", flow)):
            shutil.rmtree(data / name, ignore_errors=True)
            shutil.copytree(built, data / name)


if __name__ == "__main__":  # run from the repository root: python test/training/training_support.py
    write_tiny_bundles(Path(__file__).resolve().parents[1] / "runtime" / "data")
