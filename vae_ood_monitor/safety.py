"""Safety-stop logic, free of ROS: fuse detector decisions, watch for silence, latch the stop.

States:
- WAITING: not every input has been heard yet (start-up). The robot is held, not latched: it
  drives as soon as the camera and every enabled detector are live and in distribution.
- RUNNING: inputs live and fused decision in distribution.
- STOPPED: latched by an OOD decision, a silent camera or detector (older than `timeout_s`; 0
  disables the silence check, as nav2's `source_timeout`), a frozen camera (byte-identical
  frames for longer than `frozen_s`: a stuck driver republishing its last buffer is as blind as
  a silent one — a real sensor's noise never repeats a frame exactly), or a detector error. Only
  `request_reset` leaves it, and only while every input is live and ID.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from vae_ood_monitor.images import FrameError, parse_serialized_image

FUSIONS = ("any", "all", "k_of_n")


class State(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass
class _Input:
    last_seen: float | None = None
    ood: bool = False
    error: str | None = None


@dataclass(frozen=True)
class SafetyConfig:
    detectors: tuple[str, ...] = ("bvae", "flow")
    fusion: str = "any"
    k: int = 1  # with fusion "k_of_n": stop when at least k detectors say OOD
    timeout_s: float = 0.5  # silence of an input that stops the robot; 0: no silence check
    # Identical camera frames for longer than this stop the robot; 0: no check. 0.3 s (9 repeats at
    # 30 fps) flags a hung driver inside the 0.5 s detection bar, and is twice the longest repeat in
    # ID data (the simulator holds the first 5 frames of a drive: 0.13 s).
    frozen_s: float = 0.3

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got '{self.fusion}'")
        if not self.detectors:
            raise ValueError("at least one detector must be enabled")
        if self.fusion == "k_of_n" and not 1 <= self.k <= len(self.detectors):
            raise ValueError(f"k must be between 1 and {len(self.detectors)}, got {self.k}")
        if self.timeout_s < 0:
            raise ValueError(
                f"timeout_s must be >= 0 (0 disables the silence check), got {self.timeout_s}"
            )
        if self.frozen_s < 0:
            raise ValueError(
                f"frozen_s must be >= 0 (0 disables the frozen-camera check), got {self.frozen_s}"
            )


def frame_fingerprint(data: bytes | memoryview) -> int:
    """A cheap checksum of a frame's bytes: equal for a republished buffer, not for live frames."""
    return zlib.crc32(data)


def serialized_bool(serialized: bytes) -> bool:
    """The value of a serialized std_msgs/Bool (classic CDR: 4-byte encapsulation, then the byte):
    the safety stop reads the detectors' decisions without building a message for each. A
    message too short to hold it counts as True: a decision that cannot be read stops."""
    return len(serialized) < 5 or serialized[4] != 0


MAX_HASHED_BYTES = 1 << 16


