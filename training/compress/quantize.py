"""Lower-precision ONNX encoders: INT8 static quantization (QDQ, per-channel) and FP16.

INT8 scales come from in-distribution inputs (calibration split), so the quantized encoder is
accurate where it matters — on the data the monitor must call normal.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16


class _Batches(CalibrationDataReader):
    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self._input_name = input_name
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return (
            None
            if batch is None
            else {self._input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        )


def quantize_int8(
    model: Path,
    out: Path,
    calibration: Iterable[np.ndarray],
    per_channel: bool = True,
    keep_fp32: Iterable[str] = (),
) -> Path:
    """Static INT8 (QDQ: QuantizeLinear/DequantizeLinear around int8 weights and activations),
    activations calibrated by percentile on `calibration` batches of model inputs; the layers of
    the torch modules named in `keep_fp32` (e.g. "features.1.0") stay in FP32 (mixed precision)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    prepared = out.with_suffix(".prep.onnx")
    quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
    graph = onnx.load(str(prepared)).graph
    input_name = graph.input[0].name
    excluded = [
        node.name for node in graph.node if any(f"/{module}/" in node.name for module in keep_fp32)
    ]
    try:
        quantize_static(
            str(prepared),
            str(out),
            _Batches(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": 99.99},
            nodes_to_exclude=excluded,
        )
    finally:
        prepared.unlink(missing_ok=True)
    return out


def convert_fp16(model: Path, out: Path) -> Path:
    """Weights and arithmetic in FP16, inputs and outputs kept FP32 (the runtime feeds float32)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(convert_float_to_float16(onnx.load(str(model)), keep_io_types=True), str(out))
    return out
