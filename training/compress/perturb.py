"""Label-free perturbed copies of the training inputs, so a distilled student copies the teacher
beyond the narrow manifold of normal driving.

A student that only ever saw in-distribution inputs answers anything else by extrapolation: a
black frame, which the teacher maps far from normal driving, may land near it for the student.
The monitor's score lives exactly there, so the student also learns the teacher's posterior on
perturbed inputs ("function matching": distil on the inputs you care about, not only the
training set). The perturbations are convex combinations — an input blended towards a uniform
value per channel (an image darker, brighter, tinted, up to a uniform frame; a flow stack towards
a uniform translation, down to none) or two inputs mixed — and therefore commute with resampling:
the teacher at its input size and the student at its own see the same perturbed input, so the
targets stay exact. No OOD label or scenario is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNIFORM_COLOUR = -1  # partner index meaning "blend towards a uniform colour"


@dataclass(frozen=True)
class Perturbations:
    """One perturbation per copy: input `source` mixed with input `partner` (or a uniform value per
    channel), keeping the share `weight` of the source. The uniform values depend only on the
    seed and the channel count, so every encoder input of the same kind gets the same ones."""

    source: np.ndarray  # (copies,) row indices
    partner: np.ndarray  # (copies,) row indices, or UNIFORM_COLOUR
    weight: np.ndarray  # (copies,) in [0, 1]
    seed: int

    @classmethod
    def draw(cls, frames: int, copies_per_frame: int, seed: int) -> Perturbations:
        """Every input `copies_per_frame` times: half blended towards uniform values (weight 0–0.8
        of the input left), half mixed with another random input (weight 0.2–0.8)."""
        if frames < 2 or copies_per_frame < 1:
            raise ValueError(
                "perturbed copies need at least 2 frames and 1 copy per frame, "
                f"got {frames} frames, {copies_per_frame} copies"
            )
        rng = np.random.default_rng(seed)
        source = np.tile(np.arange(frames), copies_per_frame)
        count = source.size
        uniform = rng.random(count) < 0.5
        partner = np.where(
            uniform, UNIFORM_COLOUR, (source + rng.integers(1, frames, count)) % frames
        )
        weight = np.where(uniform, rng.uniform(0.0, 0.8, count), rng.uniform(0.2, 0.8, count))
        return cls(source, partner, weight, seed)

    def uniform_values(self, channels: int, image: bool) -> np.ndarray:
        """(copies, channels): image intensities in [0, 255], normalised flows in [-1, 1]."""
        unit = np.random.default_rng([self.seed, channels]).random((self.source.size, channels))
        return unit * 255.0 if image else 2.0 * unit - 1.0

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """The perturbed copies of `rows` (N, C, H, W) at any H, W: uint8 images (out: uint8) or
        normalised flow stacks (float, out: the same dtype)."""
        if rows.ndim != 4:
            raise ValueError(
                f"perturbations apply to rows of shape (N, channels, H, W), got shape {rows.shape}"
            )
        if len(rows) <= int(max(self.source.max(), self.partner.max())):
            raise ValueError(f"perturbations were drawn for more frames than the {len(rows)} given")
        image = rows.dtype == np.uint8
        uniform_values = self.uniform_values(rows.shape[1], image)
        out = np.empty((self.source.size, *rows.shape[1:]), dtype=rows.dtype)
        for start in range(
            0, self.source.size, 256
        ):  # in chunks: float copies of every row would double the memory
            part = slice(start, start + 256)
            weight = self.weight[part, None, None, None]
            partner = self.partner[part]
            mixed = rows[np.maximum(partner, 0)].astype(np.float32)
            uniform = partner == UNIFORM_COLOUR
            mixed[uniform] = uniform_values[part][uniform][:, :, None, None]
            blended = weight * rows[self.source[part]].astype(np.float32) + (1.0 - weight) * mixed
            out[part] = np.rint(blended) if image else blended
        return out
