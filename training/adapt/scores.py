"""The new world added to a shipped score, and the decision tuned on the user's own onsets.

The shipped students score frames by a Gaussian mixture over their posterior and pooled conv
features (vae_ood_monitor.scoring), fitted on the default world. Adapting keeps those components
and adds components fitted on the new world's frames (`merged_score`), weighted DEFAULT_WORLD_SHARE
to the default world: a frame is typical when it is typical of either world, and the default world
needs no replayed data to stay in distribution — its density is in the bundle. The band peak
(mixture_band_peak) takes, per band maximum, the larger of the shipped and the pooled ID mean and
scale, so it never rises for a frame of either world.

Calibration scores, which the conformal p-values rank a frame among, come from both worlds in equal
numbers: the new world's held out (components fitted on the first halves of the recordings score
the second halves and vice versa), the default world's from the shipped calibration scores plus the
most the merge can raise a default-world frame's score (`merge_shift`: adding components lowers
the mixture's score of a frame by at least the default weight's share, so shipped score + shift
bounds it from above). The decision is then tuned (training.calibrate.tune_decision) on the
validation parts and their synthetic onsets (training.adapt.faults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.mixture import GaussianMixture

from training.adapt.recordings import AdaptError
from training.calibrate import (
    DETECTOR_CATEGORIES,
    MIXTURE_COMPONENTS,
    MIXTURE_REGULARISATION,
    SCORE_TAILS,
    VARIANCE_FLOOR,
    ScoredEpisode,
    TuningResult,
    tune_decision,
)
from vae_ood_monitor.bundle import Bundle
from vae_ood_monitor.scoring import (
    BAND_KINDS,
    BandPeak,
    Latents,
    LatentScore,
    Mixture,
    band_mask,
    concatenate_outputs,
    posterior_features,
)

MERGEABLE = ("mahalanobis_pooled", "mixture_pooled", "mixture_bands", "mixture_band_peak")
DEFAULT_WORLD_SHARE = 0.5  # mixture weight and calibration share of the default world
FRAMES_PER_PARAMETER = 2  # new-world frames per component and feature at least
MIXTURE_STARTS = 2
ADAPT_ID_BUDGET = 0.0  # share of the user's ID validation frames the alarm level may let through


def check_mergeable(bundle: Bundle) -> None:
    if bundle.score.kind not in MERGEABLE:
        raise AdaptError(
            f"{bundle.path}: its {bundle.score.kind} score cannot take new components; "
            f"adapt a bundle scored by {', '.join(MERGEABLE)} (the shipped students are)"
        )


def _normalised(mixture: Mixture) -> Mixture:
    return Mixture(mixture.mean, mixture.precision, mixture.weights / mixture.weights.sum())


def _log_mass(mixture: Mixture) -> float:
    """log Σ_k w_k √det(P_k) of a mixture with weights summing to one: the normaliser of the
    score's component priors (vae_ood_monitor.scoring._mixture_log_prior)."""
    log_det = np.array([np.linalg.slogdet(p)[1] for p in mixture.precision])
    terms = np.log(mixture.weights) + 0.5 * log_det
    top = terms.max()
    return float(top + np.log(np.exp(terms - top).sum()))


