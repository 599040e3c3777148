"""Encoders to ONNX and bundles to disk (the format of vae_ood_monitor.bundle)."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from training.models import Encoder
from vae_ood_monitor.backends import POOLED_OUTPUT
from vae_ood_monitor.bundle import FORMAT, write_meta
from vae_ood_monitor.decision import DecisionParams
from vae_ood_monitor.preprocessing import FlowPreprocessing, ImagePreprocessing
from vae_ood_monitor.scoring import LatentScore

OPSET = 17
BAND_SHAPE = "/pooled/band_shape"  # (batch, channels, top bands, rest) of the band maxima's Reshape
MAX_CALIBRATION_SCORES = 4000  # enough for p-values down to 2.5e-4; keeps bundle.json small


def export_encoder(encoder: Encoder, input_shape: tuple[int, int, int], path: Path) -> Path:
    """ONNX with a dynamic batch axis, input `input`, outputs `mu`, `logvar` and `pooled`."""
    encoder.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            encoder,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["mu", "logvar"],
            dynamic_axes={"input": {0: "batch"}, "mu": {0: "batch"}, "logvar": {0: "batch"}},
        )
    return add_pooled_output(path)


@dataclass(frozen=True)
class BandMax:
    """Extra pooled features: the per-channel max of conv block `block`'s output over each of the
    `top` highest of `count` equal horizontal bands. A forward camera with a fixed pitch first sees
    an obstacle on the road ahead as a small blob near the horizon, which the spatial means dilute
    into the whole frame; the maxima of the top bands keep it. `skip`: the `top` bands start below
    the first `skip` (the sky); `columns`: the width split into that many near-equal windows, each
    with its own maxima (window-major), so a house at the side raises only its window's features.
    Written `BLOCK/TOP/COUNT[/COLUMNS[/SKIP]]` (docs/normal.md, Band maxima per window)."""

    block: int
    top: int
    count: int
    columns: int = 1
    skip: int = 0

    def __post_init__(self) -> None:
        if (
            self.block < 0
            or self.top < 1
            or self.columns < 1
            or self.skip < 0
            or self.skip + self.top > self.count
        ):
            raise ValueError(
                f"band max {self}: needs block >= 0, top >= 1, columns >= 1, skip >= 0 "
                "and skip + top <= count"
            )

    @classmethod
    def parse(cls, text: str) -> BandMax:
        try:
            numbers = [int(part) for part in text.split("/")]
            if not 3 <= len(numbers) <= 5:
                raise ValueError
        except ValueError:
            raise ValueError(
                "band max is BLOCK/TOP/COUNT[/COLUMNS[/SKIP]], whole numbers "
                f"(e.g. 1/3/8 or 1/3/8/3/3), got '{text}'"
            ) from None
        return cls(*numbers)

    def __str__(self) -> str:
        extra = (self.columns, self.skip) if self.skip else (self.columns,) * (self.columns > 1)
        return "/".join(str(n) for n in (self.block, self.top, self.count, *extra))

    def rows(self, height: int) -> tuple[int, int]:
        """The first and past-the-last row of the bands, of a block output `height` rows high."""
        per_band = height // self.count
        return self.skip * per_band, (self.skip + self.top) * per_band

    def column_edges(self, width: int) -> list[int]:
        """The windows' edges across a block output `width` columns wide (columns + 1 values)."""
        return [int(e) for e in np.linspace(0, width, self.columns + 1).round()]


def band_count(path: Path) -> int:
    """How many band maxima end an encoder's `pooled` output (channels × bands × column windows;
    0: none), read from the shape its band nodes reshape to and how many reshape to it
    (_band_max_nodes)."""
    graph = onnx.load(str(path)).graph
    windows = sum(node.op_type == "Reshape" and node.input[1] == BAND_SHAPE for node in graph.node)
    for initializer in graph.initializer:
        if initializer.name == BAND_SHAPE:
            _, channels, top, _ = numpy_helper.to_array(initializer)
            return int(channels * top * windows)
    return 0


def remove_pooled_output(model: onnx.ModelProto) -> None:
    """Drop the `pooled` output and the nodes that compute it
    (all named /pooled/..., then the Concat)."""
    outputs = [o for o in model.graph.output if o.name != POOLED_OUTPUT]
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    nodes = [
        n
        for n in model.graph.node
        if n.output[0] != POOLED_OUTPUT and not n.output[0].startswith("/pooled/")
    ]
    initializers = [i for i in model.graph.initializer if not i.name.startswith("/pooled/")]
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)


