"""OOD onsets made from the user's own in-distribution frames, so the decision can be tuned and
checked without OOD recordings.

Each onset episode is a stretch of one recording: its first half as recorded, its second half
under one fault. Appearance and sensor faults are the project's image corruptions
(training.data.corruptions) plus a fog-like haze and darkness; motion faults manipulate the
frames: a spin (the view panning sideways much faster than a turn), reverse (the recorded path
played backwards), shake (every frame displaced at random) and speed-up (every third frame at the
camera's rate: three times the distance per second). Stamps always run forward at the recorded
rate, as a camera's would.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from training.data.corruptions import make_corruption

HAZE_GREY = 205.0  # the colour fog fades the scene into
HAZE_SHARE = 0.65  # how much of it covers the scene
DARKNESS_GAIN = 0.12  # light left at dusk without headlights
SPIN_SHARE = 0.08  # of the frame width panned per frame
SHAKE_SHARE = 0.05  # of the frame size a shaken frame is displaced by, at most
SPEEDUP = 3  # frames skipped per frame delivered

FAULTS: dict[str, str] = {  # fault -> scenario category (training.calibrate.DETECTOR_CATEGORIES)
    "haze": "appearance",
    "darkness": "appearance",
    "glare": "appearance",
    "lens_dirt": "appearance",
    "noise": "sensor",
    "frozen": "sensor",
    "black": "sensor",
    "spin": "motion",
    "reverse": "motion",
    "shake": "motion",
    "speedup": "motion",
}


@dataclass
class OnsetEpisode:
    """A stretch of frames with a fault from `onset` on."""

    name: str
    fault: str
    category: str
    frames: list[np.ndarray]
    stamps_ns: list[int]
    onset: int

    @property
    def labels(self) -> np.ndarray:
        labels = np.zeros(len(self.frames), dtype=bool)
        labels[self.onset :] = True
        return labels


def _seed(*parts: str) -> int:
    return zlib.crc32(":".join(parts).encode())


def _haze(rgb: np.ndarray, _: int) -> np.ndarray:
    blurred = cv2.GaussianBlur(rgb, (0, 0), 1.5)
    return (blurred * (1.0 - HAZE_SHARE) + HAZE_GREY * HAZE_SHARE).round().astype(np.uint8)


def _darkness(seed: int) -> Callable[[np.ndarray, int], np.ndarray]:
    rng = np.random.default_rng(seed)

    def apply(rgb: np.ndarray, _: int) -> np.ndarray:
        dark = rgb * np.float32(DARKNESS_GAIN) + rng.normal(0.0, 2.0, rgb.shape)
        return np.clip(dark, 0, 255).round().astype(np.uint8)

    return apply


def _shift(rgb: np.ndarray, dx: float, dy: float) -> np.ndarray:
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(rgb, matrix, (rgb.shape[1], rgb.shape[0]), borderMode=cv2.BORDER_REFLECT)


def _image_fault(fault: str, seed: int) -> Callable[[np.ndarray, int], np.ndarray]:
    if fault == "haze":
        return _haze
    if fault == "darkness":
        return _darkness(seed)
    return make_corruption(fault, 0.5, seed)


def _motion(fault: str, before: list[np.ndarray], after: list[np.ndarray], seed: int):
    """The frames delivered after the onset of a motion fault."""
    if fault == "reverse":  # back along the recorded path, from the frame before the onset
        return [before[max(0, len(before) - 2 - k)] for k in range(len(after))]
    if fault == "speedup":
        return after[::SPEEDUP]
    if fault == "spin":
        width = after[0].shape[1]
        return [
            np.roll(f, -round((k + 1) * SPIN_SHARE * width), axis=1) for k, f in enumerate(after)
        ]
    rng = np.random.default_rng(seed)  # shake
    height, width = after[0].shape[:2]
    return [
        _shift(f, *(rng.uniform(-1.0, 1.0, 2) * SHAKE_SHARE * np.array([width, height])))
        for f in after
    ]


def onset_episode(
    source: str,
    fault: str,
    frames: list[np.ndarray],
    stamps_ns: list[int],
    key: str | None = None,
) -> OnsetEpisode:
    """`frames` (one recording's consecutive frames) with `fault` from their middle on; random
    faults are seeded by `key` (default: `source`) and the fault, e.g. the recording's SHA-256, so
    the same bytes give the same faults wherever the bag lies."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault '{fault}' (known: {', '.join(FAULTS)})")
    onset = len(frames) // 2
    before, after = frames[:onset], frames[onset:]
    seed = _seed(key or source, fault)
    if FAULTS[fault] == "motion":
        after = _motion(fault, before, after, seed)
    else:
        corrupt = _image_fault(fault, seed)
        after = [corrupt(f, k) for k, f in enumerate(after)]
    delivered = before + after
    return OnsetEpisode(
        f"{source}/{fault}", fault, FAULTS[fault], delivered, stamps_ns[: len(delivered)], onset
    )


def onset_episodes(
    source: str,
    frames: list[np.ndarray],
    stamps_ns: list[int],
    faults: tuple[str, ...],
    key: str | None = None,
) -> Iterator[OnsetEpisode]:
    """One onset episode per fault, made when asked for (each holds its own frames)."""
    for fault in faults:
        yield onset_episode(source, fault, frames, stamps_ns, key)
