"""Latent-space OOD scores: how the encoders' posteriors (μ, logσ²) of a frame — and, for the
pooled kinds, their pooled conv features — become one number.

Six kinds, all fitted on in-distribution calibration frames and stored in the bundle:

- ``kl``: the papers' score, KL divergence of the posterior from the N(0, I) prior, summed over
  the active latent dimensions (an unfamiliar input pushes the posterior away from where the
  prior put its mass; DESTION 2021, RTCSA 2022).
- ``mahalanobis``: Mahalanobis distance of the posterior parameters [μ, logσ²] from their
  in-distribution mean under their in-distribution covariance. It also catches inputs that the
  encoder maps *closer* to the prior than usual (fog, frozen flow — the KL then falls) and uses
  how the latent dimensions co-vary on normal driving.
- ``mahalanobis_pooled``: the same over [μ, logσ², pooled], where pooled holds the spatial mean of
  every conv block's output and, where exported with them, one block's maxima over the top
  horizontal bands (the encoder's ONNX output ``pooled``, training.export.BandMax). The latent
  code keeps what reconstructs the whole scene and drops what it cannot: a bus filling a quarter
  of the view or mud on the lens hardly moves it, but they change how strongly the early filters
  respond (Lee et al., NeurIPS 2018, score intermediate features the same way).
- ``mixture_pooled``: the same features under a Gaussian mixture instead of one Gaussian. Normal
  driving is not one cloud: a drive under a traffic light or on a town with other tiles sits
  apart from the rest, and one covariance wide enough for all of them lets lens dirt or a bus
  hide in directions only those drives needed. The score is −2 log Σ_k π_k exp(−d_k / 2), d_k the
  Mahalanobis distance to component k and π_k its weight times √det(precision_k), normalised: the
  mixture's negative log-likelihood up to a constant, never below the nearest component's d_k,
  and with one component exactly the Mahalanobis distance.
- ``mixture_bands``: where the pooled features end in band maxima, those maxima under a mixture of
  their own and the rest under another, the score the sum of the two. One mixture over all of them
  must spend its components on the whole scene; a crowd of duckies at the horizon moves only a few
  band maxima, and under their own mixture it is not outweighed by the hundred features it does not
  move (docs/training.md).
- ``mixture_band_peak``: the same mixture over all but the band maxima, plus the squared largest
  rise of any band maximum above its ID mean, in ID standard deviations (max_j max(z_j, 0)²: the
  most raised band maximum's Gaussian term, on the mixture's −2 log-likelihood scale). A small
  object at the horizon raises a few maxima; a max notices one raised feature however many stay
  put, and unlike a second mixture it needs no EM fit, so refitting with another seed does not
  move it (docs/results.md).

The training pipeline picks the kind per detector on the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

SCORE_KINDS = (
    "kl",
    "mahalanobis",
    "mahalanobis_pooled",
    "mixture_pooled",
    "mixture_bands",
    "mixture_band_peak",
)
MAHALANOBIS_KINDS = ("mahalanobis", "mahalanobis_pooled")
MIXTURE_KINDS = ("mixture_pooled", "mixture_bands", "mixture_band_peak")
BAND_KINDS = ("mixture_bands", "mixture_band_peak")  # scores that treat the band maxima apart
POOLED_KINDS = ("mahalanobis_pooled", *MIXTURE_KINDS)


class EncoderOutputs(NamedTuple):
    """One encoder's outputs for a batch of frames, one row per frame."""

    mu: np.ndarray
    logvar: np.ndarray
    pooled: np.ndarray | None = (
        None  # pooled conv features (block means, maybe band maxima), where the ONNX has them
    )


Latents = dict[str, EncoderOutputs]  # encoder name → its outputs


def concatenate_outputs(parts: list[EncoderOutputs]) -> EncoderOutputs:
    """The rows of several batches of one encoder as one (pooled only where every batch has it);
    no batches: empty outputs."""
    if not parts:
        return EncoderOutputs(np.empty((0, 0)), np.empty((0, 0)))
    pooled = (
        np.concatenate([p.pooled for p in parts])
        if all(p.pooled is not None for p in parts)
        else None
    )  # type: ignore[misc]
    return EncoderOutputs(
        np.concatenate([p.mu for p in parts]), np.concatenate([p.logvar for p in parts]), pooled
    )


