"""Inference backends behind one call: float32 input batch → the encoder's outputs by name
(`mu`, `logvar` and, where exported, `pooled`: the spatial means of its conv blocks' outputs, and
maybe one block's maxima over the top horizontal bands).

`onnxruntime` (default) runs the bundle's ONNX on the CPU; `onnxruntime-gpu` adds the CUDA /
TensorRT execution providers where the installed ONNX Runtime has them. `tensorrt` deserializes a
prebuilt engine (`<encoder>.engine`, built on the Jetson by `training.compress.tensorrt`) and runs
it with the TensorRT Python API, 8.x (binding indices) or 10.x (named tensors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

BACKENDS = ("onnxruntime", "onnxruntime-gpu", "tensorrt")
ENGINE_SUFFIX = ".engine"


class BackendError(RuntimeError):
    """A backend that cannot run here or a model it cannot load; the message says which and why."""


REQUIRED_OUTPUTS = ("mu", "logvar")
POOLED_OUTPUT = "pooled"  # optional: what the pooled scores read (training.export adds it)


class EncoderRunner(Protocol):
    name: str
    outputs: tuple[str, ...]  # the model's output names

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


def _check_outputs(model: Path, outputs: tuple[str, ...]) -> tuple[str, ...]:
    missing = [name for name in REQUIRED_OUTPUTS if name not in outputs]
    if missing:
        raise BackendError(
            f"{model}: the encoder has no output {', '.join(repr(m) for m in missing)} "
            f"(outputs: {', '.join(outputs)})"
        )
    return outputs


class OnnxRuntimeEncoder:
    """An ONNX encoder in an ONNX Runtime session (outputs `mu`, `logvar`, optionally `pooled`)."""

    def __init__(
        self, model: Path, threads: int = 1, providers: tuple[str, ...] | None = None
    ) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = providers or tuple(
            p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available
        ) + ("CPUExecutionProvider",)
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendError(
                f"ONNX Runtime here lacks {', '.join(missing)} (available: {', '.join(available)})"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # With threads > 1 the pool's threads spin between runs by default: CPU burnt for nothing
        # at a camera's 30 frames a second (with 1 thread there is no pool).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(model), options, providers=list(wanted))
        except Exception as err:  # noqa: BLE001 ORT raises its own untyped Fail/InvalidGraph errors
            raise BackendError(
                f"{model}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})"
            ) from None
        self._input = self._session.get_inputs()[0].name
        self.outputs = _check_outputs(model, tuple(o.name for o in self._session.get_outputs()))
        self.name = f"onnxruntime[{self._session.get_providers()[0]}]"

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self._session.run(list(self.outputs), {self._input: batch})))


class TensorRTEncoder:
    """A serialized TensorRT engine with one input and outputs `mu`, `logvar`, optionally `pooled`
    (batch 1, static shapes)."""

    def __init__(self, engine_path: Path) -> None:
        try:
            import tensorrt as trt
            from cuda import cudart  # cuda-python, shipped beside TensorRT on JetPack
        except ImportError as err:
            raise BackendError(
                f"backend 'tensorrt' is unavailable here ({err}); use backend 'onnxruntime'"
            ) from None
        if not engine_path.exists():
            raise BackendError(
                f"{engine_path}: no TensorRT engine; "
                "build it with `python -m training.compress.tensorrt`"
            )
        self._trt, self._cudart = trt, cudart
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self._engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise BackendError(
                f"{engine_path}: TensorRT could not deserialize it "
                "(built for another TensorRT or GPU?)"
            )
        self._context = self._engine.create_execution_context()
        self._tensors = self._io_tensors()
        for index, (name, (shape, _, is_input)) in enumerate(self._tensors.items()):
            if is_input:  # engines built from the dynamic-batch ONNX run batch 1
                if hasattr(self._context, "set_input_shape"):
                    self._context.set_input_shape(name, shape)
                else:
                    self._context.set_binding_shape(index, shape)
        self._buffers: dict[str, tuple[np.ndarray, int]] = {}
        for name, (shape, dtype, _) in self._tensors.items():
            host = np.empty(shape, dtype=dtype)
            error, device = cudart.cudaMalloc(host.nbytes)
            if error != cudart.cudaError_t.cudaSuccess:
                raise BackendError(f"{engine_path}: cudaMalloc failed ({error})")
            self._buffers[name] = (host, device)
        self._stream = cudart.cudaStreamCreate()[1]
        self.outputs = _check_outputs(
            engine_path,
            tuple(name for name, (_, _, is_input) in self._tensors.items() if not is_input),
        )
        self.name = f"tensorrt[{trt.__version__}]"

    def _io_tensors(self) -> dict[str, tuple[tuple[int, ...], np.dtype, bool]]:
        """name → (shape with batch 1, dtype, is_input), in binding order, through the 10.x
        named-tensor API or the 8.x bindings."""
        trt, engine = self._trt, self._engine
        tensors = {}
        if hasattr(engine, "num_io_tensors"):  # TensorRT >= 8.5, required in 10.x
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                tensors[name] = (
                    _batch_one(engine.get_tensor_shape(name)),
                    np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                    is_input,
                )
        else:  # TensorRT 8.2 on JetPack 4.6 (Jetson Nano)
            for i in range(engine.num_bindings):
                name = engine.get_binding_name(i)
                tensors[name] = (
                    _batch_one(engine.get_binding_shape(i)),
                    np.dtype(trt.nptype(engine.get_binding_dtype(i))),
                    engine.binding_is_input(i),
                )
        return tensors

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d, d2h = (
            cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
            cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
        )
        for name, (_, _, is_input) in self._tensors.items():
            host, device = self._buffers[name]
            if is_input:
                np.copyto(host, batch.reshape(host.shape).astype(host.dtype, copy=False))
                cudart.cudaMemcpyAsync(device, host.ctypes.data, host.nbytes, h2d, self._stream)
        if hasattr(self._context, "execute_async_v3"):
            for name, (_, device) in self._buffers.items():
                self._context.set_tensor_address(name, device)
            self._context.execute_async_v3(self._stream)
        else:
            self._context.execute_async_v2(
                [self._buffers[n][1] for n in self._tensors], self._stream
            )
        for name, (_, _, is_input) in self._tensors.items():
            if not is_input:
                host, device = self._buffers[name]
                cudart.cudaMemcpyAsync(host.ctypes.data, device, host.nbytes, d2h, self._stream)
        cudart.cudaStreamSynchronize(self._stream)
        return {name: self._buffers[name][0].astype(np.float32) for name in self.outputs}


def _batch_one(shape: object) -> tuple[int, ...]:
    return tuple(1 if int(d) < 0 else int(d) for d in shape)  # type: ignore[attr-defined]


def make_encoder(backend: str, onnx_model: Path, threads: int = 1) -> EncoderRunner:
    """The encoder for `onnx_model` on `backend` (TensorRT uses the engine beside the ONNX)."""
    if backend == "onnxruntime":
        return OnnxRuntimeEncoder(onnx_model, threads=threads, providers=("CPUExecutionProvider",))
    if backend == "onnxruntime-gpu":
        return OnnxRuntimeEncoder(onnx_model, threads=threads)
    if backend == "tensorrt":
        return TensorRTEncoder(onnx_model.with_suffix(ENGINE_SUFFIX))
    raise BackendError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