def fit_mixture(features: np.ndarray, seed: int = 0) -> Mixture:
    """A mixture of as many components as the frames support (at most the shipped count),
    fitted on standardised features as training.calibrate fits them."""
    count, size = features.shape
    components = int(np.clip(count // (FRAMES_PER_PARAMETER * size), 1, MIXTURE_COMPONENTS))
    mean = features.mean(axis=0)
    scale = np.sqrt(features.var(axis=0) + VARIANCE_FLOOR)
    mixture = GaussianMixture(
        components,
        covariance_type="full",
        reg_covar=MIXTURE_REGULARISATION,
        n_init=MIXTURE_STARTS,
        random_state=seed,
    ).fit((features - mean) / scale)
    return Mixture(
        mean + scale * mixture.means_,
        mixture.precisions_ / np.outer(scale, scale),
        mixture.weights_,
    )


def merge_mixtures(old: Mixture, new: Mixture, share: float) -> tuple[Mixture, float]:
    """Both mixtures' components, weighted `share` to `old`, and the most the merge raises the
    score of any frame over `old`'s (module docstring)."""
    old, new = _normalised(old), _normalised(new)
    merged = Mixture(
        np.concatenate([old.mean, new.mean]),
        np.concatenate([old.precision, new.precision]),
        np.concatenate([share * old.weights, (1.0 - share) * new.weights]),
    )
    return merged, 2.0 * (_log_mass(merged) - _log_mass(old) - math.log(share))


def merge_band_peak(old: BandPeak, bands: np.ndarray, share: float) -> BandPeak:
    """Per band maximum the larger of the shipped and the pooled (both worlds) mean and scale."""
    new_mean, new_var = bands.mean(axis=0), bands.var(axis=0)
    mean = share * old.mean + (1.0 - share) * new_mean
    var = share * (old.scale**2 + old.mean**2) + (1.0 - share) * (new_var + new_mean**2) - mean**2
    pooled_scale = np.sqrt(np.maximum(var, 0.0) + VARIANCE_FLOOR)
    return BandPeak(np.maximum(old.mean, mean), np.maximum(old.scale, pooled_scale))


def merged_score(
    old: LatentScore, new_world: Latents, share: float = DEFAULT_WORLD_SHARE, seed: int = 0
) -> tuple[LatentScore, float]:
    """`old` with components fitted on `new_world` added, and the bound on how much the merge
    raises a default-world frame's score."""
    features = posterior_features(new_world, old.dims, pooled=True)
    if old.kind == "mahalanobis_pooled":
        kind, rest_old = "mixture_pooled", Mixture(old.mean[None], old.precision[None], np.ones(1))
    else:
        kind, rest_old = old.kind, Mixture(old.mean, old.precision, old.weights)
    in_bands = (
        band_mask(old.dims, old.pooled, old.bands, kind)
        if kind in BAND_KINDS
        else np.zeros(features.shape[1], dtype=bool)
    )
    rest, shift = merge_mixtures(rest_old, fit_mixture(features[:, ~in_bands], seed), share)
    band_mixture, band_peak = None, None
    if kind == "mixture_bands":
        band_mixture, band_shift = merge_mixtures(
            old.band_mixture, fit_mixture(features[:, in_bands], seed), share
        )
        shift += band_shift
    elif kind == "mixture_band_peak":
        band_peak = merge_band_peak(old.band_peak, features[:, in_bands], share)
    score = LatentScore(
        kind,
        old.dims,
        rest.mean,
        rest.precision,
        old.pooled,
        rest.weights,
        old.bands if kind in BAND_KINDS else {},
        band_mixture,
        band_peak,
    )
    return score, shift


def _quantiles(values: np.ndarray, count: int) -> np.ndarray:
    """`count` evenly spaced order statistics of `values`."""
    ordered = np.sort(values)
    return ordered[np.linspace(0, len(ordered) - 1, count).round().astype(int)]


@dataclass(frozen=True)
class AdaptedScore:
    score: LatentScore
    calibration: np.ndarray
    shift: float
    new_world_calibration: int  # how many of the calibration scores are the new world's
    held_out: list[np.ndarray]  # per recording and half, its frames' held-out scores in order


def _joined(parts: list[Latents]) -> Latents:
    return {name: concatenate_outputs([p[name] for p in parts]) for name in parts[0]}


def adapt_score(
    shipped: Bundle, halves: tuple[list[Latents], list[Latents]], seed: int = 0
) -> AdaptedScore:
    """The merged score fitted on both halves of the new world's fit frames (per recording, its
    first and its second half), and its calibration scores (module docstring)."""
    held_out: list[np.ndarray] = []
    for held, fitted in (halves, halves[::-1]):
        partial, _ = merged_score(shipped.score, _joined(fitted), seed=seed)
        held_out += [partial(latents) for latents in held]
    score, shift = merged_score(shipped.score, _joined(halves[0] + halves[1]), seed=seed)
    new_scores = np.concatenate(held_out)
    default_scores = _quantiles(shipped.calibration_scores, len(new_scores)) + shift
    return AdaptedScore(
        score,
        np.concatenate([new_scores, default_scores]),
        shift,
        len(new_scores),
        held_out,
    )


def tune(
    kind: str, shipped: Bundle, calibration: np.ndarray, validation: list[ScoredEpisode]
) -> TuningResult:
    """The shipped decision's kind of decision (tail, extrapolation) tuned anew on the validation
    episodes; recorded OOD onsets (category 'recorded') count for both detectors. No ID budget,
    whatever the shipped bundle's: the user's validation is a few seconds of driving, and a level
    that lets 1 % of those frames through let 6.7 % of the held-back frames through
    (docs/adapt.md)."""
    return tune_decision(
        calibration,
        validation,
        SCORE_TAILS[shipped.score.kind],
        (*DETECTOR_CATEGORIES[kind], "recorded"),
        shipped.decision.extrapolate,
        ADAPT_ID_BUDGET,
    )
