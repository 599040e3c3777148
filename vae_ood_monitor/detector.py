"""A detector = a verified bundle + encoders on a backend + the decision state of one stream.

The same class scores frames on the robot (one at a time, newest first) and offline in `score`,
`eval` and the training reports (in batches), so the numbers reported are the robot's numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from vae_ood_monitor.backends import POOLED_OUTPUT, EncoderRunner, make_encoder
from vae_ood_monitor.bundle import Bundle, BundleError, load_bundle
from vae_ood_monitor.decision import ConformalDecider, Decision
from vae_ood_monitor.images import FrameDecoder
from vae_ood_monitor.preprocessing import FlowStacker, ImagePreprocessing
from vae_ood_monitor.scoring import EncoderOutputs, Latents, concatenate_outputs


class ModelOutputError(ValueError):
    """The encoder produced NaN or infinite values for a frame."""


# How camera messages are decoded by default; see FrameDecoder and docs/performance.md.
DEFAULT_DECODE = "reduced"


class OODDetector:
    def __init__(
        self,
        bundle: Bundle,
        backend: str = "onnxruntime",
        threads: int = 1,
        decode: str = DEFAULT_DECODE,
    ) -> None:
        self.bundle = bundle
        self.kind = bundle.detector
        self.backend = backend
        prep = bundle.preprocessing
        # The flow detector needs grey frames: from a reduced decode straight from the JPEG luma.
        self.decode = FrameDecoder(decode, (prep.width, prep.height), grey=self.kind == "flow")
        self._encoders: dict[str, EncoderRunner] = {
            name: make_encoder(backend, path, threads) for name, path in bundle.encoders.items()
        }
        if bundle.score.reads_pooled:
            lacking = [
                name
                for name, encoder in self._encoders.items()
                if POOLED_OUTPUT not in encoder.outputs
            ]
            if lacking:
                hint = (
                    " (an engine built from an older ONNX? rebuild it with "
                    "`python -m training.compress.tensorrt`)"
                    if backend == "tensorrt"
                    else ""
                )
                raise BundleError(
                    f"{bundle.path}: its {bundle.score.kind} score reads pooled features, but "
                    f"encoder {', '.join(lacking)} on {backend} "
                    f"has no '{POOLED_OUTPUT}' output{hint}"
                )
        self._stacker = FlowStacker(bundle.preprocessing) if self.kind == "flow" else None  # type: ignore[arg-type]
        self.decider = ConformalDecider(bundle.calibration_scores, bundle.decision)

    @classmethod
    def from_path(
        cls, path: str, backend: str = "onnxruntime", threads: int = 1, decode: str = DEFAULT_DECODE
    ) -> OODDetector:
        return cls(load_bundle(path), backend, threads, decode)

    @property
    def backend_name(self) -> str:
        return next(iter(self._encoders.values())).name

    def reset(self) -> None:
        """Forget the stream (flow history and decision state), e.g. after a gap in the frames."""
        if self._stacker is not None:
            self._stacker.reset()
        self.decider.reset()

    def _encode(self, inputs: dict[str, np.ndarray]) -> Latents:
        latents = {}
        for name, batch in inputs.items():
            outputs = self._encoders[name](batch)
            if not all(np.isfinite(values).all() for values in outputs.values()):
                raise ModelOutputError(
                    f"encoder '{name}' of {self.bundle.path.name} produced non-finite output"
                )
            latents[name] = EncoderOutputs(
                outputs["mu"], outputs["logvar"], outputs.get(POOLED_OUTPUT)
            )
        return latents

    def _score_latents(self, latents: Latents) -> np.ndarray:
        return self.bundle.score(latents)

    def _inputs(self, image: np.ndarray, stamp_ns: int | None) -> dict[str, np.ndarray] | None:
        if self._stacker is None:
            prep: ImagePreprocessing = self.bundle.preprocessing  # type: ignore[assignment]
            return {"image": prep(image)}
        stacked = self._stacker.push(image, stamp_ns)
        if stacked is None:
            return None
        return {"horizontal": stacked[0], "vertical": stacked[1]}

    def score_message(self, msg: Any, stamp_ns: int | None = None) -> float | None:
        """`score_frame` of a camera message, decoded as this detector needs it (`decode`)."""
        return self.score_frame(self.decode(msg), stamp_ns)

    def score_frame(self, image: np.ndarray, stamp_ns: int | None = None) -> float | None:
        """OOD score of the newest frame (RGB, or what `decode` gives), taken at header stamp
        `stamp_ns`; None while the flow detector fills its stack or skips a frame."""
        inputs = self._inputs(image, stamp_ns)
        if inputs is None:
            return None
        return float(self._score_latents(self._encode({k: v[None] for k, v in inputs.items()}))[0])

    def warm_up(self, runs: int = 3, frame_shape: tuple[int, int] = (480, 640)) -> None:
        """Score a few blank frames through the full path, then forget them. The first inferences
        of a fresh session allocate and plan (ONNX Runtime, TensorRT) and can take longer than the
        safety stop's silence timeout; a node warms up before it subscribes so that stall happens
        before the robot relies on it."""
        blank = np.zeros((*frame_shape, 3), dtype=np.uint8)
        filling = (
            self._stacker.params.stack if self._stacker is not None else 0
        )  # frames before the first flow stack
        for _ in range(filling + runs):
            self.score_frame(blank if self.kind == "bvae" else blank[..., 0])
        self.reset()

    def decide(self, score: float) -> Decision:
        return self.decider.update(score)

    def encode_stream(
        self,
        frames: Iterable[np.ndarray],
        batch_size: int = 32,
        reset: bool = True,
        stamps_ns: Sequence[int] | None = None,
    ) -> tuple[int, np.ndarray, Latents]:
        """Latents of consecutive frames of one stream, batched for speed.

        Returns the number of frames, the indices of the frames that had an input (all but the
        flow detector's first `stack` frames) and, per encoder, its outputs for those frames.
        `reset=False` continues the stream of the previous call. `stamps_ns`: the frames' header
        stamps (motion per second, as onboard); None: frames at the training frame interval.
        """
        if reset:
            self.reset()
        indices: list[int] = []
        pending: list[dict[str, np.ndarray]] = []
        parts: dict[str, list[EncoderOutputs]] = {name: [] for name in self._encoders}

        def flush() -> None:
            if pending:
                for name, latent in self._encode(
                    {n: np.stack([p[n] for p in pending]) for n in pending[0]}
                ).items():
                    parts[name].append(latent)
                pending.clear()

        count = 0
        for count, image in enumerate(frames, start=1):
            inputs = self._inputs(image, None if stamps_ns is None else stamps_ns[count - 1])
            if inputs is not None:
                indices.append(count - 1)
                pending.append(inputs)
                if len(pending) == batch_size:
                    flush()
        flush()
        return (
            count,
            np.asarray(indices, dtype=int),
            {name: concatenate_outputs(chunks) for name, chunks in parts.items()},
        )

    def score_stream(
        self,
        frames: Iterable[np.ndarray],
        batch_size: int = 32,
        reset: bool = True,
        stamps_ns: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Scores of consecutive frames of one stream (NaN where none yet)."""
        count, indices, latents = self.encode_stream(frames, batch_size, reset, stamps_ns)
        scores = np.full(count, np.nan)
        if indices.size:
            scores[indices] = self._score_latents(latents)
        return scores
