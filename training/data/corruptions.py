"""Image-space OOD effects applied to rendered frames: weather on the lens, glare, sensor faults.

The simulator renders what changes the world (fog, darkness, obstacles, motion); what happens in
front of or inside the camera is applied here, with albumentations where it has the effect. Every
effect is deterministic for an episode seed. Static effects (a flare, dirt on the lens) keep one
seed for the whole episode; dynamic ones (rain, snow, noise) draw anew every frame.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

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


@lru_cache(maxsize=256)  # a glare episode's flare, and so its weights, is the same in every frame
def blend_table(alpha: float) -> np.ndarray:
    """table[top, bottom] = alpha·top + (1 − alpha)·bottom for every pair of 8-bit values, as one
    fused multiply-add in 32-bit floats rounded half to even — what albucore's blending computed on
    this AMD EPYC — emulated in plain numpy (alpha·top is exact in float64, then one rounding to
    float32), so every CPU gets the same bytes. Read-only: the table is shared."""
    top, bottom = np.meshgrid(
        np.arange(256, dtype=np.float64), np.arange(256, dtype=np.float32), indexing="ij"
    )
    weight_top, weight_bottom = np.float32(alpha), np.float32(1.0 - alpha)
    fused = (np.float64(weight_top) * top + (weight_bottom * bottom).astype(np.float64)).astype(
        np.float32
    )
    table = np.clip(np.rint(fused), 0, 255).astype(np.uint8)
    table.flags.writeable = False
    return table


class PortableSunFlare(A.RandomSunFlare):
    """albumentations' overlay sun flare (same random flare per seed), blended by `blend_table`.

    The library blends through albucore's `add_weighted`, i.e. simsimd's `wsum`, whose kernel
    depends on the CPU: on Intel Sapphire Rapids it scales 8-bit pixels in 16-bit floats, elsewhere
    in 32-bit, and the flare's ~30 chained blends then differ — a dataset rendered on one machine
    was not the dataset rendered on another (docs/data.md). Where the library computes in 32-bit
    floats (AMD EPYC here), this gives the very same bytes. Each blend touches only the box around
    the circles drawn so far: elsewhere the overlay equals the output, and blending a pixel with
    itself leaves it as it is.
    """

    def apply(
        self, img: np.ndarray, flare_center: tuple[float, float], circles: list[Any], **params: Any
    ) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"the sun flare needs an RGB uint8 frame, got {img.dtype} of shape {img.shape}"
            )
        overlay, output = img.copy(), img.copy()
        box = None  # rows and columns where overlay and output may differ: none yet
        weighted_alpha = total_radius = 0.0
        for alpha, centre, radius, colour in circles:  # ghost circles along a line through the sun
            weighted_alpha += alpha * radius
            total_radius += radius
            box = _draw_and_blend(overlay, output, box, centre, radius, colour, alpha)
        # The sun: growing discs around its centre, each blended more weakly (alpha cubed).
        overlay[:] = output
        box = None
        steps = self.src_radius // 10
        alphas = np.linspace(0.0, min(weighted_alpha / total_radius * 5, 1.0), num=steps)
        radii = np.linspace(1, self.src_radius, num=steps)
        centre = (int(flare_center[0]), int(flare_center[1]))
        for i in range(steps):
            alpha = float(alphas[steps - i - 1])
            box = _draw_and_blend(
                overlay, output, box, centre, int(radii[i]), self.src_color, alpha * alpha * alpha
            )
        return output


Box = tuple[int, int, int, int]  # top, bottom, left, right (exclusive)


def _draw_and_blend(
    overlay: np.ndarray,
    output: np.ndarray,
    box: Box | None,
    centre: tuple[int, int],
    radius: int,
    colour: tuple[int, ...],
    alpha: float,
) -> Box:
    """Draw a filled circle on `overlay`, blend `overlay` into `output` in place with weight
    `alpha` (blend_table) within `box` grown by the circle, and return that box."""
    height, width = output.shape[:2]
    x, y, reach = centre[0], centre[1], radius + 2  # a filled circle's pixels, with a margin
    top, bottom, left, right = box or (height, 0, width, 0)
    box = (
        max(0, min(top, y - reach)),
        min(height, max(bottom, y + reach + 1)),
        max(0, min(left, x - reach)),
        min(width, max(right, x + reach + 1)),
    )
    cv2.circle(overlay, centre, radius, colour, -1)
    region = (slice(box[0], box[1]), slice(box[2], box[3]))
    output[region] = blend_table(alpha)[overlay[region], output[region]]
    return box


def _glare(intensity: float, seed: int) -> Corruption:
    """Over-exposure plus a sun flare: the camera looking into a low sun."""
    gain = 1.4 + 1.0 * intensity
    flare = _albumentation(
        PortableSunFlare(
            flare_roi=(0.1, 0.0, 0.9, 0.4),
            src_radius=int(200 + 250 * intensity),
            method="overlay",
            p=1.0,
        ),
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
        field = cv2.GaussianBlur(
            field, (0, 0), 0.04 * width, borderType=cv2.BORDER_REFLECT
        )  # blobs ~a tenth of the frame
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
        return _albumentation(
            A.RandomRain(rain_type=rain_type, brightness_coefficient=0.75, p=1.0),
            seed,
            static=False,
        )
    if name == "snow":
        level = 0.25 + 0.45 * intensity
        return _albumentation(
            A.RandomSnow(
                snow_point_range=(level, level), brightness_coeff=2.5, method="bleach", p=1.0
            ),
            seed,
            static=False,
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
