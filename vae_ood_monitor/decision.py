"""Scores to calibrated OOD decisions: conformal p-value → power martingale → CUSUM.

One frame's score says little; a run of unusual frames says a lot. Each score becomes an inductive
conformal p-value against in-distribution calibration scores (uniform on ID data, tiny on OOD).
With `tail="both"` the p-value is two-sided: a KL far *below* anything seen in calibration is as
atypical as one far above — fog, a black or frozen camera wash the information out of the input and
the posterior collapses onto the prior, which a one-sided test would call "very normal". A
power martingale over the last `window` p-values bets on small p-values; its log grows quickly
once OOD frames arrive and drifts down on ID frames. A CUSUM with decay (`drift` subtracted every
frame, floored at 0) accumulates that evidence and flags OOD above `threshold` (RTCSA 2022).
A plain threshold on the score is available as `mode="threshold"`.

The CUSUM has a ceiling, `ceiling` alarm levels (`ceiling * threshold`, default 2): without one, a
long or strong OOD episode banks evidence that in-distribution frames must first pay back — after
60 s of fog the stop could not be reset for many seconds of normal driving. With the ceiling,
recovery takes at most the `window` frames the martingale still remembers plus the descent from the
ceiling to the alarm level, however long or strong the episode was. Onset detection is unchanged:
below the ceiling the capped and uncapped CUSUM are the same numbers, and the ceiling lies above
the alarm level, so the first crossing happens on the same frame. Derived from the alarm level, it
needs no new field in existing bundles (a bundle may set `ceiling`; 0 removes it).

A conformal p-value cannot go below 1/(n+1): a frame just past the most unusual calibration frame
and a frame a hundred times further out would bet alike. With `extrapolate` the upper tail goes on
beyond the calibration maximum as a Pareto tail, p = (s / s_max)^(-α) / (n+1), its index α
estimated (Hill) from the largest calibration scores — far-out frames (fog, a black camera) then
carry more evidence and are flagged sooner, frames at the edge of the calibration range no more
than before. p is floored at `P_FLOOR`, which bounds the evidence one frame can carry.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

MODES = ("cusum", "threshold")
TAILS = ("upper", "both")
TAIL_SHARE = (
    0.01  # share of the calibration scores (at least MIN_TAIL) the Pareto tail is fitted on
)
MIN_TAIL = 10
P_FLOOR = 1e-12


@dataclass(frozen=True)
class DecisionParams:
    mode: str = "cusum"
    tail: str = "both"  # "upper": only high scores are atypical; "both": two-sided p-value
    epsilon: float = 0.04  # power martingale betting exponent, 0 < ε < 1
    window: int = 10  # frames in the sliding martingale
    drift: float = 0.0  # CUSUM decay per frame, in log-martingale units
    threshold: float = 10.0  # CUSUM alarm level, or the score threshold in threshold mode
    extrapolate: bool = False  # Pareto upper tail beyond the calibration maximum (module docstring)
    ceiling: float = 2.0  # CUSUM ceiling in alarm levels: bounds recovery (module doc); 0: off

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"decision mode must be one of {MODES}, got '{self.mode}'")
        if self.tail not in TAILS:
            raise ValueError(f"tail must be one of {TAILS}, got '{self.tail}'")
        if not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"epsilon must be in (0, 1), got {self.epsilon}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if not isinstance(self.extrapolate, bool):
            message = f"extrapolate must be true or false, got {self.extrapolate!r}"
            raise ValueError(message)  # noqa: TRY004 (a bad value in a bundle's JSON, like the rest)
        if self.ceiling != 0.0 and not self.ceiling > 1.0:
            raise ValueError(
                f"ceiling must be > 1 alarm level (or 0: no ceiling), got {self.ceiling}"
            )

    @property
    def cusum_cap(self) -> float:
        """The highest value the CUSUM takes: `ceiling` alarm levels (inf without a ceiling or a
        positive alarm level)."""
        if self.ceiling == 0.0 or not self.threshold > 0.0:
            return math.inf
        return self.ceiling * self.threshold

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def pareto_tail_index(sorted_calibration: np.ndarray) -> float | None:
    """Hill estimate of the upper tail index α from the largest calibration scores; None when the
    scores give no positive, finite estimate (too few, non-positive or all tied at the top)."""
    n = sorted_calibration.size
    k = max(MIN_TAIL, int(TAIL_SHARE * n))
    if n <= k or sorted_calibration[n - k - 1] <= 0.0:
        return None
    mean_log_excess = float(
        np.mean(np.log(sorted_calibration[n - k :] / sorted_calibration[n - k - 1]))
    )
    return 1.0 / mean_log_excess if mean_log_excess > 0.0 else None


def conformal_p_values(
    sorted_calibration: np.ndarray, scores: np.ndarray, tail: str, tail_index: float | None = None
) -> np.ndarray:
    """Conformal p-values of `scores`: the share of calibration scores at least as extreme (with
    the conservative +1 correction; two-sided: twice the smaller tail, at most 1). With a
    `tail_index` the upper tail is extrapolated beyond the calibration maximum (module
    docstring)."""
    n = sorted_calibration.size
    upper = (n - np.searchsorted(sorted_calibration, scores, side="left") + 1) / (n + 1)
    if tail_index is not None:
        top = sorted_calibration[-1]
        upper = np.where(
            scores > top, np.power(np.maximum(scores, top) / top, -tail_index) / (n + 1), upper
        )
        upper = np.maximum(upper, P_FLOOR)
    if tail == "upper":
        return upper
    lower = (np.searchsorted(sorted_calibration, scores, side="right") + 1) / (n + 1)
    return np.minimum(1.0, 2.0 * np.minimum(upper, lower))


@dataclass(frozen=True)
class Decision:
    p_value: float
    log_martingale: float
    cusum: float
    ood: bool


class ConformalDecider:
    """Stateful per-stream decision maker: `update` once per scored frame, `reset` on a new
    stream."""

    def __init__(self, calibration_scores: np.ndarray, params: DecisionParams) -> None:
        scores = np.sort(np.asarray(calibration_scores, dtype=np.float64))
        if scores.size == 0 or not np.all(np.isfinite(scores)):
            raise ValueError("calibration scores must be a non-empty array of finite numbers")
        self._calibration = scores
        self.params = params
        self._tail_index = pareto_tail_index(scores) if params.extrapolate else None
        self._log_bets: deque[float] = deque(maxlen=params.window)
        self._cusum = 0.0
        self._cap = params.cusum_cap

    @property
    def cusum(self) -> float:
        return self._cusum

    def reset(self) -> None:
        self._log_bets.clear()
        self._cusum = 0.0

    def p_value(self, score: float) -> float:
        return float(
            conformal_p_values(
                self._calibration, np.asarray([score]), self.params.tail, self._tail_index
            )[0]
        )

    def update(self, score: float) -> Decision:
        if not math.isfinite(score):
            raise ValueError(f"score must be finite, got {score}")
        p = self.p_value(score)
        eps = self.params.epsilon
        self._log_bets.append(math.log(eps) + (eps - 1.0) * math.log(p))
        log_martingale = sum(self._log_bets)
        self._cusum = min(self._cap, max(0.0, self._cusum + log_martingale - self.params.drift))
        if self.params.mode == "threshold":
            ood = score > self.params.threshold
        else:
            ood = self._cusum > self.params.threshold
        return Decision(p, log_martingale, self._cusum, ood)


def cusum_trace(scores: np.ndarray, calibration: np.ndarray, params: DecisionParams) -> np.ndarray:
    """CUSUM value after every frame, replayed with the onboard decider (NaN frames repeat the
    previous value, as onboard: no update): decision tuning, the trade-off sweep, the demo plot."""
    decider = ConformalDecider(calibration, params)
    trace = np.zeros(len(scores))
    current = 0.0
    for i, score in enumerate(scores):
        if np.isfinite(score):
            current = decider.update(float(score)).cusum
        trace[i] = current
    return trace
