"""Frames changed the way a real camera, link or light changes them: the normal table's
photometric, JPEG, resolution and noise rows (docs/normal.md), as functions of an RGB frame and a
random generator. `vae-ood-monitor eval/score` replay a bag through them (`--exposure`, …); the
offline nuisance evaluation (training.nuisance) builds its rows from them. A changed frame reaches
the detectors as a camera sends it (`as_sent`: JPEG), so they decode it as onboard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

FrameTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# The JPEG quality the datasets are recorded at (training.data.episodes)
CAMERA_JPEG_QUALITY = 90


@dataclass(frozen=True)
class CompressedFrame:
    """The two fields of a sensor_msgs/CompressedImage the detectors' decoders read."""

    format: str
    data: bytes


def as_sent(rgb: np.ndarray, quality: int = CAMERA_JPEG_QUALITY) -> CompressedFrame:
    """`rgb` as a camera sends it, JPEG-compressed: the detectors then decode it as onboard
    (reduced-scale decoding, images.FrameDecoder) instead of getting the decoded pixels."""
    return CompressedFrame("jpeg", _encoded(rgb, quality).tobytes())


def _encoded(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding at quality {quality} failed")
    return data


def exposure(gain: float) -> FrameTransform:
    """Every pixel times `gain` (auto-exposure, a cloud), saturating at 255."""
    return lambda rgb, _: np.clip(rgb * np.float32(gain), 0, 255).round().astype(np.uint8)


def contrast(factor: float) -> FrameTransform:
    """Distances from the frame's mean grey level times `factor` (1.2: +20 %)."""

    def apply(rgb: np.ndarray, _: np.random.Generator) -> np.ndarray:
        mean = np.float32(rgb.mean())
        return np.clip((rgb - mean) * np.float32(factor) + mean, 0, 255).round().astype(np.uint8)

    return apply


def white_balance(shift: float) -> FrameTransform:
    """Red times 1 + shift, blue times 1 − shift (0.1: 10 % warmer, −0.1: cooler)."""
    gains = np.array([1.0 + shift, 1.0, 1.0 - shift], np.float32)
    return lambda rgb, _: np.clip(rgb * gains, 0, 255).round().astype(np.uint8)


def photometric(gain: float = 1.0, factor: float = 1.0, shift: float = 0.0) -> FrameTransform:
    """One camera setting, in the order a camera applies it: white balance `shift`, exposure
    `gain`, then contrast `factor` (settings at their neutral value are skipped)."""
    return chain(
        [
            *([white_balance(shift)] if shift else []),
            *([exposure(gain)] if gain != 1.0 else []),
            *([contrast(factor)] if factor != 1.0 else []),
        ]
    )


def jpeg(quality: int) -> FrameTransform:
    """Encoded and decoded again at JPEG `quality` (a camera or link compressing harder)."""

    def apply(rgb: np.ndarray, _: np.random.Generator) -> np.ndarray:
        decoded = cv2.imdecode(_encoded(rgb, quality), cv2.IMREAD_COLOR)
        return np.ascontiguousarray(decoded[..., ::-1])

    return apply


def resolution(width: int, height: int) -> FrameTransform:
    """The frame at width×height: area-averaged down (a smaller sensor), bilinear up (an
    approximation of a larger one: it adds pixels, not detail)."""

    def apply(rgb: np.ndarray, _: np.random.Generator) -> np.ndarray:
        smaller = width * height < rgb.shape[0] * rgb.shape[1]
        interpolation = cv2.INTER_AREA if smaller else cv2.INTER_LINEAR
        return cv2.resize(rgb, (width, height), interpolation=interpolation)

    return apply


def noise(sigma: float) -> FrameTransform:
    """Gaussian sensor noise of `sigma` grey levels, new in every frame."""

    def apply(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noisy = rgb + rng.normal(0.0, sigma, rgb.shape).astype(np.float32)
        return np.clip(noisy, 0, 255).round().astype(np.uint8)

    return apply


def chain(transforms: Sequence[FrameTransform]) -> FrameTransform:
    """The transforms applied one after the other, in the order given."""

    def apply(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for transform in transforms:
            rgb = transform(rgb, rng)
        return rgb

    return apply
