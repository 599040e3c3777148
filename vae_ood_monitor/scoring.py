"""Latent-space OOD score: KL divergence of the encoder's posterior from the N(0, I) prior.

An input like the training data lands where the prior put its mass; an unfamiliar one pushes the
posterior away, and the KL of the informative latent dimensions grows (DESTION 2021, RTCSA 2022).
"""

from __future__ import annotations

import numpy as np


def kl_per_dimension(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(N(mu, exp(logvar)) || N(0, 1)) for every latent dimension (last axis)."""
    mu = mu.astype(np.float64)
    logvar = np.clip(logvar.astype(np.float64), -30.0, 30.0)
    return 0.5 * (mu * mu + np.exp(logvar) - 1.0 - logvar)


def kl_score(mu: np.ndarray, logvar: np.ndarray, dims: list[int] | np.ndarray | None = None) -> np.ndarray:
    """Sum of the per-dimension KL over `dims` (all when None); one score per row."""
    kl = kl_per_dimension(mu, logvar)
    if dims is not None:
        kl = kl[..., np.asarray(dims, dtype=int)]
    return kl.sum(axis=-1)


def select_active_dimensions(mu: np.ndarray, logvar: np.ndarray, min_mean_kl: float = 0.05) -> list[int]:
    """Latent dimensions that carry information on in-distribution data.

    A β-VAE switches unused dimensions off (posterior = prior, KL ≈ 0 for every input); they add only
    noise to the score. Keeping the dimensions whose mean KL on ID calibration frames exceeds
    `min_mean_kl` nats needs no OOD data, so the choice cannot leak the test scenarios.
    """
    mean_kl = kl_per_dimension(mu, logvar).mean(axis=0)
    active = [int(i) for i in np.flatnonzero(mean_kl > min_mean_kl)]
    return active or [int(np.argmax(mean_kl))]
