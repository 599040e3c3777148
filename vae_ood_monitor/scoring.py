"""Latent-space OOD scores: how the encoders' posteriors (μ, logσ²) of a frame become one number.

Two kinds, both fitted on in-distribution calibration frames and stored in the bundle:

- ``kl``: the papers' score, KL divergence of the posterior from the N(0, I) prior, summed over
  the active latent dimensions (an unfamiliar input pushes the posterior away from where the
  prior put its mass; DESTION 2021, RTCSA 2022).
- ``mahalanobis``: Mahalanobis distance of the posterior parameters [μ, logσ²] from their
  in-distribution mean under their in-distribution covariance. It also catches inputs that the
  encoder maps *closer* to the prior than usual (fog, frozen flow — the KL then falls) and uses
  how the latent dimensions co-vary on normal driving.

The training pipeline picks the kind per detector on the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCORE_KINDS = ("kl", "mahalanobis")
Latents = dict[str, tuple[np.ndarray, np.ndarray]]  # encoder name → (μ, logσ²), one row per frame


def kl_per_dimension(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(N(mu, exp(logvar)) || N(0, 1)) for every latent dimension (last axis)."""
    mu = mu.astype(np.float64)
    logvar = np.clip(logvar.astype(np.float64), -30.0, 30.0)
    return 0.5 * (mu * mu + np.exp(logvar) - 1.0 - logvar)


def select_active_dimensions(mu: np.ndarray, logvar: np.ndarray, min_mean_kl: float = 0.05) -> list[int]:
    """Latent dimensions that carry information on in-distribution data.

    A β-VAE switches unused dimensions off (posterior = prior, KL ≈ 0 for every input); they add only
    noise to the KL score. Keeping the dimensions whose mean KL on ID calibration frames exceeds
    `min_mean_kl` nats needs no OOD data, so the choice cannot leak the test scenarios.
    """
    mean_kl = kl_per_dimension(mu, logvar).mean(axis=0)
    active = [int(i) for i in np.flatnonzero(mean_kl > min_mean_kl)]
    return active or [int(np.argmax(mean_kl))]


def posterior_features(latents: Latents, dims: dict[str, list[int]]) -> np.ndarray:
    """[μ, logσ²] of the chosen dimensions of every encoder, one row per frame."""
    parts = []
    for name, chosen in dims.items():
        mu, logvar = latents[name]
        parts += [mu[:, chosen], logvar[:, chosen]]
    return np.concatenate(parts, axis=1).astype(np.float64)


@dataclass(frozen=True)
class LatentScore:
    """A fitted score: its kind, the latent dimensions it reads per encoder and, for
    ``mahalanobis``, the ID mean and precision (inverse covariance) of the feature vector."""

    kind: str
    dims: dict[str, list[int]]
    mean: np.ndarray | None = field(default=None, compare=False)
    precision: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in SCORE_KINDS:
            raise ValueError(f"unknown score kind {self.kind!r} (known: {', '.join(SCORE_KINDS)})")
        if self.kind == "mahalanobis":
            size = 2 * sum(len(d) for d in self.dims.values())
            if self.mean is None or self.precision is None or self.mean.shape != (size,) or self.precision.shape != (size, size):
                raise ValueError(f"mahalanobis score needs a mean of {size} values and a {size}×{size} precision matrix")

    def __call__(self, latents: Latents) -> np.ndarray:
        if self.kind == "kl":
            return sum(kl_per_dimension(*latents[name])[:, dims].sum(axis=1) for name, dims in self.dims.items())  # type: ignore[return-value]
        centred = posterior_features(latents, self.dims) - self.mean
        return np.einsum("ij,jk,ik->i", centred, self.precision, centred)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "dims": self.dims}
        if self.kind == "mahalanobis":
            data["mean"] = [round(float(v), 7) for v in self.mean]  # type: ignore[union-attr]
            data["precision"] = [[round(float(v), 7) for v in row] for row in self.precision]  # type: ignore[union-attr]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentScore:
        dims = {str(name): [int(d) for d in values] for name, values in data["dims"].items()}
        if data["kind"] == "mahalanobis":
            return cls("mahalanobis", dims, np.asarray(data["mean"], dtype=np.float64), np.asarray(data["precision"], dtype=np.float64))
        return cls(data["kind"], dims)