def message_fingerprint(serialized: bytes, raw_image: bool = False) -> int | None:
    """`frame_fingerprint` of a serialized camera message's `data` (JPEG or pixels), without
    deserializing or decoding it: a buffer republished with fresh stamps still counts as the same
    frame, and a JPEG re-encoded bit-identically too. Over MAX_HASHED_BYTES (raw frames) every n-th
    byte is hashed; a live sensor's noise changes the samples as surely as the rest. None (counts
    as a new frame) for a message it cannot walk."""
    # Only `data` counts: the alignment padding after strings is not initialised by every
    # serializer, so two publishes of one buffer can differ there.
    try:
        data = parse_serialized_image(serialized, raw_image).data
    except FrameError:
        return None
    stride = max(1, -(-len(data) // MAX_HASHED_BYTES))
    return zlib.crc32(data if stride == 1 else np.frombuffer(data, np.uint8)[::stride].copy())


@dataclass
class FrozenCameraWatch:
    """How long the camera has been repeating one frame; frozen once that exceeds `limit_s` (0:
    never). Shared by the safety stop and offline replays, so a report stops where the robot
    would."""

    limit_s: float
    frozen_for: float = 0.0  # at the last frame's arrival
    _fingerprint: int | None = None
    _since: float = 0.0  # when the current frame content first arrived

    def on_frame(self, now: float, fingerprint: int | None) -> bool:
        """A frame arrived at `now`; None (no fingerprint) counts as new content. True when
        frozen."""
        if fingerprint is None or fingerprint != self._fingerprint:
            self._fingerprint, self._since, self.frozen_for = fingerprint, now, 0.0
        else:
            self.frozen_for = now - self._since
        return self.frozen

    @property
    def frozen(self) -> bool:
        return self.limit_s > 0 and self.frozen_for > self.limit_s


@dataclass
class SafetyStop:
    config: SafetyConfig
    state: State = State.WAITING
    stop_reasons: list[str] = field(default_factory=list)
    _camera: _Input = field(default_factory=_Input)
    _detectors: dict[str, _Input] = field(default_factory=dict)
    _frames: FrozenCameraWatch = field(init=False)

    def __post_init__(self) -> None:
        self._detectors = {name: _Input() for name in self.config.detectors}
        self._frames = FrozenCameraWatch(self.config.frozen_s)

    @property
    def stopped(self) -> bool:
        """Whether the wheels must stand still (waiting or latched)."""
        return self.state is not State.RUNNING

    def on_camera(self, now: float, fingerprint: int | None = None) -> None:
        """A frame arrived; its `fingerprint` (frame_fingerprint of its bytes) lets a frozen stream
        be told from a live one."""
        self._camera.last_seen = now
        self._frames.on_frame(now, fingerprint)

    def on_decision(self, detector: str, ood: bool, now: float) -> None:
        source = self._detectors[detector]
        source.last_seen, source.ood, source.error = now, ood, None

    def on_error(self, detector: str, reason: str) -> None:
        """A detector reported an error; it stands until the detector's next decision."""
        self._detectors[detector].error = reason

    def ood_votes(self) -> list[str]:
        """Detectors whose latest decision is OOD."""
        return [name for name, source in self._detectors.items() if source.ood]

    def fused_ood(self) -> bool:
        votes = self.ood_votes()
        needed = {"any": 1, "all": len(self._detectors), "k_of_n": self.config.k}[
            self.config.fusion
        ]
        return bool(votes) and len(votes) >= needed

    def _problems(self, now: float) -> list[str]:
        """Why the robot should not drive right now (empty when everything is live and ID)."""
        problems = []
        for name, source in (("camera", self._camera), *self._detectors.items()):
            if source.last_seen is None:
                problems.append(f"{name}: not heard yet")
            elif self.config.timeout_s and now - source.last_seen > self.config.timeout_s:
                problems.append(
                    f"{name}: silent for {now - source.last_seen:.2f} s "
                    f"(timeout {self.config.timeout_s:.2f} s)"
                )
            elif source.error:
                problems.append(f"{name}: error: {source.error}")
        if self._frames.frozen:
            problems.append(
                f"camera: frozen, the same frame for {self._frames.frozen_for:.2f} s "
                f"(limit {self.config.frozen_s:.2f} s)"
            )
        if self.fused_ood():
            problems.append(
                f"out of distribution: {', '.join(self.ood_votes())} ({self.config.fusion})"
            )
        return problems

    @property
    def reason(self) -> str:
        """Why the wheels stand still, in one line: the latched stop's reasons, the inputs not heard
        yet while waiting, empty while running. Changes only with the state, so it can be
        published on change."""
        if self.state is State.STOPPED:
            return "; ".join(self.stop_reasons)
        if self.state is State.WAITING:
            sources = (("camera", self._camera), *self._detectors.items())
            unheard = [name for name, source in sources if source.last_seen is None]
            return "waiting for " + ", ".join(unheard) if unheard else "waiting"
        return ""

    def update(self, now: float) -> bool:
        """Advance the state at time `now`; True when the stop latched at this call."""
        if self.state is State.STOPPED:
            return False
        problems = self._problems(now)
        if not problems:
            self.state = State.RUNNING
            return False
        heard_from_all = all(
            source.last_seen is not None for source in (self._camera, *self._detectors.values())
        )
        if self.state is State.RUNNING or heard_from_all:
            self.state, self.stop_reasons = State.STOPPED, problems
            return True
        return False

    def request_reset(self, now: float) -> tuple[bool, str]:
        """Release a latched stop, refused (with the reason) while inputs are stale or OOD."""
        if self.state is not State.STOPPED:
            return True, f"not stopped ({self.state.value})"
        problems = self._problems(now)
        if problems:
            return False, "reset refused: " + "; ".join(problems)
        self.state, self.stop_reasons = State.RUNNING, []
        return True, "stop released"
