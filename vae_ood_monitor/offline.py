"""Scoring recorded streams with the onboard detectors: the engine of `score`, `eval` and reports."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_ood_monitor.bags import read_camera_messages
from vae_ood_monitor.bundle import DEFAULTS_FILE, default_bundle, models_dir, share_dir  # noqa: F401
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.images import FrameError, decode_message
from vae_ood_monitor.safety import FrozenCameraWatch, frame_fingerprint

DETECTORS = ("bvae", "flow")


@dataclass
class StreamScores:
    """Per-frame results of one stream; NaN scores where a detector had no input yet."""

    scores: dict[str, np.ndarray]
    flags: dict[str, np.ndarray]
    surprise: dict[str, np.ndarray]  # -log10 conformal p-value, comparable across detectors
    frozen: np.ndarray  # the safety stop's frozen-camera check fires at this frame

    @property
    def fused_flags(self) -> np.ndarray:
        """Where the safety stop (fusion `any`) would stop the robot: any detector's OOD decision
        or a frozen camera."""
        return np.any(np.stack([*self.flags.values(), self.frozen]), axis=0)

    @property
    def fused_score(self) -> np.ndarray:
        """Most surprised detector per frame: the continuous counterpart of the fused 'any' flag."""
        return np.nanmax(np.stack(list(self.surprise.values())), axis=0)


def score_frames(
    frames: list[np.ndarray],
    detectors: dict[str, OODDetector],
    reset: bool = True,
    times_s: Sequence[float] | None = None,
    frozen_watch: FrozenCameraWatch | None = None,
) -> StreamScores:
    """Scores, decisions and surprise of consecutive frames; `reset=False` continues a stream
    (flow history and decision state) from the previous call, for chunked replays. With
    `frozen_watch` and the frames' arrival `times_s`, repeated frames are checked as the safety
    stop checks them (the watch carries its state across chunks)."""
    if frozen_watch is not None and (times_s is None or len(times_s) != len(frames)):
        raise ValueError("the frozen-camera check needs one arrival time per frame")
    frozen = np.zeros(len(frames), dtype=bool)
    if frozen_watch is not None and times_s is not None:
        frozen[:] = [
            frozen_watch.on_frame(t, frame_fingerprint(np.ascontiguousarray(f).data))
            for f, t in zip(frames, times_s)
        ]
    scores, flags, surprise = {}, {}, {}
    for name, detector in detectors.items():
        values = detector.score_stream(frames, reset=reset)
        flag = np.zeros(len(values), dtype=bool)
        log_p = np.full(len(values), np.nan)
        for i, value in enumerate(values):
            if math.isfinite(value):
                decision = detector.decide(float(value))
                flag[i] = decision.ood
                log_p[i] = -math.log10(decision.p_value)
        scores[name], flags[name], surprise[name] = values, flag, log_p
    return StreamScores(scores, flags, surprise, frozen)


def score_bag(
    bag: Path,
    detectors: dict[str, OODDetector],
    topic: str | None = None,
    chunk: int = 256,
    on_bad_frame: Callable[[str], None] | None = None,
    frozen_s: float = 0.0,
) -> Iterator[tuple[list[int], StreamScores]]:
    """Replay a bag through the detectors in chunks of frames: (header stamps, results) per chunk.

    Undecodable frames are reported through `on_bad_frame` and skipped, as the onboard node does;
    they do not appear in the results. `frozen_s` > 0: frames repeated for longer (by the bag's
    log time: when they arrived, as the safety stop sees them) count as a stop.
    """
    frames: list[np.ndarray] = []
    stamps: list[int] = []
    arrivals: list[float] = []
    first = True
    watch = FrozenCameraWatch(frozen_s) if frozen_s > 0 else None

    def results() -> StreamScores:
        return score_frames(frames, detectors, reset=first, times_s=arrivals, frozen_watch=watch)

    for message in read_camera_messages(bag, topic):
        try:
            frames.append(decode_message(message.msg))
        except FrameError as err:
            if on_bad_frame is not None:
                on_bad_frame(
                    f"{bag}: frame {message.index} (stamp {message.stamp_ns}) skipped: {err}"
                )
            continue
        stamps.append(message.stamp_ns)
        arrivals.append(message.log_time_ns * 1e-9)
        if len(frames) == chunk:
            yield stamps, results()
            frames, stamps, arrivals, first = [], [], [], False
    if frames:
        yield stamps, results()
