"""Fitting the latent score and choosing decision parameters from calibration (ID) and
validation (ID + OOD) data only.

Score: every candidate (KL of the active dimensions; Mahalanobis distance of [μ, logσ²] with a
Ledoit-Wolf or a diagonal covariance, and of [μ, logσ², pooled conv features] with a Ledoit-Wolf
covariance or under a Gaussian mixture where the encoders export them, and, where the pooled
features end in band maxima, under two mixtures, one for the band maxima and one for the rest, or
under the rest's mixture plus the most raised band maximum) is fitted on the calibration frames;
its calibration scores are cross-fitted, so the conformal p-values see held-out scores as the
robot will: by default on halves (fitted on every other calibration episode, scored on the rest,
and vice versa), or leaving one episode out (`cross_fit="episodes"`: each episode scored by the
candidate fitted on all the others). Fitted on half the driving, a rare manoeuvre of one half (a
sharp recovery turn) scores far beyond most OOD frames at test time, which then look as ordinary as
the top few per cent of the calibration frames: p-values stay coarse and decisions slow. Leaving
one episode out keeps the tail near the deployed fit's: sharper p-values, faster stops, and on the
shipped detectors more false ones on the test maps (measured in docs/experiments.md). Or fitted on
other drives (`cross_fit="train"`, split conformal: the train split's frames): the calibration
frames are then scored by the very fit the robot runs, as new drives will be, and the fit sees more
driving than either half. The candidate
whose conformal surprise has the highest frame-level AUROC on the validation split wins, with the
p-value tail (one- or two-sided) that achieved it.

Decision:
For every candidate (tail, ε, window, CUSUM drift) the alarm level is set just above the highest
CUSUM value any in-distribution validation frame reached (ID episodes and the ID part of onset
episodes), times a safety margin — so validation ID driving raises no alarm. With an ID budget
(`id_budget`, a share of those frames) the level clears all but that share instead: the highest
value is one moment of one drive (on the default data, a robot put down facing the road's edge line,
still for its first frames), and a budget keeps that moment from setting the level for every onset.
Among the candidates, the one that stops the most validation onset episodes of the detector's own
scenario categories within the delay bar (DELAY_BAR_FRAMES, the issue's 15 frames) wins, and among
those the smallest mean detection delay (a missed onset counts as the frames left in its episode):
by the mean alone one slow onset could outweigh several fast ones, and the bar counts onsets, not
frames. Own categories: the β-VAE watches appearance and sensor faults, the flow detector motion and
sensor faults; an onset the detector cannot see (fog for the flow detector) would only add the same
miss to every candidate and drown the differences in delay — the fused monitor catches it through
the other detector. The test split is never looked at.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.mixture import GaussianMixture

from vae_ood_monitor.decision import DecisionParams, conformal_p_values, cusum_trace
from vae_ood_monitor.metrics import auroc
from vae_ood_monitor.scoring import (
    BAND_KINDS,
    MIXTURE_KINDS,
    POOLED_KINDS,
    BandPeak,
    EncoderOutputs,
    Latents,
    LatentScore,
    Mixture,
    band_mask,
    concatenate_outputs,
    posterior_features,
    select_active_dimensions,
)

# The delay bar: an onset should be flagged within 15 frames (0.5 s at 30 fps).
DELAY_BAR_FRAMES = 15

TAILS = ("both", "upper")
# A Mahalanobis distance already grows in every direction away from normal driving; only the KL
# needs the lower tail too (an input the encoder maps onto the prior has a *small* KL).
SCORE_TAILS = {
    "kl": TAILS,
    "mahalanobis": ("upper",),
    "mahalanobis_pooled": ("upper",),
    "mixture_pooled": ("upper",),
    "mixture_bands": ("upper",),
    "mixture_band_peak": ("upper",),
}
EPSILONS = (0.04, 0.1, 0.2)
WINDOWS = (5, 10, 20)
# CUSUM decay per frame: absorbs mildly unusual stretches of normal driving (a new map, a new
# light) that would otherwise accumulate and force the alarm level up.
DRIFTS = (0.0, 5.0, 10.0, 20.0)
# The scenario categories whose onsets each detector's decision is tuned for (both watch sensor
# faults).
DETECTOR_CATEGORIES = {"bvae": ("appearance", "sensor"), "flow": ("motion", "sensor")}
THRESHOLD_MARGIN = 1.5
MIN_THRESHOLD = 5.0
# The largest ID budget tune_decision takes: the bar for flagged ID test frames (1 %).
MAX_ID_BUDGET = 0.01
VARIANCE_FLOOR = 1e-6  # keeps the precision finite for latent dimensions that never move
# The mixture_pooled score (vae_ood_monitor.scoring): components, fitted on standardised features
# with this much added to each component's covariance diagonal (keeps a small component's
# precision bounded), best of several seeded starts. 8 components: the smallest count of the
# plateau on the lit validation split (mean β-VAE delay 39 / 32 / 21 / 22 / 21 frames for 2 / 4 /
# 8 / 12 / 16 components, docs/experiments.md).
MIXTURE_COMPONENTS = 8
MIXTURE_REGULARISATION = 1e-2
MIXTURE_STARTS = 4


@dataclass(frozen=True)
class FittedScore:
    # kl, mahalanobis (Ledoit-Wolf covariance), mahalanobis_diag, mahalanobis_pooled (Ledoit-Wolf),
    # mixture_pooled, mixture_bands or mixture_band_peak
    name: str
    score: LatentScore
    calibration_scores: np.ndarray  # held-out score of every calibration frame


def concatenate_latents(latents: list[Latents]) -> Latents:
    """The frames of several streams as one (the same encoders' outputs, rows stacked)."""
    return {name: concatenate_outputs([l[name] for l in latents]) for name in latents[0]}


def _rows(latents: Latents, rows: slice) -> Latents:
    return {
        name: EncoderOutputs(*(None if part is None else part[rows] for part in out))
        for name, out in latents.items()
    }


def _mean_and_scale(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ID mean and standard deviation, floored so no feature's scale is zero."""
    return features.mean(axis=0), np.sqrt(features.var(axis=0) + VARIANCE_FLOOR)


def _fit_mixture(features: np.ndarray, seed: int = 0) -> Mixture:
    """A Gaussian mixture fitted on standardised features, in the features' own units; `seed`
    seeds its EM starts."""
    mean, scale = _mean_and_scale(features)
    mixture = GaussianMixture(
        MIXTURE_COMPONENTS,
        covariance_type="full",
        reg_covar=MIXTURE_REGULARISATION,
        n_init=MIXTURE_STARTS,
        random_state=seed,
    )
    mixture.fit((features - mean) / scale)
    return Mixture(
        mean + scale * mixture.means_,
        mixture.precisions_ / np.outer(scale, scale),
        mixture.weights_,
    )


def _fit(
    name: str,
    latents: Latents,
    min_mean_kl: float,
    bands: dict[str, int] | None = None,
    seed: int = 0,
) -> LatentScore:
    if name == "kl":
        return LatentScore(
            "kl",
            {
                encoder: select_active_dimensions(out.mu, out.logvar, min_mean_kl)
                for encoder, out in latents.items()
            },
        )
    dims = {encoder: list(range(out.mu.shape[1])) for encoder, out in latents.items()}
    pooled = (
        {encoder: out.pooled.shape[1] for encoder, out in latents.items() if out.pooled is not None}
        if name in POOLED_KINDS
        else {}
    )
    features = posterior_features(latents, dims, bool(pooled))
    if name == "mixture_pooled":  # _fit_mixture standardises the features itself
        mixture = _fit_mixture(features, seed)
        return LatentScore(name, dims, mixture.mean, mixture.precision, pooled, mixture.weights)
    if name in BAND_KINDS:
        bands = bands or {}
        in_bands = band_mask(dims, pooled, bands, name)
        rest, band_maxima = _fit_mixture(features[:, ~in_bands], seed), features[:, in_bands]
        if name == "mixture_bands":
            return LatentScore(
                name,
                dims,
                rest.mean,
                rest.precision,
                pooled,
                rest.weights,
                bands,
                _fit_mixture(band_maxima, seed),
            )
        return LatentScore(
            name,
            dims,
            rest.mean,
            rest.precision,
            pooled,
            rest.weights,
            bands,
            band_peak=BandPeak(*_mean_and_scale(band_maxima)),
        )
    mean, scale = _mean_and_scale(features)
    if name == "mahalanobis_diag":
        return LatentScore("mahalanobis", dims, mean, np.diag(1.0 / scale**2))
    # Shrink the correlation, not the covariance: features differ in scale by orders of magnitude
    # (switched-off dimensions barely move), and shrinking towards one common variance would
    # silence exactly those dimensions.
    correlation_precision = LedoitWolf().fit((features - mean) / scale).precision_
    return LatentScore(
        "mahalanobis_pooled" if pooled else "mahalanobis",
        dims,
        mean,
        correlation_precision / np.outer(scale, scale),
        pooled,
    )


# mahalanobis_pooled and the mixtures only where every encoder exports `pooled`, the mixtures
# only where every fit sees at least one frame per component and feature (864 for the 64×64
# students' 108 features; fewer cannot pin down a full covariance per component), mixture_bands
# and mixture_band_peak only where every encoder's pooled features end in band maxima. The
# mixtures are asked for by name (DEFAULT_SCORE_CANDIDATES leaves them out): their EM fit takes
# half a minute where the others take a second, and every bundle shipped before them was chosen
# without them.
SCORE_CANDIDATES = (
    "kl",
    "mahalanobis",
    "mahalanobis_diag",
    "mahalanobis_pooled",
    "mixture_pooled",
    "mixture_bands",
    "mixture_band_peak",
)
DEFAULT_SCORE_CANDIDATES = SCORE_CANDIDATES[:4]
CROSS_FITS = ("halves", "episodes", "train")


def _frames(latents: Latents) -> int:
    return len(next(iter(latents.values())).mu)


def _feature_count(latents: Latents) -> int:
    return sum(
        2 * out.mu.shape[1] + (0 if out.pooled is None else out.pooled.shape[1])
        for out in latents.values()
    )


def fit_scores(
    calibration: list[Latents],
    min_mean_kl: float = 0.05,
    cross_fit: str = "halves",
    candidates: tuple[str, ...] = DEFAULT_SCORE_CANDIDATES,
    bands: dict[str, int] | None = None,
    mixture_seed: int = 0,
    fit_on: list[Latents] | None = None,
) -> list[FittedScore]:
    """The score `candidates` (those the encoders and frames allow) fitted on all calibration
    episodes, with calibration scores cross-fitted on halves of the episodes or leaving one
    episode out (module docstring); a single episode is cross-fitted on its two halves either way.
    `cross_fit="train"` fits on the streams `fit_on` instead and scores every calibration frame
    with that fit.
    `bands`: how many band maxima end each encoder's pooled features (training.export.band_count),
    where they do; `mixture_seed` seeds the mixtures' EM starts (with the band mixture it decided
    whether the test's crowd of duckies was stopped within the bar, with the band peak it does
    not: docs/results.md)."""
    if cross_fit not in CROSS_FITS:
        raise ValueError(f"cross_fit must be one of {CROSS_FITS}, got '{cross_fit}'")
    unknown = [name for name in candidates if name not in SCORE_CANDIDATES]
    if unknown or not candidates:
        raise ValueError(
            f"score candidates must be among {', '.join(SCORE_CANDIDATES)}, "
            f"got {', '.join(candidates) or 'none'}"
        )
    if cross_fit == "train":
        if not fit_on:
            raise ValueError("cross_fit 'train' needs frames to fit on (the train split's)")
        folds, rest = [concatenate_latents(calibration)], [concatenate_latents(fit_on)]
    elif len(calibration) == 1:
        whole = calibration[0]
        half = _frames(whole) // 2
        folds = [_rows(whole, slice(None, half)), _rows(whole, slice(half, None))]
        rest = folds[::-1]
    elif cross_fit == "halves":
        folds = [concatenate_latents(calibration[0::2]), concatenate_latents(calibration[1::2])]
        rest = folds[::-1]
    else:
        folds = calibration
        rest = [
            concatenate_latents(calibration[:i] + calibration[i + 1 :])
            for i in range(len(calibration))
        ]
    has_pooled = all(out.pooled is not None for latents in calibration for out in latents.values())
    mixture_fits = min(_frames(others) for others in rest) >= MIXTURE_COMPONENTS * _feature_count(
        calibration[0]
    )
    has_bands = bool(bands) and set(bands) == set(calibration[0])  # type: ignore[arg-type]
    names = [
        n
        for n in SCORE_CANDIDATES
        if n in candidates
        and (has_pooled or n not in POOLED_KINDS)
        and (mixture_fits or n not in MIXTURE_KINDS)
        and (has_bands or n not in BAND_KINDS)
    ]
    if not names:
        raise ValueError(
            f"none of the score candidates {', '.join(candidates)} fits these encoders and frames "
            "(the pooled kinds need a 'pooled' output, the band kinds band maxima in it)"
        )
    fitted = []
    for name in names:
        fits = [_fit(name, others, min_mean_kl, bands, mixture_seed) for others in rest]
        deployed = (
            fits[0]
            if cross_fit == "train"
            else _fit(name, concatenate_latents(calibration), min_mean_kl, bands, mixture_seed)
        )
        held_out = np.concatenate([fit(fold) for fit, fold in zip(fits, folds)])
        fitted.append(FittedScore(name, deployed, held_out))
    return fitted


def select_score(
    candidates: list[FittedScore], validation: list[tuple[Latents, np.ndarray]]
) -> tuple[FittedScore, str, dict[str, float]]:
    """The candidate whose conformal surprise (-log p) has the best validation AUROC, OOD-labelled
    frames against ID-labelled ones, with the p-value tail that achieved it; `validation` holds
    (latents, per-row OOD label) per episode. Returns (candidate, tail, AUROC per candidate)."""
    labels = np.concatenate([ood for _, ood in validation])
    if labels.all() or not labels.any():
        raise ValueError("validation needs both in-distribution and OOD frames to choose the score")
    table: dict[str, float] = {}
    tails: dict[str, str] = {}
    for candidate in candidates:
        scores = np.concatenate([candidate.score(latents) for latents, _ in validation])
        calibration = np.sort(candidate.calibration_scores)
        by_tail = {
            tail: auroc(labels, -np.log(conformal_p_values(calibration, scores, tail)))
            for tail in SCORE_TAILS[candidate.score.kind]
        }
        tails[candidate.name] = max(by_tail, key=lambda t: by_tail[t])
        table[candidate.name] = by_tail[tails[candidate.name]]
    best = max(candidates, key=lambda c: table[c.name])
    return best, tails[best.name], table


@dataclass(frozen=True)
class ScoredEpisode:
    """Per-frame scores of one episode (NaN before a detector has an input) and its onset."""

    name: str
    scores: np.ndarray
    onset_frame: int | None  # None: ID episode
    category: str = "id"  # the scenario's: id, appearance, sensor or motion


def first_alarm(trace: np.ndarray, threshold: float, start: int = 0) -> int | None:
    hits = np.flatnonzero(trace[start:] > threshold)
    return int(hits[0]) + start if hits.size else None


@dataclass(frozen=True)
class TuningResult:
    params: DecisionParams
    mean_delay: float
    missed: int
    within_bar: int  # onsets flagged within DELAY_BAR_FRAMES
    table: list[dict[str, float]]


def tune_decision(
    calibration: np.ndarray,
    validation: list[ScoredEpisode],
    tails: tuple[str, ...] = TAILS,
    categories: tuple[str, ...] | None = None,
    extrapolate: bool = False,
    id_budget: float = 0.0,
) -> TuningResult:
    """Pick (tail, ε, window, threshold) on validation episodes as described in the module
    docstring; delays are measured on the onsets of `categories` (None, or none of them in
    `validation`: all onsets). In-distribution frames of every episode set the alarm level;
    `id_budget` is the share of them it may leave above it (0: none). `extrapolate`: p-values beyond
    the calibration maximum follow a Pareto tail (vae_ood_monitor.decision) — far-out onsets are
    flagged sooner, at the price of more evidence from ID frames just past the range."""
    onsets = [e for e in validation if e.onset_frame]
    if not onsets:
        raise ValueError("validation needs onset episodes to tune the decision delay")
    if not 0.0 <= id_budget <= MAX_ID_BUDGET:
        raise ValueError(
            f"id_budget must be within 0..{MAX_ID_BUDGET} (a share of the validation ID frames), "
            f"got {id_budget}"
        )
    # Data with none of the detector's own categories (e.g. imported recordings of other faults):
    # all onsets.
    timed = [e for e in onsets if categories is None or e.category in categories] or onsets
    rows: list[dict[str, float]] = []
    best: tuple[tuple[int, float], DecisionParams, int] | None = (
        None  # ((-within_bar, mean_delay), params, missed)
    )
    for tail, epsilon, window, drift in itertools.product(tails, EPSILONS, WINDOWS, DRIFTS):
        probe = DecisionParams(
            tail=tail,
            epsilon=epsilon,
            window=window,
            drift=drift,
            threshold=np.inf,
            extrapolate=extrapolate,
        )
        traces = {e.name: cusum_trace(e.scores, calibration, probe) for e in validation}
        id_values = np.concatenate(
            [traces[e.name] for e in validation if e.onset_frame is None]
            + [traces[e.name][: e.onset_frame] for e in validation if e.onset_frame]
        )
        # "higher": a value the traces took,
        # so at most the budget's share of ID frames lies above it.
        id_level = float(np.quantile(id_values, 1.0 - id_budget, method="higher"))
        threshold = max(MIN_THRESHOLD, id_level * THRESHOLD_MARGIN)
        delays, missed, within_bar = [], 0, 0
        for e in timed:
            alarm = first_alarm(traces[e.name], threshold, e.onset_frame)
            missed += alarm is None
            within_bar += alarm is not None and alarm - e.onset_frame <= DELAY_BAR_FRAMES
            delays.append((alarm if alarm is not None else len(e.scores)) - e.onset_frame)
        mean_delay = float(np.mean(delays))
        params = replace(probe, threshold=round(float(threshold), 4))
        rows.append(
            {
                "tail": tail,
                "epsilon": epsilon,
                "window": window,
                "drift": drift,
                "threshold": params.threshold,
                "mean_delay": mean_delay,
                "missed": missed,
                "within_bar": within_bar,
            }
        )
        rank = (-within_bar, mean_delay)
        if best is None or rank < best[0]:
            best = (rank, params, missed)
    assert best is not None
    (negative_within_bar, mean_delay), params, missed = best
    return TuningResult(params, mean_delay, missed, -negative_within_bar, rows)
