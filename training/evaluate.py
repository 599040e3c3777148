"""Evaluate detector bundles on a dataset split: AUROC, FPR@95%TPR, delays, false alarms, plots.

    python -m training.evaluate --data datasets/default --bvae models/bvae_teacher \
        --flow models/flow_teacher --out reports/teacher
    python -m training.evaluate nuisance --data datasets/heldout_id ... (training.nuisance)

Frames are scored by the onboard detector class (ONNX Runtime), beside two non-learned baselines
that the learned detectors must beat: brightness deviation and mean frame difference, each as a
|z-score| against the calibration split, and their maximum ("baseline"). The fused decision is
where the safety stop would stop the robot: either detector's decision, or its frozen-camera check
(byte-identical frames for longer than `--frozen-s`); the detectors' own delay is reported beside
it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.calibrate import DELAY_BAR_FRAMES
from training.dataset import DatasetError, Episode, episodes, iter_frames
from training.tradeoff import (
    ID_BAR,
    OperatingPoint,
    alarm_statistic,
    best_within_id_bar,
    sweep,
    write_tradeoff,
)
from vae_ood_monitor.bundle import BundleError, load_bundle
from vae_ood_monitor.cli import non_negative_seconds
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.metrics import auroc, detection_delay, fpr_at_tpr, rising_edges
from vae_ood_monitor.offline import DETECTORS, score_frames
from vae_ood_monitor.safety import FrozenCameraWatch, SafetyConfig

# A frame stranger than 99 % of the calibration frames (surprise = -log10 conformal p-value): the
# first such frame after an onset shows when the detectors' evidence arrives, apart from how
# long the decision then accumulates it.
EVIDENCE_SURPRISE = 2.0


@dataclass
class EpisodeResult:
    episode: Episode
    ood: np.ndarray
    scores: dict[
        str, np.ndarray
    ]  # bvae, flow, fused (surprise), bvae_raw, flow_raw (latent score), brightness, framediff
    flags: dict[str, np.ndarray]  # bvae, flow, frozen (camera check), fused (any of them)


def baseline_features(frames: list[np.ndarray]) -> dict[str, np.ndarray]:
    grey = [f.mean(axis=2, dtype=np.float32) for f in frames]
    brightness = np.array([g.mean() for g in grey])
    framediff = np.array([np.nan] + [np.abs(b - a).mean() for a, b in pairwise(grey)])
    return {"brightness": brightness, "framediff": framediff}


_DETECTORS: dict[str, OODDetector] = {}
_frozen_s = SafetyConfig.frozen_s


def load_worker_detectors(bundles: dict[str, str], frozen_s: float) -> None:
    """Worker initializer: the detectors and the frozen-camera limit every episode is scored with
    (here and in training.nuisance)."""
    global _frozen_s
    _DETECTORS.clear()
    # Camera messages (training.nuisance) decoded as `vae-ood-monitor monitor` runs the detectors:
    # both in `ood_detectors`, one reduced-scale colour decode shared (images.FrameDecoder).
    _DETECTORS.update(
        {name: OODDetector.from_path(path, decode="shared") for name, path in bundles.items()}
    )
    _frozen_s = frozen_s


def worker_detectors() -> tuple[dict[str, OODDetector], float]:
    """This worker's detectors and frozen-camera limit (load_worker_detectors)."""
    return _DETECTORS, _frozen_s


def _score_episode(episode: Episode) -> EpisodeResult:
    frames, ood = [], []
    for rgb, label in iter_frames(episode):
        frames.append(rgb)
        ood.append(label)
    times = np.arange(len(frames)) / episode.fps
    stream = score_frames(
        frames, _DETECTORS, times_s=times, frozen_watch=FrozenCameraWatch(_frozen_s)
    )
    # A detector's output is its conformal surprise (-log10 p, one- or two-sided as calibrated);
    # the raw latent score (KL or Mahalanobis) is kept beside it as <name>_raw.
    scores = {
        **stream.surprise,
        **{f"{k}_raw": v for k, v in stream.scores.items()},
        "fused": stream.fused_score,
        **baseline_features(frames),
    }
    flags = {**stream.flags, "frozen": stream.frozen, "fused": stream.fused_flags}
    return EpisodeResult(episode, np.asarray(ood), scores, flags)


