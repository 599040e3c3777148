"""Detection metrics in numpy (the onboard `eval` command may not use scikit-learn).

The tests check these against scikit-learn on random data.
"""

from __future__ import annotations

import numpy as np


def _clean(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(scores)
    return labels[keep], scores[keep]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (OOD = positive) via the Mann–Whitney U statistic with tie ranks.

    NaN scores are left out. NaN when one class is missing.
    """
    labels, scores = _clean(labels, scores)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(scores)]))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[labels].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at the lowest threshold that flags at least `tpr` of the OOD frames."""
    labels, scores = _clean(labels, scores)
    if labels.sum() == 0 or (~labels).sum() == 0:
        return float("nan")
    positive_scores = np.sort(scores[labels])
    threshold = positive_scores[int(np.floor((1.0 - tpr) * len(positive_scores)))]
    return float(np.mean(scores[~labels] >= threshold))


def rising_edges(flags: np.ndarray) -> int:
    """How many times a boolean flag sequence switches on."""
    flags = np.asarray(flags, dtype=bool)
    return int(flags[0]) + int(np.sum(flags[1:] & ~flags[:-1])) if flags.size else 0


def detection_delay(flags: np.ndarray, onset_frame: int) -> int | None:
    """Frames from onset to the first flag at or after it; None when never flagged."""
    hits = np.flatnonzero(np.asarray(flags, dtype=bool)[onset_frame:])
    return int(hits[0]) if hits.size else None
