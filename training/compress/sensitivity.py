"""Layer-by-layer sensitivity of a detector to pruning and to INT8, and the heterogeneous policy
it suggests (per-layer pruning ratios and precisions), in the spirit of Galen.

Pruning: one layer at a time loses `ratio` of its channels / neurons (no fine-tuning); the score is
refitted on calibration latents as the pipeline would, so the AUROC drop measures how much
OOD-relevant information the layer's removed channels carried. Precision: the whole encoder in
INT8 except one layer kept in FP32; the AUROC it recovers over all-INT8 says how much that layer
suffers from quantization.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn
from tqdm import tqdm

from training.compress.candidates import SplitInputs, to_float, validation_auroc
from training.compress.distill import prune_encoder
from training.compress.quantize import quantize_int8
from training.export import export_encoder
from training.models import Encoder

SENSITIVE = 0.01  # AUROC change that counts as "this layer matters"
ROBUST = 0.003  # below this a layer takes the most aggressive setting


def prunable_layers(encoder: Encoder) -> list[str]:
    """Module names of the convolutions and hidden dense layers (the output head stays whole)."""
    return [
        name
        for name, module in encoder.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not name.startswith("head")
    ]


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str
    pruned_auroc: float  # this layer alone pruned by `ratio`
    int8_except_auroc: float  # everything INT8 but this layer
    parameters: int


def calibration_batches(
    inputs: SplitInputs, encoder_index: int, batches: int = 16, size: int = 16
) -> list[np.ndarray]:
    rows = np.concatenate([item.inputs[encoder_index] for item in inputs.calibration])
    picks = np.linspace(0, len(rows) - 1, batches * size).astype(int)
    return [to_float(rows[picks[i : i + size]]) for i in range(0, len(picks), size)]


def analyse(
    teachers: dict[str, Encoder],
    shapes: dict[str, tuple[int, int, int]],
    inputs: SplitInputs,
    work: Path,
    ratio: float = 0.5,
) -> tuple[float, list[LayerSensitivity]]:
    """All-INT8 AUROC and one row per layer (the same layer of every encoder of the detector)."""
    work.mkdir(parents=True, exist_ok=True)
    fp32 = {
        name: export_encoder(encoder, shapes[name], work / f"fp32_{name}.onnx")
        for name, encoder in teachers.items()
    }

    def int8(keep: tuple[str, ...], tag: str) -> dict[str, Path]:
        return {
            name: quantize_int8(
                path,
                work / f"int8_{tag}_{name}.onnx",
                calibration_batches(inputs, i),
                keep_fp32=keep,
            )
            for i, (name, path) in enumerate(fp32.items())
        }

    all_int8, _ = validation_auroc(int8((), "all"), inputs)
    layers = prunable_layers(next(iter(teachers.values())))
    rows = []
    for layer in tqdm(layers, desc="sensitivity", unit="layer"):
        pruned = {
            name: export_encoder(
                prune_encoder(encoder, shapes[name], 0.0, {layer: ratio}),
                shapes[name],
                work / f"prune_{layer}_{name}.onnx",
            )
            for name, encoder in teachers.items()
        }
        pruned_auroc, _ = validation_auroc(pruned, inputs)
        except_auroc, _ = validation_auroc(int8((layer,), layer), inputs)
        parameters = sum(
            p.numel()
            for encoder in teachers.values()
            for p in dict(encoder.named_modules())[layer].parameters()
        )
        rows.append(LayerSensitivity(layer, pruned_auroc, except_auroc, parameters))
    return all_int8, rows


@dataclass(frozen=True)
class Policy:
    layer_ratios: dict[str, float]
    keep_fp32: tuple[str, ...]


def propose_policy(
    reference_auroc: float,
    all_int8_auroc: float,
    rows: list[LayerSensitivity],
    ratios: tuple[float, float, float] = (0.5, 0.75, 0.875),
) -> Policy:
    """Prune robust layers hard, sensitive layers gently; keep in FP32 the layers whose FP32 copy
    recovers a noticeable share of the INT8 loss."""
    layer_ratios = {}
    for row in rows:
        drop = reference_auroc - row.pruned_auroc
        layer_ratios[row.layer] = (
            ratios[2] if drop <= ROBUST else ratios[1] if drop <= SENSITIVE else ratios[0]
        )
    keep = tuple(row.layer for row in rows if row.int8_except_auroc - all_int8_auroc >= ROBUST)
    return Policy(layer_ratios, keep)
