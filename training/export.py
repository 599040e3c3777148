"""Encoders to ONNX and bundles to disk (the format of vae_ood_monitor.bundle)."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from training.models import Encoder
from vae_ood_monitor.backends import POOLED_OUTPUT
from vae_ood_monitor.bundle import BUNDLE_FILE, FORMAT, write_sums
from vae_ood_monitor.decision import DecisionParams
from vae_ood_monitor.preprocessing import FlowPreprocessing, ImagePreprocessing
from vae_ood_monitor.scoring import LatentScore

OPSET = 17
MAX_CALIBRATION_SCORES = 4000  # enough for p-values down to 2.5e-4; keeps bundle.json small


def export_encoder(encoder: Encoder, input_shape: tuple[int, int, int], path: Path) -> Path:
    """ONNX with a dynamic batch axis, input `input`, outputs `mu`, `logvar` and `pooled`."""
    encoder.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            encoder, (dummy,), str(path), dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["mu", "logvar"],
            dynamic_axes={"input": {0: "batch"}, "mu": {0: "batch"}, "logvar": {0: "batch"}},
        )
    return add_pooled_output(path)


def add_pooled_output(path: Path) -> Path:
    """Give an exported encoder the output `pooled` (batch, Σ channels): the spatial mean of every
    conv block's output (each block ends in a MaxPool), for the ``mahalanobis_pooled`` score
    (vae_ood_monitor.scoring). Works on encoders exported before the output existed, so shipped
    models gain it without retraining; an encoder that has it already is left as it is."""
    model = onnx.load(str(path))
    graph = model.graph
    if any(o.name == POOLED_OUTPUT for o in graph.output):
        return path
    block_ends = [node.output[0] for node in graph.node if node.op_type == "MaxPool"]
    if not block_ends:
        raise ValueError(f"{path}: no MaxPool node, so no conv block outputs to pool")
    pooled = []
    for index, tensor in enumerate(block_ends):
        graph.node.extend([
            helper.make_node("GlobalAveragePool", [tensor], [f"/pooled/mean_{index}"]),
            helper.make_node("Flatten", [f"/pooled/mean_{index}"], [f"/pooled/flat_{index}"], axis=1),
        ])
        pooled.append(f"/pooled/flat_{index}")
    graph.node.append(helper.make_node("Concat", pooled, [POOLED_OUTPUT], axis=1))
    graph.output.append(helper.make_tensor_value_info(POOLED_OUTPUT, TensorProto.FLOAT, ["batch", None]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def write_bundle(
    path: Path,
    detector: str,
    preprocessing: ImagePreprocessing | FlowPreprocessing,
    encoder_files: dict[str, Path],
    score: LatentScore,
    calibration_scores: np.ndarray,
    decision: DecisionParams,
    provenance: dict[str, Any],
) -> Path:
    """Copy encoders into `path`, write bundle.json and SHA256SUMS."""
    path.mkdir(parents=True, exist_ok=True)
    names = {}
    for name, file in encoder_files.items():
        target = path / f"{name}.onnx"
        if file.resolve() != target.resolve():
            shutil.copyfile(file, target)
        names[name] = target.name
    scores = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    if scores.size > MAX_CALIBRATION_SCORES:  # evenly spaced order statistics keep the distribution
        scores = scores[np.linspace(0, scores.size - 1, MAX_CALIBRATION_SCORES).round().astype(int)]
    meta = {
        "format": FORMAT,
        "detector": detector,
        "preprocessing": preprocessing.to_dict(),
        "encoders": names,
        "score": score.to_dict(),
        "calibration_scores": [round(float(s), 6) for s in scores],
        "decision": decision.to_dict(),
        "provenance": {**provenance, "commit": git_commit()},  # the commit that wrote this bundle
    }
    (path / BUNDLE_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    write_sums(path)
    return path