def _band_max_nodes(
    model: onnx.ModelProto, path: Path, block_ends: list[str], bands: BandMax
) -> str:
    """Nodes that compute `bands` from the block outputs;
    returns the name of their (batch, C·top) result."""
    if bands.block >= len(block_ends):
        raise ValueError(
            f"{path}: band max on conv block {bands.block}, "
            f"but the encoder has {len(block_ends)} (0..{len(block_ends) - 1})"
        )
    tensor = block_ends[bands.block]
    shapes = {
        v.name: v.type.tensor_type.shape
        for v in onnx.shape_inference.infer_shapes(model).graph.value_info
    }
    channels, height, width = (shapes[tensor].dim[axis].dim_value for axis in (1, 2, 3))
    if not channels or not height or height % bands.count:
        raise ValueError(
            f"{path}: conv block {bands.block} has {height} rows, "
            f"which {bands.count} equal bands do not divide"
        )
    if not width or bands.columns > width:
        raise ValueError(
            f"{path}: conv block {bands.block} has {width} columns, "
            f"too few for {bands.columns} column windows"
        )
    first, last = bands.rows(height)
    graph = model.graph
    graph.initializer.extend(
        [
            helper.make_tensor("/pooled/band_starts", TensorProto.INT64, [1], [first]),
            helper.make_tensor("/pooled/band_ends", TensorProto.INT64, [1], [last]),
            helper.make_tensor("/pooled/band_axes", TensorProto.INT64, [1], [2]),
            helper.make_tensor(BAND_SHAPE, TensorProto.INT64, [4], [0, channels, bands.top, -1]),
        ]
    )
    graph.node.append(
        helper.make_node(
            "Slice",
            [tensor, "/pooled/band_starts", "/pooled/band_ends", "/pooled/band_axes"],
            ["/pooled/band_rows"],
        )
    )
    if bands.columns == 1:
        return _window_max_nodes(graph, "/pooled/band_rows", "")
    edges = bands.column_edges(width)
    graph.initializer.append(helper.make_tensor("/pooled/column_axes", TensorProto.INT64, [1], [3]))
    flats = []
    for index, (start, end) in enumerate(itertools.pairwise(edges)):
        graph.initializer.extend(
            [
                helper.make_tensor(
                    f"/pooled/column_starts_{index}", TensorProto.INT64, [1], [start]
                ),
                helper.make_tensor(f"/pooled/column_ends_{index}", TensorProto.INT64, [1], [end]),
            ]
        )
        graph.node.append(
            helper.make_node(
                "Slice",
                [
                    "/pooled/band_rows",
                    f"/pooled/column_starts_{index}",
                    f"/pooled/column_ends_{index}",
                    "/pooled/column_axes",
                ],
                [f"/pooled/band_window_{index}"],
            )
        )
        flats.append(_window_max_nodes(graph, f"/pooled/band_window_{index}", f"_{index}"))
    graph.node.append(helper.make_node("Concat", flats, ["/pooled/band_flat"], axis=1))
    return "/pooled/band_flat"


def _window_max_nodes(graph: onnx.GraphProto, window: str, suffix: str) -> str:
    """Nodes that take the per-channel max of each band of `window` (batch, C, band rows, W);
    returns the name of their (batch, C·top) result."""
    graph.node.extend(
        [
            helper.make_node("Reshape", [window, BAND_SHAPE], [f"/pooled/band_split{suffix}"]),
            helper.make_node(
                "ReduceMax",
                [f"/pooled/band_split{suffix}"],
                [f"/pooled/band_max{suffix}"],
                axes=[3],
                keepdims=0,
            ),
            helper.make_node(
                "Flatten", [f"/pooled/band_max{suffix}"], [f"/pooled/band_flat{suffix}"], axis=1
            ),
        ]
    )
    return f"/pooled/band_flat{suffix}"


def add_pooled_output(path: Path, bands: BandMax | None = None) -> Path:
    """Give an exported encoder the output `pooled` (batch, features): the spatial mean of every
    conv block's output (each block ends in a MaxPool), then, with `bands`, their maxima (BandMax),
    for the pooled scores (vae_ood_monitor.scoring). Works on encoders exported before the output
    existed, so shipped models gain it without retraining. An encoder that has it already is left
    as it is, unless `bands` are asked for: then its `pooled` is built again with them."""
    model = onnx.load(str(path))
    graph = model.graph
    if any(o.name == POOLED_OUTPUT for o in graph.output):
        if bands is None:
            return path
        remove_pooled_output(model)
    block_ends = [node.output[0] for node in graph.node if node.op_type == "MaxPool"]
    if not block_ends:
        raise ValueError(f"{path}: no MaxPool node, so no conv block outputs to pool")
    pooled = []
    for index, tensor in enumerate(block_ends):
        graph.node.extend(
            [
                helper.make_node("GlobalAveragePool", [tensor], [f"/pooled/mean_{index}"]),
                helper.make_node(
                    "Flatten", [f"/pooled/mean_{index}"], [f"/pooled/flat_{index}"], axis=1
                ),
            ]
        )
        pooled.append(f"/pooled/flat_{index}")
    if bands is not None:
        pooled.append(_band_max_nodes(model, path, block_ends, bands))
    graph.node.append(helper.make_node("Concat", pooled, [POOLED_OUTPUT], axis=1))
    graph.output.append(
        helper.make_tensor_value_info(POOLED_OUTPUT, TensorProto.FLOAT, ["batch", None])
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
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
    write_meta(path, meta)
    return path