def kl_per_dimension(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(N(mu, exp(logvar)) || N(0, 1)) for every latent dimension (last axis)."""
    mu = mu.astype(np.float64)
    logvar = np.clip(logvar.astype(np.float64), -30.0, 30.0)
    return 0.5 * (mu * mu + np.exp(logvar) - 1.0 - logvar)


def select_active_dimensions(
    mu: np.ndarray, logvar: np.ndarray, min_mean_kl: float = 0.05
) -> list[int]:
    """Latent dimensions that carry information on in-distribution data.

    A β-VAE switches unused dimensions off (posterior = prior, KL ≈ 0 for every input); they add
    only noise to the KL score. Keeping the dimensions whose mean KL on ID calibration frames
    exceeds `min_mean_kl` nats needs no OOD data, so the choice cannot leak the test scenarios.
    """
    mean_kl = kl_per_dimension(mu, logvar).mean(axis=0)
    active = [int(i) for i in np.flatnonzero(mean_kl > min_mean_kl)]
    return active or [int(np.argmax(mean_kl))]


def posterior_features(
    latents: Latents, dims: dict[str, list[int]], pooled: bool = False
) -> np.ndarray:
    """[μ, logσ²] of the chosen dimensions of every encoder (and, with `pooled`, its pooled conv
    features), one row per frame."""
    parts = []
    for name, chosen in dims.items():
        outputs = latents[name]
        parts += [outputs.mu[:, chosen], outputs.logvar[:, chosen]]
        if pooled:
            if outputs.pooled is None:
                raise ValueError(
                    f"score needs encoder '{name}'s pooled features, "
                    "but its model has no 'pooled' output"
                )
            parts.append(outputs.pooled)
    return np.concatenate(parts, axis=1).astype(np.float64)


def _mixture_log_prior(
    kind: str,
    weights: np.ndarray | None,
    mean: np.ndarray | None,
    precision: np.ndarray | None,
    size: int,
) -> np.ndarray:
    """log π_k of a mixture over `size` features, checking its components on the way (a
    hand-edited bundle must fail here, by name)."""
    if (
        weights is None
        or weights.ndim != 1
        or weights.size == 0
        or not np.all(np.isfinite(weights))
        or np.any(weights <= 0.0)
    ):
        raise ValueError(f"{kind} score needs positive, finite weights, one per component")
    count = weights.size
    if (
        mean is None
        or precision is None
        or mean.shape != (count, size)
        or precision.shape != (count, size, size)
    ):
        raise ValueError(
            f"{kind} score with {count} components needs {count} means of {size} values "
            f"and {count} {size}×{size} precision matrices"
        )
    log_det = np.empty(count)
    for k, component in enumerate(precision):
        try:
            log_det[k] = 2.0 * np.log(np.diag(np.linalg.cholesky(component))).sum()
        except np.linalg.LinAlgError:
            raise ValueError(
                f"{kind} component {k}: the precision matrix is not positive definite"
            ) from None
    log_prior = np.log(weights) + 0.5 * log_det
    return log_prior - (log_prior.max() + np.log(np.exp(log_prior - log_prior.max()).sum()))


def _mixture_score(
    features: np.ndarray, mean: np.ndarray, precision: np.ndarray, log_prior: np.ndarray
) -> np.ndarray:
    """−2 log Σ_k π_k exp(−d_k / 2) (module docstring), finite however far out a frame lies."""
    centred = features[:, None, :] - mean[None]  # frame, component, feature
    distances = (np.einsum("nkd,kde->nke", centred, precision) * centred).sum(axis=2)
    exponents = log_prior - 0.5 * distances
    top = exponents.max(axis=1)
    return -2.0 * (top + np.log(np.exp(exponents - top[:, None]).sum(axis=1)))


def band_mask(
    dims: dict[str, list[int]], pooled: dict[str, int], bands: dict[str, int], kind: str
) -> np.ndarray:
    """Which of posterior_features' columns are band maxima: the last `bands[name]` of each
    encoder's pooled features (training.export.BandMax)."""
    if set(bands) != set(dims):
        raise ValueError(
            f"a {kind} score needs the band maxima count of every encoder it reads "
            f"({', '.join(dims)}), got {sorted(bands)}"
        )
    mask = []
    for name, chosen in dims.items():
        if not 0 < bands[name] <= pooled[name]:
            raise ValueError(
                f"{kind} score: encoder '{name}' has {pooled[name]} pooled features, "
                f"so {bands[name]} band maxima cannot end them"
            )
        mask += [False] * (2 * len(chosen) + pooled[name] - bands[name]) + [True] * bands[name]
    return np.asarray(mask, dtype=bool)


@dataclass(frozen=True)
class Mixture:
    """One Gaussian mixture's parameters: means (K, D), precisions (K, D, D), weights (K)."""

    mean: np.ndarray
    precision: np.ndarray
    weights: np.ndarray


@dataclass(frozen=True)
class BandPeak:
    """The band maxima's ID mean and standard deviation (D each),
    which their rises are measured in."""

    mean: np.ndarray
    scale: np.ndarray

    def check(self, size: int) -> None:
        """A hand-edited bundle fails here, by name."""
        if self.mean.shape != (size,) or self.scale.shape != (size,):
            raise ValueError(
                f"mixture_band_peak score needs a band_peak mean and scale of {size} values each"
            )
        if not (
            np.all(np.isfinite(self.mean))
            and np.all(np.isfinite(self.scale))
            and np.all(self.scale > 0.0)
        ):
            raise ValueError(
                "mixture_band_peak score needs a finite band_peak mean and a positive, finite scale"
            )

    def __call__(self, bands: np.ndarray) -> np.ndarray:
        """max_j max(z_j, 0)² per frame (module docstring)."""
        return (np.maximum((bands - self.mean) / self.scale, 0.0) ** 2).max(axis=1)


@dataclass(frozen=True)
class LatentScore:
    """A fitted score: its kind, the latent dimensions it reads per encoder and, for the
    Mahalanobis kinds, the ID mean and precision (inverse covariance) of the feature vector; for
    ``mixture_pooled`` one mean and precision per component (stacked) and the components'
    weights; for ``mixture_bands`` those of the mixture over all but the band maxima, how many
    band maxima end each encoder's pooled features (`bands`) and their own mixture
    (`band_mixture`); for ``mixture_band_peak`` the same but, instead of the band mixture, the
    band maxima's ID mean and scale (`band_peak`). The pooled kinds also say how many pooled
    features each encoder adds."""

    kind: str
    dims: dict[str, list[int]]
    mean: np.ndarray | None = field(default=None, compare=False)
    precision: np.ndarray | None = field(default=None, compare=False)
    pooled: dict[str, int] = field(default_factory=dict)
    weights: np.ndarray | None = field(default=None, compare=False)
    bands: dict[str, int] = field(default_factory=dict)
    band_mixture: Mixture | None = field(default=None, compare=False)
    band_peak: BandPeak | None = field(default=None, compare=False)
    _log_prior: np.ndarray | None = field(
        default=None, init=False, repr=False, compare=False
    )  # log π_k (module docstring)
    _band_log_prior: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    _in_bands: np.ndarray | None = field(
        default=None, init=False, repr=False, compare=False
    )  # which features are band maxima

    def __post_init__(self) -> None:
        if self.kind not in SCORE_KINDS:
            raise ValueError(f"unknown score kind {self.kind!r} (known: {', '.join(SCORE_KINDS)})")
        if self.reads_pooled and set(self.pooled) != set(self.dims):
            raise ValueError(
                f"a {self.kind} score needs the pooled feature count of every encoder it reads"
            )
        if not self.reads_pooled and self.pooled:
            raise ValueError(f"a {self.kind} score reads no pooled features")
        size = 2 * sum(len(d) for d in self.dims.values()) + sum(self.pooled.values())
        if self.kind in MAHALANOBIS_KINDS and (
            self.mean is None
            or self.precision is None
            or self.mean.shape != (size,)
            or self.precision.shape != (size, size)
        ):
            raise ValueError(
                f"{self.kind} score needs a mean of {size} values "
                f"and a {size}×{size} precision matrix"
            )
        if self.kind in BAND_KINDS:
            in_bands = band_mask(self.dims, self.pooled, self.bands, self.kind)
            object.__setattr__(self, "_in_bands", in_bands)
            band_size = int(in_bands.sum())
            if self.kind == "mixture_bands":
                band = self.band_mixture
                if band is None or self.band_peak is not None:
                    raise ValueError(
                        f"a {self.kind} score needs its band_mixture, and no band_peak"
                    )
                object.__setattr__(
                    self,
                    "_band_log_prior",
                    _mixture_log_prior(
                        f"{self.kind} band", band.weights, band.mean, band.precision, band_size
                    ),
                )
            else:
                if self.band_peak is None or self.band_mixture is not None:
                    raise ValueError(
                        f"a {self.kind} score needs its band_peak, and no band_mixture"
                    )
                self.band_peak.check(band_size)
            size -= band_size
        elif self.bands or self.band_mixture is not None or self.band_peak is not None:
            raise ValueError(f"a {self.kind} score has no band maxima terms")
        if self.kind in MIXTURE_KINDS:
            object.__setattr__(
                self,
                "_log_prior",
                _mixture_log_prior(self.kind, self.weights, self.mean, self.precision, size),
            )
        elif self.weights is not None:
            raise ValueError(f"a {self.kind} score has no mixture weights")

    @property
    def reads_pooled(self) -> bool:
        return self.kind in POOLED_KINDS

    def __call__(self, latents: Latents) -> np.ndarray:
        if self.kind == "kl":
            return sum(
                kl_per_dimension(latents[name].mu, latents[name].logvar)[:, dims].sum(axis=1)
                for name, dims in self.dims.items()
            )  # type: ignore[return-value]
        for name, width in self.pooled.items():
            found = latents[name].pooled
            if found is not None and found.shape[1] != width:
                raise ValueError(
                    f"score expects {width} pooled features from encoder '{name}', "
                    f"its model gives {found.shape[1]}"
                )
        features = posterior_features(latents, self.dims, self.reads_pooled)
        if self.kind in MAHALANOBIS_KINDS:
            centred = features - self.mean
            return np.einsum("ij,jk,ik->i", centred, self.precision, centred)
        if self.kind == "mixture_pooled":
            return _mixture_score(features, self.mean, self.precision, self._log_prior)  # type: ignore[arg-type]
        in_bands = self._in_bands
        rest = _mixture_score(features[:, ~in_bands], self.mean, self.precision, self._log_prior)  # type: ignore[arg-type]
        if self.band_peak is not None:
            return rest + self.band_peak(features[:, in_bands])
        band = self.band_mixture
        return rest + _mixture_score(
            features[:, in_bands], band.mean, band.precision, self._band_log_prior
        )  # type: ignore[union-attr, arg-type]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "dims": self.dims}
        if self.pooled:
            data["pooled"] = self.pooled
        if self.mean is not None and self.precision is not None:
            data["mean"] = np.round(self.mean, 7).tolist()
            data["precision"] = np.round(self.precision, 7).tolist()
        if self.weights is not None:
            data["weights"] = np.round(self.weights, 9).tolist()
        if self.bands:
            data["bands"] = self.bands
        if self.band_mixture is not None:
            band = self.band_mixture
            data["band_mixture"] = {
                "mean": np.round(band.mean, 7).tolist(),
                "precision": np.round(band.precision, 7).tolist(),
                "weights": np.round(band.weights, 9).tolist(),
            }
        if self.band_peak is not None:
            data["band_peak"] = {
                "mean": np.round(self.band_peak.mean, 7).tolist(),
                "scale": np.round(self.band_peak.scale, 7).tolist(),
            }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentScore:
        dims = {str(name): [int(d) for d in values] for name, values in data["dims"].items()}
        pooled = {str(name): int(width) for name, width in data.get("pooled", {}).items()}
        if data["kind"] in MAHALANOBIS_KINDS or data["kind"] in MIXTURE_KINDS:
            weights = np.asarray(data["weights"], dtype=np.float64) if "weights" in data else None
            bands = {str(name): int(count) for name, count in data.get("bands", {}).items()}
            band = data.get("band_mixture")
            band_mixture = (
                None
                if band is None
                else Mixture(
                    *(
                        np.asarray(band[key], dtype=np.float64)
                        for key in ("mean", "precision", "weights")
                    )
                )
            )
            peak = data.get("band_peak")
            band_peak = (
                None
                if peak is None
                else BandPeak(
                    *(np.asarray(peak[key], dtype=np.float64) for key in ("mean", "scale"))
                )
            )
            return cls(
                data["kind"],
                dims,
                np.asarray(data["mean"], dtype=np.float64),
                np.asarray(data["precision"], dtype=np.float64),
                pooled,
                weights,
                bands,
                band_mixture,
                band_peak,
            )
        return cls(data["kind"], dims, pooled=pooled)
