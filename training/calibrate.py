"""Choosing decision parameters from calibration (ID) and validation (ID + OOD) scores only.

For every candidate (tail, ε, window) the CUSUM alarm level is set just above the highest CUSUM value any
in-distribution validation frame reached (ID episodes and the ID part of onset episodes), times a
safety margin — so validation ID driving raises no alarm. Among the candidates, the one with the
smallest mean detection delay on validation onset episodes wins (a missed onset counts as the
frames left in its episode). The test split is never looked at.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from vae_ood_monitor.decision import ConformalDecider, DecisionParams

TAILS = ("both", "upper")
EPSILONS = (0.04, 0.1, 0.2)
WINDOWS = (5, 10, 20)
THRESHOLD_MARGIN = 1.5
MIN_THRESHOLD = 5.0


@dataclass(frozen=True)
class ScoredEpisode:
    """Per-frame scores of one episode (NaN before a detector has an input) and its onset."""

    name: str
    scores: np.ndarray
    onset_frame: int | None  # None: ID episode


def cusum_trace(scores: np.ndarray, calibration: np.ndarray, params: DecisionParams) -> np.ndarray:
    """CUSUM value after every frame (NaN frames repeat the previous value, as onboard: no update)."""
    decider = ConformalDecider(calibration, params)
    trace = np.zeros(len(scores))
    current = 0.0
    for i, score in enumerate(scores):
        if np.isfinite(score):
            current = decider.update(float(score)).cusum
        trace[i] = current
    return trace


def first_alarm(trace: np.ndarray, threshold: float, start: int = 0) -> int | None:
    hits = np.flatnonzero(trace[start:] > threshold)
    return int(hits[0]) + start if hits.size else None


@dataclass(frozen=True)
class TuningResult:
    params: DecisionParams
    mean_delay: float
    missed: int
    table: list[dict[str, float]]


def tune_decision(calibration: np.ndarray, validation: list[ScoredEpisode]) -> TuningResult:
    """Pick (tail, ε, window, threshold) on validation episodes as described in the module docstring."""
    if not any(e.onset_frame for e in validation):
        raise ValueError("validation needs onset episodes to tune the decision delay")
    rows: list[dict[str, float]] = []
    best: tuple[float, DecisionParams, int] | None = None
    for tail, epsilon, window in itertools.product(TAILS, EPSILONS, WINDOWS):
        probe = DecisionParams(tail=tail, epsilon=epsilon, window=window, threshold=np.inf)
        traces = {e.name: cusum_trace(e.scores, calibration, probe) for e in validation}
        id_peak = max(
            [traces[e.name].max() for e in validation if e.onset_frame is None]
            + [traces[e.name][: e.onset_frame].max() for e in validation if e.onset_frame]
        )
        threshold = max(MIN_THRESHOLD, id_peak * THRESHOLD_MARGIN)
        delays, missed = [], 0
        for e in validation:
            if e.onset_frame:
                alarm = first_alarm(traces[e.name], threshold, e.onset_frame)
                missed += alarm is None
                delays.append((alarm if alarm is not None else len(e.scores)) - e.onset_frame)
        mean_delay = float(np.mean(delays))
        params = DecisionParams(tail=tail, epsilon=epsilon, window=window, threshold=round(float(threshold), 4))
        rows.append({"tail": tail, "epsilon": epsilon, "window": window, "threshold": params.threshold, "mean_delay": mean_delay, "missed": missed})
        if best is None or mean_delay < best[0]:
            best = (mean_delay, params, missed)
    assert best is not None
    return TuningResult(best[1], best[0], best[2], rows)