def score_split(
    data: Path,
    split: str,
    bundles: dict[str, Path],
    workers: int = 2,
    frozen_s: float = SafetyConfig.frozen_s,
) -> list[EpisodeResult]:
    items = episodes(data, split)
    with ProcessPoolExecutor(
        workers,
        initializer=load_worker_detectors,
        initargs=({k: str(v) for k, v in bundles.items()}, frozen_s),
    ) as pool:
        return list(
            tqdm(
                pool.map(_score_episode, items),
                total=len(items),
                desc=f"scoring {split}",
                unit="episode",
            )
        )


def _baseline_scores(results: list[EpisodeResult], calibration: list[EpisodeResult]) -> None:
    """Turn raw brightness / frame-difference features into |z| against calibration, and their
    max."""
    for feature in ("brightness", "framediff"):
        values = np.concatenate([r.scores[feature] for r in calibration])
        mean, std = np.nanmean(values), np.nanstd(values) + 1e-9
        for r in results:
            r.scores[f"{feature}_z"] = np.abs(r.scores[feature] - mean) / std
    for r in results:
        r.scores["baseline"] = np.fmax(r.scores["brightness_z"], r.scores["framediff_z"])


SCORED = (
    "bvae",
    "flow",
    "fused",
    "bvae_raw",
    "flow_raw",
    "brightness_z",
    "framediff_z",
    "baseline",
)
FLAGGED = (*DETECTORS, "frozen", "fused")


def metrics_table(results: list[EpisodeResult]) -> list[dict[str, object]]:
    """One row per OOD scenario, per category and overall: AUROC and FPR@95 of every score."""
    id_results = [r for r in results if r.episode.scenario == "id"]
    groups: dict[str, list[EpisodeResult]] = {}
    for r in results:
        if r.episode.scenario != "id":
            groups.setdefault(r.episode.scenario, []).append(r)
            groups.setdefault(f"[{r.episode.category}]", []).append(r)
            groups.setdefault("[all OOD]", []).append(r)
    delays_of = {r.episode.name: _onset_delays(r) for r in results if r.episode.onset_frame}
    rows = []
    for group, members in groups.items():
        row: dict[str, object] = {
            "scenario": group,
            "ood_frames": int(sum(r.ood.sum() for r in members)),
        }
        for name in SCORED:
            negatives = np.concatenate([r.scores[name] for r in id_results])
            positives = np.concatenate([r.scores[name][r.ood] for r in members])
            labels = np.concatenate([np.zeros(len(negatives), bool), np.ones(len(positives), bool)])
            values = np.concatenate([negatives, positives])
            row[f"auroc_{name}"] = auroc(labels, values)
            if name in ("bvae", "flow", "fused"):
                row[f"fpr95_{name}"] = fpr_at_tpr(labels, values)
        # the comparison: the best learned score against the best non-learned one. The raw
        # latent scores count as well as the calibrated outputs: the conformal surprise is capped at
        # the calibration maximum, so ID frames beyond it tie with OOD frames there, which a ranking
        # of the latent score itself does not.
        learned = ("bvae", "flow", "fused", "bvae_raw", "flow_raw")
        row["learned_minus_baseline"] = (
            max(row[f"auroc_{name}"] for name in learned) - row["auroc_baseline"]
        )  # type: ignore[type-var,operator]
        onsets = [r for r in members if r.episode.onset_frame]
        if onsets:
            delays = [delays_of[r.episode.name] for r in onsets]
            row["onsets"] = len(onsets)
            row["median_delay_fused"] = _median_delay([d["delay_fused"] for d in delays])
            row[f"detected_within_{DELAY_BAR_FRAMES}"] = sum(
                _within_bar(d["delay_fused"]) for d in delays
            ) / len(delays)
            row["median_delay_detectors"] = _median_delay([d["delay_detectors"] for d in delays])
            row["median_evidence_delay"] = _median_delay([d["delay_evidence"] for d in delays])
            long_enough = [
                r for r in onsets if r.episode.onset_frame + DELAY_BAR_FRAMES <= len(r.ood)
            ]
            for name in DETECTORS:
                early = [
                    _window_means(r.scores[name])[r.episode.onset_frame + DELAY_BAR_FRAMES - 1]
                    for r in long_enough
                ]
                row[f"early_evidence_{name}"] = float(np.median(early)) if early else float("nan")
        rows.append(row)
    return rows


