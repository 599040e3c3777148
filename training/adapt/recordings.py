"""The user's bags, read as the runtime reads them and split for fitting, validation and checking.

Every frame is decoded once on reading, so an unreadable frame, a bag without an image topic, a
truncated bag, a recording shorter than MIN_SECONDS or a camera that changes its frame size stops
the command before any work, with one line naming the bag (AdaptError).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vae_ood_monitor.bags import BagError, read_camera_messages
from vae_ood_monitor.images import FrameError, decode_message

MIN_SECONDS = 5.0  # shorter recordings leave too few frames to fit, validate and check on
MAX_RGB_WIDTH = 640  # RGB frames kept for the synthetic faults are area-reduced to this width
PARTS = ("fit", "validation", "check")


class AdaptError(RuntimeError):
    """Input the command cannot use; the message is one line naming the file and the reason."""


def recording_sha256(path: Path) -> str:
    """SHA-256 of a bag file, or of a rosbag2 folder's files (names and contents, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def reduced_rgb(rgb: np.ndarray) -> np.ndarray:
    """The frame area-reduced to at most MAX_RGB_WIDTH wide (memory for long, large recordings)."""
    if rgb.shape[1] <= MAX_RGB_WIDTH:
        return rgb
    height = round(rgb.shape[0] * MAX_RGB_WIDTH / rgb.shape[1])
    return cv2.resize(rgb, (MAX_RGB_WIDTH, height), interpolation=cv2.INTER_AREA)


@dataclass
class Recording:
    """One bag's camera stream: its messages (decoded by each detector as onboard), header
    stamps (log times where the camera does not stamp), and its fit / validation / check parts."""

    path: Path
    sha256: str
    messages: list[Any]
    stamps_ns: np.ndarray
    size: tuple[int, int]  # width, height
    parts: dict[str, slice]
    rgb: dict[int, np.ndarray]  # reduced RGB of the validation and check frames, by index

    @property
    def duration_s(self) -> float:
        return float(self.stamps_ns[-1] - self.stamps_ns[0]) * 1e-9

    @property
    def rate_hz(self) -> float:
        return (len(self.stamps_ns) - 1) / max(self.duration_s, 1e-9)

    def frames(self, part: str) -> list[np.ndarray]:
        """Reduced RGB frames of the validation or check part."""
        return [self.rgb[i] for i in range(len(self.messages))[self.parts[part]]]

    def stamps(self, part: str) -> list[int]:
        return [int(s) for s in self.stamps_ns[self.parts[part]]]

    def describe(self) -> dict[str, object]:
        """What a bundle's provenance and the report record about the bag."""
        return {
            "bag": str(self.path),
            "sha256": self.sha256,
            "frames": len(self.messages),
            "seconds": round(self.duration_s, 2),
            "rate_hz": round(self.rate_hz, 2),
            "size": list(self.size),
            "parts": {name: [part.start, part.stop] for name, part in self.parts.items()},
        }


def split_parts(count: int, hold_out: float, validation: float) -> dict[str, slice]:
    """Fit on the first frames, validate on the next `validation` share, check on the last
    `hold_out` share: the checked frames come after everything the adaptation saw."""
    check = max(1, round(count * hold_out))
    val = max(1, round(count * validation))
    fit_end = count - check - val
    return {
        "fit": slice(0, fit_end),
        "validation": slice(fit_end, fit_end + val),
        "check": slice(fit_end + val, count),
    }


def read_recording(
    path: Path,
    topic: str | None = None,
    hold_out: float = 0.25,
    validation: float = 0.2,
    min_seconds: float = MIN_SECONDS,
) -> Recording:
    """Read, decode and split one bag; every problem is an AdaptError naming it."""
    messages, stamps, logs = [], [], []
    size: tuple[int, int] | None = None
    keep_from = None
    try:
        for message in read_camera_messages(path, topic):
            try:
                rgb = decode_message(message.msg)
            except FrameError as err:
                raise AdaptError(
                    f"{path}: frame {message.index} cannot be decoded: {err}"
                ) from None
            frame_size = (rgb.shape[1], rgb.shape[0])
            if size is None:
                size = frame_size
            elif frame_size != size:
                raise AdaptError(
                    f"{path}: frames of mixed sizes ({size[0]}x{size[1]}, then "
                    f"{frame_size[0]}x{frame_size[1]} at frame {message.index}); "
                    "record one camera setting per bag"
                )
            messages.append(message.msg)
            stamps.append(message.stamp_ns)
            logs.append(message.log_time_ns)
    except BagError as err:
        raise AdaptError(str(err)) from None
    if size is None:
        raise AdaptError(f"{path}: no camera frames on its image topic")
    stamps_ns = np.asarray(stamps, dtype=np.int64)
    if len(stamps_ns) > 1 and np.any(np.diff(stamps_ns) <= 0):
        stamps_ns = np.asarray(logs, dtype=np.int64)  # an unstamped camera: arrival times
    seconds = float(stamps_ns[-1] - stamps_ns[0]) * 1e-9
    if seconds < min_seconds:
        raise AdaptError(
            f"{path}: only {seconds:.1f} s of frames ({len(messages)}); "
            f"need at least {min_seconds:.0f} s per recording"
        )
    parts = split_parts(len(messages), hold_out, validation)
    keep_from = parts["validation"].start
    rgb = {i: reduced_rgb(decode_message(messages[i])) for i in range(keep_from, len(messages))}
    return Recording(path, recording_sha256(path), messages, stamps_ns, size, parts, rgb)


def read_messages(path: Path, limit: int | None = None) -> tuple[list, list[int]]:
    """A bag's camera messages and header stamps (the first `limit`), unchecked: for the
    default-world recordings the report replays."""
    messages, stamps = [], []
    for message in read_camera_messages(path):
        if limit is not None and message.index >= limit:
            break
        messages.append(message.msg)
        stamps.append(message.stamp_ns)
    return messages, stamps
