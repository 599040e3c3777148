"""The decision trade-off an evaluation split allows: each detector's alarm level swept.

A detector's decision stops the robot when its CUSUM (or, in threshold mode, its score) passes the
bundle's alarm level. Raising the level trades a later stop for fewer false stops on normal
driving. For every level, the detector's decisions are replayed on the split's scores (the other
detector and the frozen-camera check as evaluated) and the fused monitor is summed up the way the
report does: the share of ID frames flagged and the median delay per OOD category and scenario.
The curve shows whether a miss of the bar belongs to the decision (some level meets both) or to
the detector (none does). Read on the test split it is insight, not a way to choose a level;
bundles choose theirs on validation data (training.calibrate.tune_decision).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vae_ood_monitor.decision import DecisionParams, cusum_trace
from vae_ood_monitor.metrics import detection_delay

ID_BAR = 0.01  # share of ID frames the fused monitor may flag (the Detectors issue's bar)
LEVELS = 40  # alarm levels per detector, spread over the quantiles of its ID statistic
MISSED_COST = 1000.0  # frames a category that is never flagged counts when levels tie


@dataclass(frozen=True)
class OperatingPoint:
    detector: str
    level: float
    shipped: bool  # the bundle's own alarm level
    id_flagged: float  # share of ID frames (ID episodes, pre-onset parts) the fused monitor flags
    # per OOD category ("[motion]") and scenario ("reverse"): median frames from onset to the fused
    # flag (inf: missed)
    median_delay: dict[str, float]
    within_bar: float  # share of onset episodes flagged within `bar_frames`


def alarm_statistic(
    raw_scores: np.ndarray, calibration_scores: np.ndarray, decision: DecisionParams
) -> np.ndarray:
    """What a decision compares with its alarm level, per frame of one stream: the CUSUM on the
    conformal p-values, or the score itself in threshold mode.
    NaN where the detector had no input."""
    if decision.mode == "threshold":
        return np.where(np.isfinite(raw_scores), raw_scores, np.nan)
    # Without the ceiling (decision.py), which sits at a multiple of the shipped level: levels
    # swept above it must still be reachable. First crossings of any level are the same.
    trace = cusum_trace(raw_scores, calibration_scores, replace(decision, ceiling=0.0))
    return np.where(np.isfinite(raw_scores), trace, np.nan)


def _levels(statistics: list[np.ndarray], id_parts: list[int], shipped: float) -> np.ndarray:
    """From flagging about a fifth of the ID frames to none of them, and the shipped level."""
    id_values = np.concatenate([s[:end] for s, end in zip(statistics, id_parts)])
    id_values = id_values[np.isfinite(id_values)]
    shares = np.geomspace(0.2, 1e-4, LEVELS)
    quantiles = np.quantile(id_values, 1.0 - shares) if id_values.size else np.empty(0)
    top = max(float(np.nanmax(np.concatenate(statistics))), shipped) if statistics else shipped
    return np.unique(np.r_[quantiles, shipped, 2.0 * top])


def sweep(
    episodes: list[tuple[str, str, int | None, int, np.ndarray]],
    statistics: list[np.ndarray],
    detector: str,
    shipped_level: float,
    bar_frames: int,
) -> list[OperatingPoint]:
    """`episodes`: per episode (scenario, category, onset frame — None for ID driving, 0 for a drive
    OOD from its first frame —, its leading ID frames as the report counts them, flags of everything
    else in the fused decision); `statistics`: the detector's alarm statistic per episode."""
    id_parts = [id_frames for _, _, _, id_frames, _ in episodes]
    points = []
    for level in _levels(statistics, id_parts, shipped_level):
        flagged, frames = 0, 0
        delays: dict[str, list[float]] = {}
        for (scenario, category, onset, end, others), statistic in zip(episodes, statistics):
            fused = others | (np.nan_to_num(statistic, nan=-np.inf) > level)
            flagged += int(fused[:end].sum())
            frames += end
            if onset:  # a drive that is OOD from its first frame has no onset to be late for
                delay = detection_delay(fused, onset)
                for group in (f"[{category}]", scenario):
                    delays.setdefault(group, []).append(np.inf if delay is None else float(delay))
        all_delays = [
            d for group, values in delays.items() if group.startswith("[") for d in values
        ]
        points.append(
            OperatingPoint(
                detector,
                float(level),
                bool(level == shipped_level),
                flagged / max(frames, 1),
                {group: float(np.median(values)) for group, values in sorted(delays.items())},
                float(np.mean([d <= bar_frames for d in all_delays]))
                if all_delays
                else float("nan"),
            )
        )
    return points


def best_within_id_bar(points: list[OperatingPoint]) -> OperatingPoint | None:
    """Among the levels flagging ≤ ID_BAR of ID frames, the one flagging most onsets within the bar
    (ties: the shortest median delays, a missed category counting MISSED_COST frames)."""
    allowed = [p for p in points if p.id_flagged <= ID_BAR]
    return max(
        allowed,
        key=lambda p: (
            p.within_bar,
            -sum(min(d, MISSED_COST) for g, d in p.median_delay.items() if g.startswith("[")),
        ),
        default=None,
    )


def write_tradeoff(points: list[OperatingPoint], out: Path, bar_frames: int) -> None:
    """tradeoff.csv (every level; delays per category and scenario) and tradeoff.png (one panel
    per detector; delays per category)."""
    groups = sorted({g for p in points for g in p.median_delay})
    categories = [g for g in groups if g.startswith("[")]
    with (out / "tradeoff.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "detector",
                "level",
                "shipped",
                "fused_flagged_id_frames",
                *(f"median_delay_{g}" for g in groups),
                f"detected_within_{bar_frames}",
            ]
        )
        for p in points:
            writer.writerow(
                [
                    p.detector,
                    f"{p.level:.6g}",
                    int(p.shipped),
                    f"{p.id_flagged:.5f}",
                    *(f"{p.median_delay.get(g, np.nan):g}" for g in groups),
                    f"{p.within_bar:.3f}",
                ]
            )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter

    detectors = list(dict.fromkeys(p.detector for p in points))
    fig, axes = plt.subplots(
        1,
        len(detectors),
        figsize=(5.5 * len(detectors), 4.2),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    missed = 4 * bar_frames  # where a missed onset is drawn
    for ax, detector in zip(axes.flat, detectors):
        mine = sorted((p for p in points if p.detector == detector), key=lambda p: p.id_flagged)
        x = np.array([max(p.id_flagged, 1e-4) * 100 for p in mine])
        for category in categories:
            y = np.array([min(p.median_delay.get(category, np.nan), missed) for p in mine])
            (line,) = ax.plot(x, y, marker=".", label=category.strip("[]"))
            shipped = [i for i, p in enumerate(mine) if p.shipped]
            ax.plot(
                x[shipped],
                y[shipped],
                marker="*",
                markersize=14,
                color=line.get_color(),
                linestyle="none",
            )
        ax.axvline(ID_BAR * 100, color="black", lw=0.8, ls="--")
        ax.axhline(bar_frames, color="black", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30]))
        ax.xaxis.set_major_formatter(lambda value, _: f"{value:g}")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(
            title=f"{detector} alarm level swept (★ shipped)",
            xlabel="ID frames flagged by the fused monitor [%]",
        )
    axes.flat[0].set(
        ylabel=f"median frames from onset to stop (≥ {missed}: missed)", ylim=(0, missed * 1.05)
    )
    if categories:  # none when the split has no onset episodes
        axes.flat[0].legend(title="OOD category", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "tradeoff.png", dpi=110)
    plt.close(fig)