def _onset_delays(r: EpisodeResult) -> dict[str, int | None]:
    """Frames from an onset episode's onset to the first evidence, detector decision and stop
    (None: not within the episode)."""
    onset = r.episode.onset_frame
    return {
        "delay_evidence": detection_delay(
            np.fmax(r.scores["bvae"], r.scores["flow"]) >= EVIDENCE_SURPRISE, onset
        ),
        "delay_detectors": detection_delay(r.flags["bvae"] | r.flags["flow"], onset),
        "delay_fused": detection_delay(r.flags["fused"], onset),
    }


def _within_bar(delay: int | None) -> bool:
    return delay is not None and delay <= DELAY_BAR_FRAMES


def onset_table(results: list[EpisodeResult]) -> list[dict[str, object]]:
    """One row per onset episode: where its label starts (and where its effect began, when that is
    earlier), and its delays (_onset_delays) — the per-drive story behind the medians."""
    return [
        {
            "episode": r.episode.name,
            "scenario": r.episode.scenario,
            "onset_frame": r.episode.onset_frame,
            "effect_began": r.episode.effect_began,
            **_onset_delays(r),
        }
        for r in results
        if r.episode.onset_frame
    ]


def _window_means(surprise: np.ndarray) -> np.ndarray:
    """Mean surprise over the DELAY_BAR_FRAMES frames up to each frame (no input yet counts as 0).
    Its value 15 frames after an onset, against its highest value on ID driving, says whether a
    detector's evidence could meet the delay bar at all without stopping normal driving."""
    values = np.nan_to_num(surprise, nan=0.0)
    return np.convolve(values, np.ones(DELAY_BAR_FRAMES) / DELAY_BAR_FRAMES)[: len(values)]


def _median_delay(delays: list[int | None]) -> float:
    """Median frames from onset to flag; a flag that never came counts as infinitely late."""
    return float(np.median([d if d is not None else np.inf for d in delays]))


def _id_frames(r: EpisodeResult) -> int:
    """Frames of in-distribution driving at the start of an episode: all of an ID episode, the
    pre-onset part of an onset episode."""
    return len(r.ood) if r.episode.onset_frame is None else r.episode.onset_frame


def id_alarm_summary(results: list[EpisodeResult]) -> dict[str, float]:
    """How often the decisions fire on in-distribution driving (ID episodes and pre-onset parts),
    and, where episodes name their map, the fused share per map (false alarms cluster where a
    map shows what the training maps did not)."""
    summary: dict[str, float] = {}
    for name in FLAGGED:
        flagged, frames, alarms, minutes = 0, 0, 0, 0.0
        for r in results:
            end = _id_frames(r)
            if end == 0:
                continue
            flags = r.flags[name][:end]
            flagged += int(flags.sum())
            frames += end
            alarms += rising_edges(flags)
            minutes += end / r.episode.fps / 60.0
        summary[f"{name}_flagged_id_frames"] = flagged / max(frames, 1)
        summary[f"{name}_false_alarms_per_min"] = alarms / max(minutes, 1e-9)
    summary["id_minutes"] = minutes
    # The ceiling over all ID windows, and over those past a drive's first frames (start-up
    # transients).
    for name in DETECTORS:
        id_means = [_window_means(r.scores[name])[: _id_frames(r)] for r in results]
        for suffix, first in (
            ("", DELAY_BAR_FRAMES - 1),
            ("_past_start", 2 * DELAY_BAR_FRAMES - 1),
        ):
            peaks = [means[first:].max() for means in id_means if means.size > first]
            summary[f"id_ceiling_early_evidence_{name}{suffix}"] = float(max(peaks, default=np.nan))
    id_parts = [(r.episode.map, r.flags["fused"][: _id_frames(r)]) for r in results]
    for map_name in sorted({m for m, _ in id_parts if m is not None}):
        flags = np.concatenate([f for m, f in id_parts if m == map_name])
        if flags.size:
            summary[f"fused_flagged_id_frames[{map_name}]"] = float(flags.mean())
    return summary


