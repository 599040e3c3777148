"""Image-space OOD effects applied to rendered frames: weather on the lens, glare, sensor faults.

The simulator renders what changes the world (fog, darkness, obstacles, motion); what happens in
front of or inside the camera is applied here, with albumentations where it has the effect. Every
effect is deterministic for an episode seed. Static effects (a flare, dirt on the lens) keep one
seed for the whole episode; dynamic ones (rain, snow, noise) draw anew every frame.
"""

from __future__ import annotations

from collections.abc import Callable

import albumentations as A
import cv2
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


MUD_RGB = np.array([92, 68, 42], np.float32)  # dried mud, brown in RGB


def lens_dirt_coverage(intensity: float) -> float:
    """Share of the lens under mud: 10 % at intensity 0 up to 30 % at 1."""
    return 0.10 + 0.20 * intensity


def _lens_dirt(intensity: float, seed: int) -> Corruption:
    """Out-of-focus mud blobs stuck on the lens, covering `lens_dirt_coverage(intensity)` of it.

    Not albumentations' Spatter: at the blob scale a lens shows, its mud mask covers the whole
    frame or almost none of it depending on the seed (3 of the first datasets' 7 lens-dirt
    episodes showed no visible dirt, the other 4 a uniform tint), and its mud colour is blue on RGB
    frames. Here the covered share is exact: a smooth random field thresholded at its own quantile.
    """
    opacity = 0.75 + 0.20 * intensity
    alpha_by_shape: dict[tuple[int, int], np.ndarray] = {}

    def mud_alpha(height: int, width: int) -> np.ndarray:
        field = np.random.default_rng(seed).standard_normal((height, width)).astype(np.float32)
        field = cv2.GaussianBlur(field, (0, 0), 0.04 * width, borderType=cv2.BORDER_REFLECT)  # blobs ~a tenth of the frame
        mud = (field >= np.quantile(field, 1.0 - lens_dirt_coverage(intensity))).astype(np.float32)
        soft = cv2.GaussianBlur(mud, (0, 0), 0.01 * width)  # out of focus: soft edges
        return (soft * opacity)[..., None]

    def apply(rgb: np.ndarray, step: int) -> np.ndarray:
        shape = rgb.shape[:2]
        if shape not in alpha_by_shape:
            alpha_by_shape[shape] = mud_alpha(*shape)
        alpha = alpha_by_shape[shape]
        return (rgb * (1.0 - alpha) + MUD_RGB * alpha).round().astype(np.uint8)

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
        return _lens_dirt(intensity, seed)
    if name == "noise":
        std = 0.25 + 0.25 * intensity
        return _albumentation(A.GaussNoise(std_range=(std, std), p=1.0), seed, static=False)
    if name == "frozen":
        return _frozen()
    if name == "black":
        return _black(seed)
    raise ValueError(f"unknown corruption '{name}' (known: {', '.join(CORRUPTIONS)})")


CORRUPTIONS = ("glare", "rain", "snow", "lens_dirt", "noise", "frozen", "black")
