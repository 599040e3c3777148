"""Scoring recorded streams with the onboard detectors: the engine of `score`, `eval`, reports."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vae_ood_monitor.bags import BagMessage, read_camera_messages
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.images import FrameError, decode_message, decode_once
from vae_ood_monitor.safety import FrozenCameraWatch, frame_fingerprint
from vae_ood_monitor.variations import FrameTransform, as_sent

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
    frames: list[np.ndarray] | dict[str, list[np.ndarray]],
    detectors: dict[str, OODDetector],
    reset: bool = True,
    times_s: Sequence[float] | None = None,
    frozen_watch: FrozenCameraWatch | None = None,
    stamps_ns: Sequence[int] | None = None,
) -> StreamScores:
    """Scores, decisions and surprise of consecutive frames; `reset=False` continues a stream
    (flow history and decision state) from the previous call, for chunked replays. `frames`: RGB
    frames for every detector, or each detector's own (as its `decode` gives them). `stamps_ns`:
    the frames' header stamps, so the flow detector measures motion per second as onboard (None:
    frames at the training rate). With `frozen_watch` and the frames' arrival `times_s`, repeated
    frames are checked as the safety stop checks them (the watch carries its state across
    chunks)."""
    own = frames if isinstance(frames, dict) else dict.fromkeys(detectors, frames)
    reference = next(iter(own.values()))
    if frozen_watch is not None and (times_s is None or len(times_s) != len(reference)):
        raise ValueError("the frozen-camera check needs one arrival time per frame")
    frozen = np.zeros(len(reference), dtype=bool)
    if frozen_watch is not None and times_s is not None:
        frozen[:] = [
            frozen_watch.on_frame(t, frame_fingerprint(np.ascontiguousarray(f).data))
            for f, t in zip(reference, times_s)
        ]
    scores, flags, surprise = {}, {}, {}
    for name, detector in detectors.items():
        values = detector.score_stream(own[name], reset=reset, stamps_ns=stamps_ns)
        flag = np.zeros(len(values), dtype=bool)
        log_p = np.full(len(values), np.nan)
        for i, value in enumerate(values):
            if math.isfinite(value):
                decision = detector.decide(float(value))
                flag[i] = decision.ood
                log_p[i] = -math.log10(decision.p_value)
        scores[name], flags[name], surprise[name] = values, flag, log_p
    return StreamScores(scores, flags, surprise, frozen)


def thinned(
    messages: Iterable[BagMessage],
    every: int = 1,
    drop: float = 0.0,
    seed: int = 0,
    speed: float = 1.0,
) -> Iterator[BagMessage]:
    """A slower or lossy camera from a recorded one: every `every`-th message, then each lost with
    probability `drop` (seeded). Stamps stay honest (the recorded ones) unless `speed` != 1: then
    time runs `speed` times faster, a robot driving faster per second."""
    if every < 1 or not 0.0 <= drop < 1.0 or speed <= 0:
        raise ValueError(f"need every >= 1, 0 <= drop < 1, speed > 0; got {every}, {drop}, {speed}")
    rng = np.random.default_rng(seed)
    start: int | None = None  # the first recorded stamp: time 0 of the faster clock
    for message in messages:
        start = message.stamp_ns if start is None else start
        if message.index % every == 0 and not (drop and rng.random() < drop):
            stamp_ns = start + round((message.stamp_ns - start) / speed)
            yield replace(message, stamp_ns=stamp_ns) if speed != 1.0 else message


def score_bag(
    bag: Path,
    detectors: dict[str, OODDetector],
    topic: str | None = None,
    chunk: int = 256,
    on_bad_frame: Callable[[str], None] | None = None,
    frozen_s: float = 0.0,
    select: Callable[[Iterable[BagMessage]], Iterable[BagMessage]] | None = None,
    stamps: bool = True,
    transform: FrameTransform | None = None,
    seed: int = 0,
) -> Iterator[tuple[list[int], StreamScores]]:
    """Replay a bag through the detectors in chunks of frames: (header stamps, results) per chunk.

    Each detector decodes the messages as its node does (one decode for detectors that share
    one, as in `ood_detectors`: images.decode_once) and gets their header stamps, as onboard
    (`stamps=False`: frames taken as at the training rate, the behaviour before 2026-12-06).
    `select` picks the messages replayed (e.g. `thinned`); `transform` changes every frame
    (vae_ood_monitor.variations, random draws seeded by `seed`): the frame is decoded in full,
    changed, and sent on as the camera would send it (JPEG), which each detector decodes as
    onboard — as the nuisance evaluation replays. Undecodable
    frames are reported through `on_bad_frame` and skipped, as the onboard node does; they do not
    appear in the results.
    `frozen_s` > 0: frames repeated for longer (by the bag's log time: when they arrived, as the
    safety stop sees them) count as a stop.
    """
    frames: dict[str, list[np.ndarray]] = {name: [] for name in detectors}
    stamps_ns: list[int] = []
    arrivals: list[float] = []
    first = True
    watch = FrozenCameraWatch(frozen_s) if frozen_s > 0 else None
    rng = np.random.default_rng(seed)

    def results() -> StreamScores:
        return score_frames(
            frames,
            detectors,
            reset=first,
            times_s=arrivals,
            frozen_watch=watch,
            stamps_ns=stamps_ns if stamps else None,
        )

    decoders = [detector.decode for detector in detectors.values()]
    messages = read_camera_messages(bag, topic)
    for message in select(messages) if select is not None else messages:
        try:
            sent = (
                message.msg
                if transform is None
                else as_sent(transform(decode_message(message.msg), rng))
            )
            decoded = dict(zip(detectors, decode_once(decoders, sent)))
        except FrameError as err:
            if on_bad_frame is not None:
                on_bad_frame(
                    f"{bag}: frame {message.index} (stamp {message.stamp_ns}) skipped: {err}"
                )
            continue
        for name, image in decoded.items():
            frames[name].append(image)
        stamps_ns.append(message.stamp_ns)
        arrivals.append(message.log_time_ns * 1e-9)
        if len(stamps_ns) == chunk:
            yield stamps_ns, results()
            frames = {name: [] for name in detectors}
            stamps_ns, arrivals, first = [], [], False
    if stamps_ns:
        yield stamps_ns, results()
