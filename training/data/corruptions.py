"""Image-space OOD effects applied to rendered frames: weather on the lens, glare, sensor faults.

The simulator renders what changes the world (fog, darkness, obstacles, motion); what happens in
front of or inside the camera is applied here, with albumentations where it has the effect. Every
effect is deterministic for an episode seed. Static effects (a flare, dirt on the lens) keep one
seed for the whole episode; dynamic ones (rain, snow, noise) draw anew every frame.
"""

from __future__ import annotations

from collections.abc import Callable

import albumentations as A
import numpy as np

Corruption = Callable[[np.ndarray, int], np.ndarray]
"""(rgb frame, frame index since onset) -> corrupted rgb frame."""


def _albumentation(transform: A.BasicTransform, seed: int, static: bool) -> Corruption:
    pipeline = A.Compose([transform])

    def apply(rgb: np.ndarray, step: int) -> np.ndarray:
        pipeline.set_random_seed(seed if static else seed + step)
        return pipeline(image=rgb)["image"]

    return apply


def _glare(intensity: float, seed: int) -> Corruption:
    """Over-exposure plus a sun flare: the camera looking into a low sun."""
    gain = 1.4 + 1.0 * intensity
    flare = _albumentation(
        A.RandomSunFlare(flare_roi=(0.1, 0.0, 0.9, 0.4), src_radius=int(200 + 250 * intensity), method="overlay", p=1.0),
        seed,
        static=True,
    )

    def apply(rgb: np.ndarray, step: int) -> np.ndarray:
        exposed = np.clip(rgb.astype(np.float32) * gain + 25.0, 0, 255).astype(np.uint8)
        return flare(exposed, step)

    return apply


def _frozen() -> Corruption:
    """The driver keeps delivering the first frame after onset: a hung camera pipeline."""
    held: list[np.ndarray] = []

    def apply(rgb: np.ndarray, step: int) -> np.ndarray:
        if not held:
            held.append(rgb.copy())
        return held[0]

    return apply


def _black(seed: int) -> Corruption:
    """A dead sensor or a cap on the lens: near-black frames with read-out noise."""
    rng = np.random.default_rng(seed)

    def apply(rgb: np.ndarray, step: int) -> np.ndarray:
        return rng.integers(0, 6, size=rgb.shape, dtype=np.uint8)

    return apply


def make_corruption(name: str, intensity: float, seed: int) -> Corruption:
    """The image-space effect `name` at `intensity` in [0, 1]."""
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"intensity must be in [0, 1], got {intensity}")
    if name == "glare":
        return _glare(intensity, seed)
    if name == "rain":
        rain_type = "heavy" if intensity < 0.5 else "torrential"
        return _albumentation(A.RandomRain(rain_type=rain_type, brightness_coefficient=0.75, p=1.0), seed, static=False)
    if name == "snow":
        level = 0.25 + 0.45 * intensity
        return _albumentation(
            A.RandomSnow(snow_point_range=(level, level), brightness_coeff=2.5, method="bleach", p=1.0), seed, static=False
        )
    if name == "lens_dirt":
        threshold = 0.68 - 0.12 * intensity  # lower threshold: more of the lens covered
        return _albumentation(
            A.Spatter(mode="mud", cutout_threshold=threshold, intensity=0.6 + 0.4 * intensity, p=1.0), seed, static=True
        )
    if name == "noise":
        std = 0.25 + 0.25 * intensity
        return _albumentation(A.GaussNoise(std_range=(std, std), p=1.0), seed, static=False)
    if name == "frozen":
        return _frozen()
    if name == "black":
        return _black(seed)
    raise ValueError(f"unknown corruption '{name}' (known: {', '.join(CORRUPTIONS)})")


CORRUPTIONS = ("glare", "rain", "snow", "lens_dirt", "noise", "frozen", "black")
