"""What the compression search measures for every candidate encoder set: validation AUROC through
the monitor's own scoring (score fitted on calibration, chosen on validation), file size, latency
side by side with the baseline, and peak memory of a process running it.

Inputs are decoded once per preprocessing and kept in memory (`SplitInputs`), so a candidate costs
only its ONNX Runtime passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.calibrate import fit_scores, select_score
from training.compress.perturb import Perturbations
from training.dataset import EpisodeInputs, episodes, load_inputs
from vae_ood_monitor.backends import POOLED_OUTPUT, make_encoder
from vae_ood_monitor.bundle import DETECTOR_ENCODERS
from vae_ood_monitor.preprocessing import FlowPreprocessing, ImagePreprocessing
from vae_ood_monitor.scoring import EncoderOutputs, Latents, concatenate_outputs

Preprocessing = ImagePreprocessing | FlowPreprocessing


def to_float(batch: np.ndarray) -> np.ndarray:
    """Stored inputs (uint8 images, float16 flows) to the float32 the encoders take."""
    if batch.dtype == np.uint8:
        return batch.astype(np.float32) / np.float32(255.0)
    return batch.astype(np.float32)


@dataclass
class SplitInputs:
    """Encoder inputs of the train, calibration and validation splits at one preprocessing."""

    preprocessing: Preprocessing
    train: list[EpisodeInputs]
    calibration: list[EpisodeInputs]
    validation: list[EpisodeInputs]
    # Perturbed copies appended to the training rows (training.compress.perturb), the same for
    # the teacher's and every student's inputs, so targets and student rows line up.
    perturbations: Perturbations | None = None

    @classmethod
    def load(
        cls, data: Path, prep: Preprocessing, train_stride: int, eval_stride: int, workers: int = 2
    ) -> SplitInputs:
        def split(name: str, stride: int) -> list[EpisodeInputs]:
            return load_inputs(
                episodes(data, name), prep, stride, workers, desc=f"{name} inputs {prep}"
            )

        return cls(
            prep,
            split("train", train_stride),
            split("calibration", eval_stride),
            split("validation", eval_stride),
        )

    def train_inputs(self, encoder_index: int) -> np.ndarray:
        rows = np.concatenate([item.inputs[encoder_index] for item in self.train])
        return (
            rows
            if self.perturbations is None
            else np.concatenate([rows, self.perturbations.apply(rows)])
        )

    def train_frames(self) -> list[tuple[str, int]]:
        return [(item.episode.name, int(f)) for item in self.train for f in item.frames]


def encode(
    onnx_files: dict[str, Path], item: EpisodeInputs, threads: int = 2, batch_size: int = 64
) -> Latents:
    latents = {}
    for index, (name, path) in enumerate(onnx_files.items()):
        encoder = make_encoder("onnxruntime", path, threads)
        rows = item.inputs[index]
        parts = [
            encoder(to_float(rows[i : i + batch_size])) for i in range(0, len(rows), batch_size)
        ]
        latents[name] = concatenate_outputs(
            [EncoderOutputs(p["mu"], p["logvar"], p.get(POOLED_OUTPUT)) for p in parts]
        )
    return latents


def validation_auroc(onnx_files: dict[str, Path], inputs: SplitInputs) -> tuple[float, str]:
    """Validation AUROC of the monitor's score for these encoders, and the score kind it chose."""
    calibration = [encode(onnx_files, item) for item in inputs.calibration]
    validation = [(encode(onnx_files, item), item.ood) for item in inputs.validation]
    chosen, _, table = select_score(fit_scores(calibration), validation)
    return table[chosen.name], chosen.name


def input_shapes(kind: str, prep: Preprocessing) -> dict[str, tuple[int, int, int]]:
    if isinstance(prep, ImagePreprocessing):
        return {"image": (3, prep.height, prep.width)}
    _, _, width, height = prep.crop
    return {name: (prep.stack, height, width) for name in DETECTOR_ENCODERS[kind]}


def files_size_mb(files: dict[str, Path]) -> float:
    return sum(p.stat().st_size for p in files.values()) / 1e6
