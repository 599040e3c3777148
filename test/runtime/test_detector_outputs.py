"""An encoder that produces NaN or infinite values is a model error, named, not a score: the node
counts it and skips the frame. The encoder here is the tiny bundle's real ONNX with its `mu`
output multiplied by a constant (NaN, inf, or 1: the same scores as the unedited model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import synthetic_frames, tiny_bundle

from vae_ood_monitor.bundle import write_sums
from vae_ood_monitor.detector import ModelOutputError, OODDetector

onnx = pytest.importorskip("onnx", reason="editing an encoder's graph needs the onnx package")


def scaled_mu(bundle: Path, factor: float) -> Path:
    """`bundle` with its encoder's `mu` output multiplied by `factor` (checksums rewritten)."""
    path = bundle / "image.onnx"
    model = onnx.load(path)
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["mu_unscaled" if name == "mu" else name for name in node.output]
    graph.initializer.append(
        onnx.numpy_helper.from_array(np.array(factor, dtype=np.float32), "mu_factor")
    )
    graph.node.append(onnx.helper.make_node("Mul", ["mu_unscaled", "mu_factor"], ["mu"]))
    onnx.save(model, path)
    write_sums(bundle)
    return bundle


@pytest.mark.parametrize("factor", [float("nan"), float("inf")])
def test_non_finite_encoder_output_is_a_model_error(tmp_path, factor):
    detector = OODDetector.from_path(str(scaled_mu(tiny_bundle("bvae_tiny", tmp_path), factor)))
    with pytest.raises(ModelOutputError, match="encoder 'image' of bvae_tiny produced non-finite"):
        detector.score_frame(synthetic_frames(1)[0])


def test_finite_encoder_output_scores_as_before(tmp_path):
    frames = synthetic_frames(4)
    unedited = OODDetector.from_path(str(tiny_bundle("bvae_tiny", tmp_path / "a")))
    edited = OODDetector.from_path(str(scaled_mu(tiny_bundle("bvae_tiny", tmp_path / "b"), 1.0)))
    assert [edited.score_frame(f) for f in frames] == [unedited.score_frame(f) for f in frames]