def decision_tradeoff(
    results: list[EpisodeResult], bundles: dict[str, Path]
) -> list[OperatingPoint]:
    """Each detector's alarm level swept over these results, the rest of the fused decision as
    evaluated (training.tradeoff)."""
    points = []
    for name, path in bundles.items():
        bundle = load_bundle(path)
        parts = [n for n in (*DETECTORS, "frozen") if n != name]
        labelled = [
            (
                r.episode.scenario,
                r.episode.category,
                r.episode.onset_frame,
                _id_frames(r),
                np.logical_or.reduce([r.flags[n] for n in parts]),
            )
            for r in results
        ]
        statistics = [
            alarm_statistic(r.scores[f"{name}_raw"], bundle.calibration_scores, bundle.decision)
            for r in results
        ]
        points += sweep(labelled, statistics, name, bundle.decision.threshold, DELAY_BAR_FRAMES)
    return points


def _tradeoff_lines(points: list[OperatingPoint]) -> list[str]:
    def describe(p: OperatingPoint) -> str:
        delays = ", ".join(
            f"{group.strip('[]')} {_fmt(d)}"
            for group, d in p.median_delay.items()
            if group.startswith("[")
        )
        return (
            f"level {p.level:.4g}: {100 * p.id_flagged:.2f} % of ID frames flagged, "
            f"median delay {delays}, {100 * p.within_bar:.0f} % of onsets within "
            f"{DELAY_BAR_FRAMES} frames"
        )

    lines = [
        "## Decision trade-off",
        "",
        (
            "Each detector's alarm level swept on this split, everything else in the fused "
            "decision as evaluated (`tradeoff.csv`, training/tradeoff.py). Insight, not a choice: "
            "bundles choose their level on validation data."
        ),
        "",
    ]
    for detector in dict.fromkeys(p.detector for p in points):
        mine = [p for p in points if p.detector == detector]
        shipped = next(p for p in mine if p.shipped)
        best = best_within_id_bar(mine)
        lines.append(f"- {detector}, shipped {describe(shipped)}")
        bar = f"≤ {100 * ID_BAR:g} %"
        lines.append(
            f"- {detector}, most onsets within the bar at {bar} ID frames: "
            + (describe(best) if best else f"no level flags {bar} of ID frames")
        )
    return [*lines, "", "![decision trade-off](tradeoff.png)", ""]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "–" if np.isnan(value) else f"{value:.3f}"
    return str(value)


