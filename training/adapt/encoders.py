"""The students' encoders as torch modules again, fine-tuned on the new world without forgetting.

Shipped bundles hold ONNX only. Every encoder of this project exports to the same graph
(training.models.Encoder: conv blocks with BatchNorm folded into the conv, dense layers, a head),
so the torch encoder is rebuilt from the ONNX weights with identity BatchNorm and checked against
ONNX Runtime before anything trains.

Fine-tuning (`fine_tune`): on the new world's frames the student moves its (μ, logσ²) towards the
teacher's, which the student was distilled to match on the default world; on replayed
default-world frames it is anchored to its own shipped outputs, pooled conv features included,
because the shipped score's default-world components (training.adapt.scores) read exactly those.
Both terms are mean squared errors in units of standard deviations: the teacher's over the new
frames, and the shipped student's over the new and the replayed frames together (the few replayed
frames of one drive vary too little to be the unit). BatchNorm stays frozen (eval mode): the
folded statistics are the shipped ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch.nn import functional as F
from tqdm import tqdm

from training.device import CPU, Hardware
from training.export import BandMax, add_pooled_output, export_encoder
from training.models import Encoder, VAEConfig
from training.trainer import set_seeds
from vae_ood_monitor.backends import POOLED_OUTPUT, make_encoder
from vae_ood_monitor.bundle import Bundle
from vae_ood_monitor.preprocessing import FlowStacker, ImagePreprocessing

MATCH_TOLERANCE = 1e-3  # largest |torch − ONNX Runtime| accepted for a rebuilt encoder
ONNX_BATCH = 64


class EncoderRebuildError(ValueError):
    """An ONNX encoder that is not this project's Encoder graph; the message names the file."""


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def torch_encoder(path: Path) -> Encoder:
    """The torch Encoder whose export `path` is (BatchNorm as identity), checked against ORT."""
    model = onnx.load(str(path))
    weights = _initializers(model)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    if len(dims) != 3 or not convs or not gemms:
        raise EncoderRebuildError(f"{path}: not a conv + dense encoder graph")
    conv_w = [weights[n.input[1]] for n in convs]
    conv_b = [weights[n.input[2]] for n in convs]
    dense_w = [weights[n.input[1]] for n in gemms]
    dense_b = [weights[n.input[2]] for n in gemms]
    config = VAEConfig(
        in_channels=dims[0],
        height=dims[1],
        width=dims[2],
        conv_channels=tuple(w.shape[0] for w in conv_w),
        dense=tuple(w.shape[0] for w in dense_w[:-1]),
        latent=dense_w[-1].shape[0] // 2,
    )
    encoder = Encoder(config).eval()
    with torch.no_grad():
        for block, w, b in zip(encoder.features, conv_w, conv_b):
            conv, norm = block[0], block[1]
            conv.weight.copy_(torch.tensor(w))
            conv.bias.copy_(torch.tensor(b))
            norm.weight.fill_(1.0)
            norm.bias.zero_()
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)  # (x − 0) / √(1 − eps + eps) = x
        linears = [m for m in encoder.dense if isinstance(m, torch.nn.Linear)] + [encoder.head]
        for linear, w, b in zip(linears, dense_w, dense_b):
            linear.weight.copy_(torch.tensor(w))
            linear.bias.copy_(torch.tensor(b))
    probe = np.random.default_rng(0).random((2, *dims), dtype=np.float32)
    expected = make_encoder("onnxruntime", path, 1)(probe)
    with torch.no_grad():
        mu, logvar = encoder(torch.from_numpy(probe))
    gap = max(
        float(np.abs(mu.numpy() - expected["mu"]).max()),
        float(np.abs(logvar.numpy() - expected["logvar"]).max()),
    )
    if gap > MATCH_TOLERANCE:
        raise EncoderRebuildError(
            f"{path}: rebuilt encoder differs from the ONNX by {gap:.2g}; "
            "only training.models.Encoder exports can be adapted"
        )
    return encoder


