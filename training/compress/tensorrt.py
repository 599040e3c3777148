"""TensorRT engines from bundle ONNX encoders — run this on the Jetson itself (engines are tied to
the GPU and TensorRT version they were built with).

    python -m training.compress.tensorrt models/bvae_student --precision fp16
    python -m training.compress.tensorrt models/bvae_student --precision int8 \
        --calibration datasets/default

Targets: Jetson Nano — JetPack 4.6.x, TensorRT 8.2 (binding API, `max_workspace_size`);
Jetson Orin — JetPack 6, TensorRT 8.6 / 10.x (named tensors, memory pools). The engine lands beside
the ONNX as `<encoder>.engine` (not covered by SHA256SUMS: it is built on the robot), where
`backend: tensorrt` finds it. INT8 uses an entropy calibrator fed with calibration-split inputs and
keeps its cache (`<encoder>.int8cache`) for rebuilds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vae_ood_monitor.backends import ENGINE_SUFFIX
from vae_ood_monitor.bundle import BundleError, load_bundle

PRECISIONS = ("fp32", "fp16", "int8")


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or cuda-python) is not installed here."""


def _tensorrt():  # type: ignore[no-untyped-def]
    try:
        import tensorrt as trt
        from cuda import cudart
    except ImportError as err:
        raise TensorRTUnavailable(
            f"TensorRT is not available here ({err}); "
            "build engines on the Jetson (JetPack ships it)"
        ) from None
    return trt, cudart


def _calibrator(trt, cudart, batches: Iterator[np.ndarray], cache: Path):  # type: ignore[no-untyped-def]
    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._device = None
            self._nbytes = 0

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):  # type: ignore[no-untyped-def]
            batch = next(batches, None)
            if batch is None:
                return None
            batch = np.ascontiguousarray(batch[:1], dtype=np.float32)
            if self._device is None:
                self._nbytes = batch.nbytes
                self._device = cudart.cudaMalloc(self._nbytes)[1]
            cudart.cudaMemcpy(
                self._device,
                batch.ctypes.data,
                self._nbytes,
                cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
            )
            return [int(self._device)]

        def read_calibration_cache(self):  # type: ignore[no-untyped-def]
            return cache.read_bytes() if cache.exists() else None

        def write_calibration_cache(self, data) -> None:  # type: ignore[no-untyped-def]
            cache.write_bytes(bytes(data))

    return EntropyCalibrator()


def build_engine(
    onnx_path: Path,
    precision: str = "fp16",
    calibration: Iterator[np.ndarray] | None = None,
    workspace_mb: int = 256,
) -> Path:
    """Serialize a batch-1 engine for `onnx_path` at `precision` next to it; returns its path."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got '{precision}'")
    trt, cudart = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = (
        1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
        else 0
    )
    network = builder.create_network(explicit)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse it ({errors})")
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT >= 8.4
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    else:  # TensorRT 8.2 (JetPack 4.6)
        config.max_workspace_size = workspace_mb << 20
    tensor = network.get_input(0)
    shape = (
        1,
        *tuple(tensor.shape)[1:],
    )  # the bundle ONNX has a dynamic batch axis; engines run batch 1
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, shape, shape, shape)
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if calibration is None:
            raise ValueError("INT8 needs calibration inputs")
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_calibration_profile(profile)
        config.int8_calibrator = _calibrator(
            trt, cudart, calibration, onnx_path.with_suffix(".int8cache")
        )
    if hasattr(builder, "build_serialized_network"):
        serialized = builder.build_serialized_network(network, config)
    else:
        serialized = builder.build_engine(network, config).serialize()
    if serialized is None:
        raise RuntimeError(
            f"{onnx_path}: TensorRT failed to build a {precision} engine (see its log above)"
        )
    engine = onnx_path.with_suffix(ENGINE_SUFFIX)
    engine.write_bytes(bytes(serialized))
    return engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16")
    parser.add_argument(
        "--calibration",
        type=Path,
        help="dataset folder whose calibration split feeds INT8 calibration",
    )
    parser.add_argument("--calibration-frames", type=int, default=500)
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle)
        for name, onnx_path in bundle.encoders.items():
            batches = None
            if args.precision == "int8":
                if args.calibration is None:
                    parser.error("--precision int8 needs --calibration DATASET")
                batches = _calibration_inputs(
                    args.calibration, bundle, name, args.calibration_frames
                )
            print(f"built {build_engine(onnx_path, args.precision, batches)}")
    except (TensorRTUnavailable, BundleError, RuntimeError) as err:
        print(f"tensorrt: {err}", file=sys.stderr)
        return 1
    return 0


def _calibration_inputs(data: Path, bundle, encoder: str, frames: int) -> Iterator[np.ndarray]:  # type: ignore[no-untyped-def]
    """Encoder inputs of calibration frames, produced by the onboard preprocessing."""
    from training.dataset import episodes, iter_frames
    from vae_ood_monitor.preprocessing import FlowStacker

    produced = 0
    for episode in episodes(data, "calibration"):
        stacker = FlowStacker(bundle.preprocessing) if bundle.detector == "flow" else None
        for rgb, _ in iter_frames(episode):
            if stacker is None:
                yield bundle.preprocessing(rgb)[None]
            else:
                stacked = stacker.push(rgb)
                if stacked is None:
                    continue
                yield stacked[0 if encoder == "horizontal" else 1][None]
            produced += 1
            if produced >= frames:
                return


if __name__ == "__main__":
    sys.exit(main())