def write_report(
    results: list[EpisodeResult],
    rows: list[dict[str, object]],
    alarms: dict[str, float],
    out: Path,
    title: str,
    tradeoff: list[OperatingPoint],
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (out / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    with (out / "frames.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["episode", "scenario", "frame", "ood", *SCORED, *(f"flag_{n}" for n in FLAGGED)]
        )
        for r in results:
            for i in range(len(r.ood)):
                writer.writerow(
                    [
                        r.episode.name,
                        r.episode.scenario,
                        i,
                        int(r.ood[i]),
                        *(f"{r.scores[n][i]:.6g}" for n in SCORED),
                        *(int(r.flags[n][i]) for n in FLAGGED),
                    ]
                )
    shown = [
        "scenario",
        "ood_frames",
        "auroc_bvae",
        "auroc_flow",
        "auroc_fused",
        "auroc_bvae_raw",
        "auroc_flow_raw",
        "auroc_baseline",
        "learned_minus_baseline",
        "fpr95_fused",
        "early_evidence_bvae",
        "early_evidence_flow",
        "median_evidence_delay",
        "median_delay_detectors",
        "median_delay_fused",
        f"detected_within_{DELAY_BAR_FRAMES}",
    ]
    lines = [f"# {title}", "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += [
        "| " + " | ".join(_fmt(row.get(c, float("nan"))) for c in shown) + " |" for row in rows
    ]
    lines += [
        "",
        (
            "Delays in frames from onset, median over onset episodes: evidence = first frame "
            f"either detector scores at p ≤ {10**-EVIDENCE_SURPRISE:g}; detectors = first OOD "
            "decision of either detector; fused = first stop of the safety stop: a detector's "
            "decision or its frozen-camera check (inf: not within the episode). Early evidence = "
            f"a detector's mean surprise over the first {DELAY_BAR_FRAMES} frames after the onset "
            "(median over onsets); where it stays below the detector's ID ceiling (the highest "
            f"{DELAY_BAR_FRAMES}-frame mean on ID driving, listed below), no decision on that mean "
            f"meets the {DELAY_BAR_FRAMES}-frame bar without stopping normal driving: the "
            "detector, not the decision, is what is slow."
        ),
        "",
        "In-distribution driving (ID episodes and pre-onset frames):",
        "",
    ]
    lines += [f"- {k}: {_fmt(v)}" for k, v in alarms.items()]
    onsets = onset_table(results)
    if onsets:
        with (out / "onsets.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, list(onsets[0]))
            writer.writeheader()
            writer.writerows(onsets)
        within = sum(_within_bar(o["delay_fused"]) for o in onsets)  # type: ignore[arg-type]
        lines += [
            "",
            (
                f"Onsets (`onsets.csv`): {within} of {len(onsets)} stopped within "
                f"{DELAY_BAR_FRAMES} frames. Effect began: the frame the effect started on where "
                "its label starts later, once it shows (an obstacle in view, a reversing robot "
                "moving backwards); delays in frames from the onset, – never."
            ),
            "",
            "| " + " | ".join(onsets[0]) + " |",
            "|" + "---|" * len(onsets[0]),
        ]
        lines += [
            "| " + " | ".join("–" if v is None else str(v) for v in o.values()) + " |"
            for o in onsets
        ]
    lines += [
        "",
        "![ROC](roc.png)",
        "",
        "![AUROC by scenario](auroc_by_scenario.png)",
        "",
        "![timelines](timelines.png)",
        "",
    ]
    lines += _tradeoff_lines(tradeoff)
    write_tradeoff(tradeoff, out, DELAY_BAR_FRAMES)
    report = out / "report.md"
    report.write_text("\n".join(lines))
    _plots(results, rows, out)
    return report


def _plots(results: list[EpisodeResult], rows: list[dict[str, object]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # ROC curves of every score, all OOD frames against ID frames.
    id_results = [r for r in results if r.episode.scenario == "id"]
    ood_results = [r for r in results if r.episode.scenario != "id"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name in ("bvae", "flow", "fused", "baseline"):
        negatives = np.concatenate([r.scores[name] for r in id_results])
        positives = np.concatenate([r.scores[name][r.ood] for r in ood_results])
        negatives, positives = negatives[np.isfinite(negatives)], positives[np.isfinite(positives)]
        thresholds = np.unique(np.concatenate([negatives, positives]))[::-1]
        tpr = (
            [0.0]
            + [
                float(np.mean(positives >= t))
                for t in thresholds[:: max(1, len(thresholds) // 400)]
            ]
            + [1.0]
        )
        fpr = (
            [0.0]
            + [
                float(np.mean(negatives >= t))
                for t in thresholds[:: max(1, len(thresholds) // 400)]
            ]
            + [1.0]
        )
        labels = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
        area = auroc(labels, np.r_[negatives, positives])
        ax.plot(fpr, tpr, label=f"{name} (AUROC {area:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(
        xlabel="false-positive rate (ID frames)",
        ylabel="true-positive rate (OOD frames)",
        title="ROC, all OOD scenarios",
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=120)
    plt.close(fig)

    # AUROC per scenario, grouped bars.
    scenario_rows = [r for r in rows if not str(r["scenario"]).startswith("[")]
    names = ("bvae", "flow", "fused", "baseline")
    fig, ax = plt.subplots(figsize=(max(8, len(scenario_rows) * 0.8), 4))
    x = np.arange(len(scenario_rows))
    for i, name in enumerate(names):
        ax.bar(
            x + (i - 1.5) * 0.2, [float(r[f"auroc_{name}"]) for r in scenario_rows], 0.2, label=name
        )  # type: ignore[arg-type]
    ax.axhline(0.95, color="black", lw=0.8, ls="--")
    ax.set_xticks(x, [str(r["scenario"]) for r in scenario_rows], rotation=30, ha="right")
    ax.set(ylim=(0.0, 1.0), ylabel="AUROC")
    ax.legend(ncol=4, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "auroc_by_scenario.png", dpi=120)
    plt.close(fig)

    # Score timelines, one episode per scenario (an onset episode where there is one), with the
    # onset and the first fused flag marked.
    picked: dict[str, EpisodeResult] = {}
    for r in sorted(results, key=lambda r: not r.episode.onset_frame):
        if r.episode.scenario != "id":
            picked.setdefault(r.episode.scenario, r)
    onset_results = list(picked.values())
    if onset_results:
        columns = 3
        rows_n = -(-len(onset_results) // columns)
        fig, axes = plt.subplots(
            rows_n, columns, figsize=(4.5 * columns, 2.4 * rows_n), squeeze=False
        )
        for ax, r in zip(axes.flat, onset_results):
            t = np.arange(len(r.ood)) / r.episode.fps
            for name, label in (("bvae", "β-VAE"), ("flow", "flow")):
                ax.plot(t, r.scores[name], label=f"{label} surprise", lw=1)
            onset = r.episode.onset_frame or 0
            ax.axvline(onset / r.episode.fps, color="red", ls="--", lw=1)
            delay = detection_delay(r.flags["fused"], onset)
            if delay is not None:
                ax.axvline((onset + delay) / r.episode.fps, color="black", lw=1.5)
            ax.set_title(
                f"{r.episode.scenario}: delay {delay if delay is not None else 'missed'}",
                fontsize=9,
            )
        for ax in list(axes.flat)[len(onset_results) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.supxlabel(
            "time [s]; surprise = -log10 conformal p-value; red dashed: onset, black: fused stop"
        )
        fig.tight_layout()
        fig.savefig(out / "timelines.png", dpi=110)
        plt.close(fig)


def evaluate(
    data: Path,
    bundles: dict[str, Path],
    out: Path,
    split: str = "test",
    workers: int = 2,
    frozen_s: float = SafetyConfig.frozen_s,
) -> tuple[Path, list[dict[str, object]], dict[str, float]]:
    calibration_episodes = episodes(
        data, "calibration"
    )  # the baseline's reference; missing: say so before minutes of scoring
    results = score_split(data, split, bundles, workers, frozen_s)
    calibration = [_score_calibration_features(e) for e in calibration_episodes]
    _baseline_scores(results, calibration)
    rows = metrics_table(results)
    alarms = id_alarm_summary(results)
    report = write_report(
        results,
        rows,
        alarms,
        out,
        f"Evaluation on {data.name}/{split}",
        decision_tradeoff(results, bundles),
    )
    return report, rows, alarms


def _score_calibration_features(episode: Episode) -> EpisodeResult:
    frames = [rgb for rgb, _ in iter_frames(episode)]
    return EpisodeResult(episode, np.zeros(len(frames), bool), baseline_features(frames), {})


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["nuisance"]:  # the normal table's rows (training.nuisance, docs/normal.md)
        from training import nuisance

        return nuisance.main(argv[1:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument(
        "--bvae", type=Path, required=True, help="β-VAE bundle folder or shipped name"
    )
    parser.add_argument(
        "--flow", type=Path, required=True, help="optical-flow bundle folder or shipped name"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--frozen-s",
        type=non_negative_seconds,
        default=SafetyConfig.frozen_s,
        help="the safety stop's frozen-camera limit [s], part of the fused decision "
        "(0: detectors only)",
    )
    args = parser.parse_args(argv)
    try:
        for bundle in (args.bvae, args.flow):  # here, not first in a worker process
            load_bundle(bundle)
        report, _, _ = evaluate(
            args.data,
            {"bvae": args.bvae, "flow": args.flow},
            args.out,
            args.split,
            args.workers,
            args.frozen_s,
        )
    except (DatasetError, BundleError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        return 1
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