def torch_features(
    encoder: Encoder, x: torch.Tensor, band_max: BandMax | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(μ, logσ², pooled) as the exported ONNX computes them (training.export.add_pooled_output):
    the spatial mean of every conv block's output, then the band maxima."""
    ends = []
    h = x
    for block in encoder.features[:-1]:  # the last module is the Flatten
        h = block(h)
        ends.append(h)
    mu, logvar = encoder.head(encoder.dense(encoder.features[-1](h))).chunk(2, dim=1)
    pooled = [end.mean(dim=(2, 3)) for end in ends]
    if band_max is not None:
        end = ends[band_max.block]
        first, last = band_max.rows(end.shape[2])
        for start, stop in itertools.pairwise(band_max.column_edges(end.shape[3])):
            bands = end[:, :, first:last, start:stop].reshape(*end.shape[:2], band_max.top, -1)
            pooled.append(bands.amax(dim=3).flatten(1))
    return mu, logvar, torch.cat(pooled, dim=1)


def bundle_band_max(bundle: Bundle) -> BandMax | None:
    """The band maxima a bundle's encoders export (provenance.pooled_band_max), if any."""
    text = bundle.provenance.get("pooled_band_max")
    return BandMax.parse(text) if text else None


def model_inputs(
    bundle: Bundle, frames: Iterable[np.ndarray], stamps_ns: Sequence[int]
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(frame index, encoder inputs) of a stream as the onboard detector forms them; the flow
    detector's first frames fill its stack and give none."""
    prep = bundle.preprocessing
    if isinstance(prep, ImagePreprocessing):
        for index, frame in enumerate(frames):
            yield index, {"image": prep(frame)}
        return
    stacker = FlowStacker(prep)
    for index, (frame, stamp) in enumerate(zip(frames, stamps_ns)):
        stacked = stacker.push(frame, stamp)
        if stacked is not None:
            yield index, {"horizontal": stacked[0], "vertical": stacked[1]}


def run_onnx(path: Path, rows: np.ndarray, threads: int = 2) -> dict[str, np.ndarray]:
    """ONNX Runtime outputs for every row, in batches."""
    encoder = make_encoder("onnxruntime", path, threads)
    parts = [encoder(rows[i : i + ONNX_BATCH]) for i in range(0, len(rows), ONNX_BATCH)]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


@dataclass
class TuneSet:
    """One encoder's training rows: new-world inputs with the teacher's (μ, logσ²), and replayed
    default-world inputs with the shipped student's (μ, logσ², pooled); `anchor_scale`: the
    shipped student's standard deviation of each over both sets of frames."""

    new: np.ndarray
    teacher: tuple[np.ndarray, np.ndarray]
    replay: np.ndarray
    anchor: tuple[np.ndarray, np.ndarray, np.ndarray]
    anchor_scale: tuple[np.ndarray, np.ndarray, np.ndarray]


def _scale(*values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.concatenate(values).std(axis=0) + 1e-3).float()


def _standardised_mse(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(a / scale, b / scale)


def fine_tune(
    encoder: Encoder,
    data: TuneSet,
    band_max: BandMax | None,
    epochs: int,
    checkpoint: Path,
    desc: str,
    hardware: Hardware = CPU,
    learning_rate: float = 1e-4,
    batch_size: int = 32,
    seed: int = 0,
) -> tuple[Encoder, list[dict[str, float]]]:
    """Fine-tune `encoder` (module docstring); resumes from `checkpoint` after every epoch."""
    set_seeds(seed)
    device = hardware.device
    encoder = encoder.to(device).eval()  # eval: BatchNorm frozen (identity), gradients still flow
    optimiser = torch.optim.Adam(encoder.parameters(), lr=learning_rate)
    history: list[dict[str, float]] = []
    start = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device)
        encoder.load_state_dict(state["encoder"])
        optimiser.load_state_dict(state["optimiser"])
        history, start = state["history"], state["epoch"]
    teacher = [torch.from_numpy(t).float() for t in data.teacher]
    anchor = [torch.from_numpy(t).float() for t in data.anchor]
    teacher_scale = [_scale(t) for t in data.teacher]
    anchor_scale = [torch.from_numpy(s + 1e-3).float() for s in data.anchor_scale]
    rng = np.random.default_rng(seed)
    for epoch in range(start, epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(data.new))
        sums = {"teacher": 0.0, "anchor": 0.0}
        batches = range(0, len(order), batch_size)
        for first in tqdm(batches, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False):
            rows = np.sort(order[first : first + batch_size])
            replay_rows = np.sort(rng.choice(len(data.replay), min(batch_size, len(data.replay))))
            x_new = torch.from_numpy(data.new[rows]).float().to(device)
            x_old = torch.from_numpy(data.replay[replay_rows]).float().to(device)
            mu, logvar, _ = torch_features(encoder, x_new, band_max)
            teacher_loss = sum(
                _standardised_mse(out, target[rows].to(device), scale.to(device))
                for out, target, scale in zip((mu, logvar), teacher, teacher_scale)
            )
            kept = torch_features(encoder, x_old, band_max)
            anchor_loss = sum(
                _standardised_mse(out, target[replay_rows].to(device), scale.to(device))
                for out, target, scale in zip(kept, anchor, anchor_scale)
            )
            optimiser.zero_grad()
            (teacher_loss + anchor_loss).backward()
            optimiser.step()
            sums["teacher"] += float(teacher_loss.detach()) * len(rows)
            sums["anchor"] += float(anchor_loss.detach()) * len(rows)
        history.append({k: round(v / len(order), 5) for k, v in sums.items()})
        tqdm.write(f"{desc} epoch {epoch + 1}: {history[-1]}")
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "encoder": encoder.state_dict(),
                "optimiser": optimiser.state_dict(),
                "history": history,
                "epoch": epoch + 1,
            },
            checkpoint,
        )
    return encoder.cpu().eval(), history


def onnx_input_shape(path: Path) -> tuple[int, int, int]:
    """(channels, height, width) an exported encoder takes."""
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims[1:])  # type: ignore[return-value]


def export_adapted(
    encoder: Encoder, input_shape: tuple[int, int, int], band_max: BandMax | None, path: Path
) -> Path:
    """ONNX of a fine-tuned encoder with the same outputs as the shipped one (pooled, bands),
    checked against the torch features it was trained with."""
    export_encoder(encoder, input_shape, path)
    if band_max is not None:
        add_pooled_output(path, band_max)
    probe = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch_features(encoder, probe, band_max)
    got = run_onnx(path, probe.numpy(), 1)
    for name, value in zip(("mu", "logvar", POOLED_OUTPUT), expected):
        gap = float(np.abs(got[name] - value.numpy()).max())
        if gap > MATCH_TOLERANCE:
            raise EncoderRebuildError(f"{path}: exported '{name}' differs from torch by {gap:.2g}")
    return path
