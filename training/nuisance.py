"""Nuisance evaluation: held-out ID drives replayed through every row of the normal table.

    python -m training.nuisance --data datasets/heldout_id --data datasets/heldout_onsets \\
        --decorated datasets/decorated_test --out reports/nuisance

(also `python -m training.evaluate nuisance ...`). `python -m training.nuisance photometric ...`
writes a β-VAE bundle with photometric normalisation on; `... sensitivity ...` sweeps small
photometric changes through a β-VAE. docs/normal.md is the table this measures: each
row changes the drives the way a real camera, link or town changes them (camera rate with honest
header stamps, lost frames, exposure, contrast, white balance, JPEG, resolution, sensor noise,
half speed, a decorated town) and replays them through the onboard detectors (the runtime's
offline scoring, ONNX Runtime, the safety stop's fused decision). Per row it reports the share of
ID frames the fused decision flags after a drive's first second (bar: ≤ 1 %), and on the onset
drives put through the same row the best learned AUROC per OOD scenario against the row's ID
frames, the non-learned baseline's, and onset delays in seconds and frames.

Rates and speed come from the source frame rate: drives rendered at 60 Hz give 30, 15 and 10 Hz
cameras (every 2nd, 4th and 6th frame, stamped when they were taken) and a robot at half speed
(every frame, stamped 1/30 s apart: half the distance per second, the same path).
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import sys
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from training import evaluate
from training.dataset import DatasetError, Episode, episodes, iter_frames, load_manifest
from vae_ood_monitor.bags import read_camera_messages
from vae_ood_monitor.bundle import (
    SUMS_FILE,
    BundleError,
    default_bundle,
    edit_meta,
    load_bundle,
)
from vae_ood_monitor.cli import non_negative_seconds
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.ground_truth import read_ground_truth
from vae_ood_monitor.images import decode_message, decode_once
from vae_ood_monitor.metrics import auroc, detection_delay
from vae_ood_monitor.offline import score_frames
from vae_ood_monitor.preprocessing import ImagePreprocessing, PhotometricRanges
from vae_ood_monitor.safety import FrozenCameraWatch, SafetyConfig
from vae_ood_monitor.variations import (
    FrameTransform,
    as_sent,
    contrast,
    exposure,
    jpeg,
    noise,
    photometric,
    resolution,
    white_balance,
)

NOMINAL_HZ = 30.0
ID_BAR = 0.01  # share of ID frames the fused decision may flag on any row
SETTLE_S = 1.0  # a drive's first second is left out of the ID share (stacks and decisions fill)
# Onset bars in seconds (issue 30): the sudden, whole-image cases within 0.5 s, the rest 1.0 s.
FAST_ONSETS = ("fog", "darkness", "glare", "black", "frozen")
FAST_BAR_S, SLOW_BAR_S = 0.5, 1.0
CHUNK = 64  # frames scored per call: bounded memory for 60 Hz drives and 1280x960 frames
LEARNED = ("bvae", "flow", "fused", "bvae_raw", "flow_raw")
BASELINE_QUANTILE = 0.999  # baseline threshold: 0.1 % of the as-recorded ID frames above it

# The table's photometric ranges (docs/normal.md), which training draws normal cameras from:
# exposure gain (drawn log-uniformly), contrast factor, white-balance shift, noise σ (grey levels).
EXPOSURE_GAINS = (0.7, 1.4)
CONTRAST_FACTORS = (0.8, 1.2)
WHITE_BALANCE_SHIFT = 0.1
NOISE_SIGMA = 4.0


@dataclass(frozen=True)
class Row:
    """One row of the normal table: how a drive is replayed."""

    name: str
    rate_hz: float = NOMINAL_HZ  # the camera's frame rate
    lost: float = 0.0  # share of frames lost at random after the first
    speed: float = 1.0  # the robot's speed, a share of the rendered one
    transform: FrameTransform | None = field(default=None, compare=False)
    decorated: bool = False  # the drives of the decorated test maps instead of the plain ones

    def selection(self, source_fps: float, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(source frame indices, stamps in seconds) of the replayed stream. The camera takes a
        frame every 1/rate_hz s; at speed s the world moves s/rate_hz s of the rendered drive
        between two of them, which must be a whole number of source frames."""
        stride = source_fps * self.speed / self.rate_hz
        if stride < 1.0 - 1e-6 or abs(stride - round(stride)) > 1e-6:
            raise ValueError(
                f"row '{self.name}' needs a source rate that is a whole multiple of "
                f"{self.rate_hz * (1.0 / self.speed):g} Hz, got {source_fps:g} Hz"
            )
        indices = np.arange(0, frames, round(stride))
        stamps = np.arange(len(indices)) / self.rate_hz
        if self.lost > 0.0 and len(indices) > 1:
            rng = np.random.default_rng(seed)
            dropped = rng.choice(
                np.arange(1, len(indices)), round(self.lost * (len(indices) - 1)), replace=False
            )
            keep = np.setdiff1d(np.arange(len(indices)), dropped)
            indices, stamps = indices[keep], stamps[keep]
        return indices, stamps

    def applies_to(self, source_fps: float) -> bool:
        """Whether drives recorded at `source_fps` can be replayed through this row."""
        try:
            self.selection(source_fps, 1, 0)
        except ValueError:
            return False
        return True


AS_RECORDED = Row("as recorded (30 Hz)")
NORMAL_ROWS: tuple[Row, ...] = (
    AS_RECORDED,
    Row("camera 15 Hz", rate_hz=15.0),
    Row("camera 10 Hz", rate_hz=10.0),
    Row("30 % frames lost", lost=0.3),
    Row("exposure x0.7", transform=exposure(0.7)),
    Row("exposure x1.4", transform=exposure(1.4)),
    Row("contrast -20 %", transform=contrast(0.8)),
    Row("contrast +20 %", transform=contrast(1.2)),
    Row("white balance +10 % (warm)", transform=white_balance(0.1)),
    Row("white balance -10 % (cool)", transform=white_balance(-0.1)),
    Row("JPEG quality 30", transform=jpeg(30)),
    Row("camera 320x240", transform=resolution(320, 240)),
    Row("camera 1280x960 (upscaled)", transform=resolution(1280, 960)),
    Row("noise sigma 4", transform=noise(4.0)),
    Row("half speed", speed=0.5),
    Row("decorated town", decorated=True),
)
ROWS_BY_NAME = {row.name: row for row in NORMAL_ROWS}
# The rows a camera-rate variant is drawn from (training.tune_flow, normal_variant).
RATE_ROWS: tuple[Row, ...] = tuple(
    r for r in NORMAL_ROWS if (r.rate_hz != NOMINAL_HZ or r.lost) and r.transform is None
)


def normal_variant(detector: str, episode: Episode) -> Row:
    """A drive as another normal camera would give it, drawn per drive (seeded by its name): for
    the β-VAE a photometric setting within the table (gain 0.7-1.4 log-uniform, contrast ±20 %,
    white balance ±10 %), for the flow VAE one of the camera-rate rows. Calibrating on these
    replays beside the recorded drives makes the table's variation part of the ID scores."""
    rng = np.random.default_rng(_seed(episode.name, detector, "variant"))
    if detector == "flow":
        return RATE_ROWS[int(rng.integers(len(RATE_ROWS)))]
    gain = float(np.exp(rng.uniform(*np.log(EXPOSURE_GAINS))))
    factor = float(rng.uniform(*CONTRAST_FACTORS))
    shift = float(rng.uniform(-WHITE_BALANCE_SHIFT, WHITE_BALANCE_SHIFT))
    name = f"photometric gain {gain:.2f} contrast {factor:.2f} white balance {shift:+.2f}"
    return Row(name, transform=photometric(gain, factor, shift))


def _seed(*parts: str) -> int:
    return zlib.crc32(":".join(parts).encode())


def replay(episode: Episode, row: Row) -> Iterator[tuple[Any, np.ndarray, float, bool]]:
    """(message, rgb, stamp in seconds, OOD label) of the episode as the row's camera delivers it:
    the message as the detectors receive it (the recorded JPEG, or the changed frame as the camera
    sends it: variations.as_sent) and its pixels, for the non-learned baseline."""
    labels = read_ground_truth(episode.path)
    count = len(labels) if labels else sum(1 for _ in read_camera_messages(episode.path))
    indices, stamps = row.selection(episode.fps, count, _seed(episode.name, row.name, "lost"))
    wanted = dict(zip(indices.tolist(), stamps.tolist()))
    rng = np.random.default_rng(_seed(episode.name, row.name, "pixels"))
    for message in read_camera_messages(episode.path):
        if message.index in wanted:
            sent, rgb = message.msg, decode_message(message.msg)
            if row.transform is not None:
                rgb = row.transform(rgb, rng)
                sent = as_sent(rgb)
            label = bool(labels[message.index].ood) if labels else False
            yield sent, rgb, wanted[message.index], label


@dataclass
class Replay:
    """One episode through one row: per kept frame its stamp, label, scores and flags."""

    row: str
    episode: Episode
    stamps: np.ndarray
    ood: np.ndarray
    scores: dict[str, np.ndarray]  # bvae, flow (surprise), <name>_raw, fused, brightness, framediff
    flags: dict[str, np.ndarray]  # bvae, flow, frozen, fused


def score_replay(job: tuple[Episode, str]) -> Replay:
    """One episode under one row, scored in chunks by the worker's detectors (training.evaluate's)
    as the robot scores a stream: each detector decodes the messages as onboard (its `decode`),
    one decision state, the frames' stamps as their header stamps (the flow detector's motion per
    second) and arrival times (the frozen-camera check)."""
    episode, row_name = job
    detectors, frozen_s = evaluate.worker_detectors()
    watch = FrozenCameraWatch(frozen_s)
    chunks, features = [], []
    decoded: dict[str, list[np.ndarray]] = {name: [] for name in detectors}
    frames: list[np.ndarray] = []
    stamps: list[float] = []
    labels: list[bool] = []
    previous: list[np.ndarray] = []  # the last frame of the previous chunk, for frame differences

    def flush() -> None:
        times = stamps[len(stamps) - len(frames) :]
        chunks.append(
            score_frames(
                decoded,
                detectors,
                reset=not chunks,
                times_s=times,
                frozen_watch=watch,
                stamps_ns=[round(t * 1e9) for t in times],
            )
        )
        both = evaluate.baseline_features(previous + frames)
        features.append({k: v[len(previous) :] for k, v in both.items()})
        previous[:] = frames[-1:]
        frames.clear()
        for images in decoded.values():
            images.clear()

    decoders = [detector.decode for detector in detectors.values()]
    for sent, rgb, stamp, label in replay(episode, ROWS_BY_NAME[row_name]):
        for images, image in zip(decoded.values(), decode_once(decoders, sent)):
            images.append(image)
        frames.append(rgb)
        stamps.append(stamp)
        labels.append(label)
        if len(frames) == CHUNK:
            flush()
    if frames:
        flush()
    if not chunks:
        raise DatasetError(f"{episode.path}: no frames")
    scores = {
        **{n: np.concatenate([c.surprise[n] for c in chunks]) for n in detectors},
        **{f"{n}_raw": np.concatenate([c.scores[n] for c in chunks]) for n in detectors},
        "fused": np.concatenate([c.fused_score for c in chunks]),
        **{k: np.concatenate([f[k] for f in features]) for k in features[0]},
    }
    flags = {
        **{n: np.concatenate([c.flags[n] for c in chunks]) for n in detectors},
        "frozen": np.concatenate([c.frozen for c in chunks]),
        "fused": np.concatenate([c.fused_flags for c in chunks]),
    }
    return Replay(row_name, episode, np.asarray(stamps), np.asarray(labels), scores, flags)


def _add_baseline(replays: list[Replay], reference: list[Replay]) -> float:
    """The non-learned baseline (training.evaluate): brightness and frame difference as |z| against
    the as-recorded ID drives, and their maximum; returns its threshold, above which 0.1 % of the
    reference frames lie (a threshold the baseline is fitted on, not tuned per row)."""
    stats = {}
    for feature in ("brightness", "framediff"):
        values = np.concatenate([r.scores[feature] for r in reference])
        stats[feature] = (np.nanmean(values), np.nanstd(values) + 1e-9)
    for r in replays:
        z = [np.abs(r.scores[k] - mean) / std for k, (mean, std) in stats.items()]
        r.scores["baseline"] = np.fmax(*z)
    settled = np.concatenate([r.scores["baseline"][r.stamps >= SETTLE_S] for r in reference])
    return float(np.nanquantile(settled, BASELINE_QUANTILE))


def onset_bar_s(scenario: str) -> float:
    return FAST_BAR_S if scenario in FAST_ONSETS else SLOW_BAR_S


@dataclass
class OnsetResult:
    scenario: str
    delay_frames: int | None  # frames of the row's stream from the first OOD frame to the stop
    delay_s: float  # seconds from the onset to the stop (inf: never)
    stopped_before: (
        bool  # the fused decision stopped the drive before the onset, past its first second
    )


def onset_result(r: Replay) -> OnsetResult | None:
    """Delay of the fused stop after an onset, by the frames' stamps; None without an onset."""
    onset = r.episode.onset_frame
    hits = np.flatnonzero(r.ood)
    if not onset or not hits.size:
        return None
    first = int(hits[0])
    delay = detection_delay(r.flags["fused"], first)
    onset_s = onset / r.episode.fps  # the stamp of the onset frame, kept or not
    delay_s = math.inf if delay is None else float(r.stamps[first + delay] - onset_s)
    before = bool(np.any(r.flags["fused"][:first] & (r.stamps[:first] >= SETTLE_S)))
    return OnsetResult(r.episode.scenario, delay, delay_s, before)


def row_metrics(
    row: Row, ids: list[Replay], onsets: list[Replay], threshold: float, ood_as_recorded: bool
) -> tuple[dict[str, object], list[dict[str, object]], list[dict[str, object]]]:
    """The row's summary, one line per OOD scenario and one line per ID drive."""
    settled = [r.stamps >= SETTLE_S for r in ids]
    summary: dict[str, object] = {
        "row": row.name,
        "id_drives": len(ids),
        "id_frames": int(sum(s.sum() for s in settled)),
    }
    # A run with one detector (training.photometric) has no flags or scores of the other.
    present = ids[0].flags.keys() | ids[0].scores.keys()
    flag_names = [n for n in ("fused", "bvae", "flow", "frozen") if n in present]
    for name in flag_names:
        flagged = sum(int(r.flags[name][s].sum()) for r, s in zip(ids, settled))
        summary[f"{name}_flagged"] = flagged / max(int(summary["id_frames"]), 1)
    baseline_flags = sum(
        int((r.scores["baseline"][s] > threshold).sum()) for r, s in zip(ids, settled)
    )
    summary["baseline_flagged"] = baseline_flags / max(int(summary["id_frames"]), 1)
    summary["id_drives_stopped"] = sum(
        bool(r.flags["fused"][s].any()) for r, s in zip(ids, settled)
    )
    learned = [name for name in LEARNED if name in present]
    negatives = {
        name: np.concatenate([r.scores[name][s] for r, s in zip(ids, settled)])
        for name in (*learned, "baseline")
    }
    lines = []
    for scenario in dict.fromkeys(r.episode.scenario for r in onsets):
        members = [r for r in onsets if r.episode.scenario == scenario]
        line: dict[str, object] = {"row": row.name, "scenario": scenario}
        for name in (*learned, "baseline"):
            positives = np.concatenate([r.scores[name][r.ood] for r in members])
            labels = np.r_[np.zeros(len(negatives[name]), bool), np.ones(len(positives), bool)]
            line[f"auroc_{name}"] = auroc(labels, np.r_[negatives[name], positives])
        line["auroc_learned"] = max(float(line[f"auroc_{n}"]) for n in learned)  # type: ignore[arg-type]
        results = [o for o in map(onset_result, members) if o is not None]
        if results and not ood_as_recorded:
            delays_s = [o.delay_s for o in results]
            line["delay_s"] = float(np.median(delays_s))
            line["delay_frames"] = float(
                np.median([math.inf if o.delay_frames is None else o.delay_frames for o in results])
            )
            line["within_bar"] = sum(d <= onset_bar_s(scenario) for d in delays_s)
            line["onsets"] = len(results)
            line["stopped_before_onset"] = sum(o.stopped_before for o in results)
        lines.append(line)
    best = [float(line["auroc_learned"]) for line in lines]  # type: ignore[arg-type]
    if lines:
        worst = min(lines, key=lambda line: float(line["auroc_learned"]))  # type: ignore[arg-type]
        summary["worst_auroc"] = float(worst["auroc_learned"])  # type: ignore[arg-type]
        summary["worst_scenario"] = worst["scenario"]
        summary["scenarios_auroc_095"] = f"{sum(a >= 0.95 for a in best)}/{len(lines)}"
        beats = sum(float(line["auroc_learned"]) > float(line["auroc_baseline"]) for line in lines)  # type: ignore[arg-type]
        summary["learned_beats_baseline"] = f"{beats}/{len(lines)}"
        timed = [line for line in lines if "onsets" in line]
        if timed:
            onsets = sum(int(x["onsets"]) for x in timed)  # type: ignore[call-overload]
            within = sum(int(x["within_bar"]) for x in timed)  # type: ignore[call-overload]
            before = sum(int(x["stopped_before_onset"]) for x in timed)  # type: ignore[call-overload]
            summary["onsets_within_bar"] = f"{within}/{onsets}"
            summary["median_delay_s"] = float(np.median([x["delay_s"] for x in timed]))
            summary["median_delay_frames"] = float(np.median([x["delay_frames"] for x in timed]))
            summary["stopped_before_onset"] = f"{before}/{onsets}"
    summary["ood_set"] = "as recorded" if ood_as_recorded else "this row"
    return summary, lines, drive_lines(row, ids, settled, flag_names)


def drive_lines(
    row: Row, ids: list[Replay], settled: list[np.ndarray], flag_names: list[str]
) -> list[dict[str, object]]:
    """One line per ID drive of the row (`settled`: its frames after the first second): where the
    flags of the row's share come from."""
    lines = []
    for r, settled_frames in zip(ids, settled):
        line: dict[str, object] = {
            "row": row.name,
            "drive": f"{r.episode.path.parent.parent.name}/{r.episode.name}",
            "map": r.episode.map,
            "frames": int(settled_frames.sum()),
        }
        for name in flag_names:
            flags = r.flags[name][settled_frames]
            line[f"{name}_flagged"] = float(flags.mean()) if flags.size else 0.0
        first = np.flatnonzero(r.flags["fused"] & settled_frames)
        line["first_flag_s"] = float(r.stamps[first[0]]) if first.size else None
        lines.append(line)
    return lines


def _load(roots: list[Path], split: str) -> list[Episode]:
    return [e for root in roots for e in episodes(root, split)]


def run_rows(
    plain: list[Episode],
    decorated: list[Episode],
    bundles: dict[str, Path],
    rows: tuple[Row, ...] = NORMAL_ROWS,
    workers: int = 2,
    frozen_s: float = SafetyConfig.frozen_s,
) -> tuple[list[dict[str, object]], list[dict[str, object]], list[dict[str, object]]]:
    """Every row over its drives: (one summary per row, one line per row and OOD scenario, one
    line per row and ID drive).

    ID drives are the plain maps' ID episodes (the decorated maps' for the decorated row); onset
    drives are the plain maps' OOD episodes under the same row, or as recorded where the row cannot
    change them (a decorated town; half speed from a 30 Hz source) — marked in `ood_set`."""
    plain_ids = [e for e in plain if e.scenario == "id"]
    oods = [e for e in plain if e.scenario != "id"]
    if not plain_ids:
        raise DatasetError("no in-distribution drives among the plain-map episodes")
    if any(row.decorated for row in rows) and not decorated:
        raise DatasetError("the decorated-town row needs drives on decorated maps (--decorated)")
    plan: dict[str, tuple[list[Episode], str]] = {}  # row: its ID drives, the row its onsets get
    for row in rows:
        as_recorded = row.decorated or not all(row.applies_to(e.fps) for e in oods)
        plan[row.name] = (
            decorated if row.decorated else plain_ids,
            AS_RECORDED.name if as_recorded else row.name,
        )
    wanted = [(e, AS_RECORDED.name) for e in plain_ids]  # the baseline's reference
    for row in rows:
        ids, ood_row = plan[row.name]
        wanted += [(e, row.name) for e in ids] + [(e, ood_row) for e in oods]
    jobs = {(e.path, name): (e, name) for e, name in wanted}
    with ProcessPoolExecutor(
        workers,
        initializer=evaluate.load_worker_detectors,
        initargs=({k: str(v) for k, v in bundles.items()}, frozen_s),
    ) as pool:
        done = dict(
            zip(
                jobs,
                tqdm(pool.map(score_replay, jobs.values()), total=len(jobs), desc="replays"),
            )
        )
    replays = list(done.values())
    threshold = _add_baseline(replays, [done[(e.path, AS_RECORDED.name)] for e in plain_ids])
    summaries, lines, drives = [], [], []
    for row in rows:
        ids, ood_row = plan[row.name]
        summary, scenario_lines, drive_lines_of_row = row_metrics(
            row,
            [done[(e.path, row.name)] for e in ids],
            [done[(e.path, ood_row)] for e in oods],
            threshold,
            ood_as_recorded=ood_row != row.name,
        )
        summaries.append(summary)
        lines += scenario_lines
        drives += drive_lines_of_row
    return summaries, lines, drives


ROW_COLUMNS = (
    ("row", "row"),
    ("id_frames", "ID frames"),
    ("fused_flagged", "fused flagged"),
    ("bvae_flagged", "β-VAE"),
    ("flow_flagged", "flow"),
    ("baseline_flagged", "baseline flagged"),
    ("id_drives_stopped", "ID drives stopped"),
    ("worst_auroc", "worst AUROC (learned)"),
    ("worst_scenario", "worst scenario"),
    ("scenarios_auroc_095", "AUROC ≥ 0.95"),
    ("learned_beats_baseline", "beats baseline"),
    ("onsets_within_bar", "onsets within bar"),
    ("median_delay_s", "median delay s"),
    ("median_delay_frames", "median delay frames"),
    ("stopped_before_onset", "stops before onset"),
    ("ood_set", "OOD set"),
)


def _cell(key: str, value: object) -> str:
    if value is None:
        return "–"
    if key.endswith("_flagged"):
        return f"{100 * float(value):.1f} %"  # type: ignore[arg-type]
    if isinstance(value, float):
        return "–" if math.isnan(value) else ("never" if math.isinf(value) else f"{value:.3g}")
    return str(value)


def markdown_table(summaries: list[dict[str, object]]) -> list[str]:
    lines = [
        "| " + " | ".join(title for _, title in ROW_COLUMNS) + " |",
        "|" + "---|" * len(ROW_COLUMNS),
    ]
    lines += [
        "| " + " | ".join(_cell(key, s.get(key)) for key, _ in ROW_COLUMNS) + " |"
        for s in summaries
    ]
    return lines


_EXPLAINED = (
    "Fused decision = what the safety stop acts on. Flagged = share of ID frames past each "
    f"drive's first {SETTLE_S:g} s (bar ≤ {100 * ID_BAR:g} %). Baseline flagged: brightness / "
    "frame-difference |z| above the level 0.1 % of the as-recorded frames exceed. AUROC: the best "
    "learned score per OOD scenario against the row's ID frames (worst scenario shown; 'beats "
    "baseline': scenarios where it exceeds the baseline's). Onsets within bar: stopped within "
    f"{FAST_BAR_S:g} s ({', '.join(FAST_ONSETS)}) or {SLOW_BAR_S:g} s (the rest) of the onset, by "
    "the frames' stamps. OOD set 'as recorded': the row cannot change the onset drives; their "
    "AUROC is against the row's ID frames, their delays are the as-recorded row's."
)


def write_report(
    summaries: list[dict[str, object]],
    lines: list[dict[str, object]],
    drives: list[dict[str, object]],
    out: Path,
    title: str,
) -> Path:
    """rows.csv, scenarios.csv, drives.csv, nuisance.png and report.md (the table, and the ID
    drives over the bar) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    tables = (("rows.csv", summaries), ("scenarios.csv", lines), ("drives.csv", drives))
    for name, records in tables:
        columns = list(dict.fromkeys(k for record in records for k in record))
        with (out / name).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(records)
    _plot(summaries, out / "nuisance.png")
    text = [
        f"# {title}",
        "",
        _EXPLAINED,
        "",
        *markdown_table(summaries),
        "",
        "![ID frames flagged per row](nuisance.png)",
        "",
        *_drives_over_bar(drives),
    ]
    report = out / "report.md"
    report.write_text("\n".join(text))
    return report


def _drives_over_bar(drives: list[dict[str, object]]) -> list[str]:
    """The report's lines on the ID drives whose own fused share is over the bar (drives.csv
    holds every drive)."""
    over = [d for d in drives if float(d["fused_flagged"]) > ID_BAR]  # type: ignore[arg-type]
    if not over:
        return [f"No ID drive has more than {100 * ID_BAR:g} % of its frames flagged.", ""]
    heading = f"ID drives with more than {100 * ID_BAR:g} % of their frames flagged"
    lines = [
        f"{heading} (drives.csv: every drive):",
        "",
        "| row | drive | map | fused | β-VAE | flow | first flag s |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in over:
        cells = [_cell(k, d.get(k)) for k in ("fused_flagged", "bvae_flagged", "flow_flagged")]
        first = d["first_flag_s"]
        lines.append(
            f"| {d['row']} | {d['drive']} | {d['map']} | {' | '.join(cells)} | "
            f"{'–' if first is None else f'{first:.2f}'} |"
        )
    return [*lines, ""]


def _plot(summaries: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(s["row"]) for s in summaries]
    y = np.arange(len(names))
    floor = 0.01  # percent: a bar of 0 is drawn this long on the log axis
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 0.4 * len(names) + 1.5), sharey=True, width_ratios=(2, 1)
    )
    for i, (key, label) in enumerate(
        (("fused_flagged", "fused"), ("bvae_flagged", "β-VAE"), ("flow_flagged", "flow"))
    ):
        values = [max(100 * float(s[key]), floor) for s in summaries]  # type: ignore[arg-type]
        left.barh(y + (i - 1) * 0.27, values, 0.27, label=label)
    left.axvline(100 * ID_BAR, color="black", ls="--", lw=1, label=f"bar {100 * ID_BAR:g} %")
    left.set(
        xscale="log", xlim=(floor, 100), xlabel="ID frames flagged [%] (after the first second)"
    )
    left.set_yticks(y, names)
    left.invert_yaxis()
    left.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=8)
    worst = [float(s.get("worst_auroc") or np.nan) for s in summaries]  # type: ignore[arg-type]
    right.barh(y, worst, 0.6, color="tab:green")
    right.axvline(0.95, color="black", ls="--", lw=1)
    right.set(xlim=(0.5, 1.0), xlabel="worst scenario's best learned AUROC")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PHOTOMETRIC_QUANTILE = 0.005  # the ranges hold all but the 0.5 % most extreme reference frames


def fit_photometric(
    items: list[Episode], prep: ImagePreprocessing, quantile: float = PHOTOMETRIC_QUANTILE
) -> tuple[PhotometricRanges, int]:
    """The ranges of the model input's photometric statistics over ID frames (and their count)."""
    plain = replace(prep, photometric=None)
    stats = np.array(
        [
            PhotometricRanges.statistics(plain.resize(rgb))
            for episode in items
            for rgb, _ in iter_frames(episode)
        ]
    )
    if not len(stats):
        raise DatasetError("no reference frames for the photometric ranges")
    low, high = np.quantile(stats, [quantile, 1.0 - quantile], axis=0)
    names = ("brightness", "red", "blue", "contrast")
    ranges = {n: (round(float(a), 4), round(float(b), 4)) for n, a, b in zip(names, low, high)}
    return PhotometricRanges(**ranges), len(stats)


def write_photometric_bundle(
    bundle: Path, data: list[Path], split: str, out: Path, quantile: float = PHOTOMETRIC_QUANTILE
) -> PhotometricRanges:
    """A copy of a β-VAE bundle with photometric normalisation on, its ranges fitted on the ID
    drives of `data` (recorded in its provenance); the encoder and calibration are unchanged."""
    loaded = load_bundle(bundle)
    if not isinstance(loaded.preprocessing, ImagePreprocessing):
        raise BundleError(f"{bundle}: photometric normalisation is for β-VAE bundles")
    items = [e for e in _load(data, split) if e.scenario == "id"]
    ranges, frames = fit_photometric(items, loaded.preprocessing, quantile)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(loaded.path, out, ignore=shutil.ignore_patterns(SUMS_FILE))
    fitted_on = {
        "data": [str(d) for d in data],
        "dataset_sha256": [load_manifest(d).get("dataset_sha256") for d in data],
        "split": split,
        "frames": frames,
        "quantiles": [quantile, 1.0 - quantile],
        "from_bundle": str(bundle),
    }

    def turn_on(meta: dict) -> None:
        meta["preprocessing"]["photometric"] = ranges.to_dict()
        meta["provenance"]["photometric"] = fitted_on

    edit_meta(out, turn_on)
    load_bundle(out)
    return ranges


def photometric_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.nuisance photometric",
        description="Write a copy of a β-VAE bundle with photometric normalisation on, its ranges "
        "fitted on ID drives (e.g. datasets/photometric_reference, train maps).",
    )
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--bvae", type=Path, help="β-VAE bundle (default: the runtime's)")
    parser.add_argument("--quantile", type=float, default=PHOTOMETRIC_QUANTILE)
    parser.add_argument("--out", type=Path, required=True, help="the new bundle's folder")
    args = parser.parse_args(argv)
    try:
        ranges = write_photometric_bundle(
            args.bvae or default_bundle("bvae"), args.data, args.split, args.out, args.quantile
        )
    except (DatasetError, BundleError) as err:
        print(f"nuisance photometric: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: photometric ranges {ranges.to_dict()}")
    return 0


SENSITIVITY = (
    ("exposure", exposure, (0.85, 0.9, 0.95, 1.05, 1.1, 1.15)),
    ("contrast", contrast, (0.9, 0.95, 1.05, 1.1)),
    ("white balance", white_balance, (-0.05, -0.025, 0.025, 0.05)),
)


def sensitivity(
    bvae: Path, items: list[Episode], every: int = 20
) -> list[tuple[str, float, float]]:
    """(change, factor, median calibration percentile of the β-VAE's score) for small photometric
    changes of every `every`-th ID frame, factor 1 first: how far inside the normal table the
    encoder's scores leave their calibration range."""
    detector = OODDetector(load_bundle(bvae))
    calibration = np.sort(detector.bundle.calibration_scores)
    frames = [
        rgb
        for e in items
        if e.scenario == "id"
        for i, (rgb, _) in enumerate(iter_frames(e))
        if i % every == 0
    ]
    if not frames:
        raise DatasetError("no ID frames for the sensitivity sweep")
    rng = np.random.default_rng(0)
    sweep = [("none", exposure, 1.0)] + [(n, f, v) for n, f, values in SENSITIVITY for v in values]
    results = []
    for name, make, value in sweep:
        change = make(value)
        scores = detector.score_stream([change(rgb, rng) for rgb in frames])
        percentile = np.searchsorted(calibration, scores) / len(calibration)
        results.append((name, value, float(np.median(percentile))))
    return results


def sensitivity_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.nuisance sensitivity",
        description="Median calibration percentile of a β-VAE's scores on ID frames under small "
        "exposure, contrast and white-balance changes.",
    )
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--bvae", type=Path, help="β-VAE bundle (default: the runtime's)")
    parser.add_argument("--every", type=int, default=20, help="every n-th frame of each drive")
    args = parser.parse_args(argv)
    try:
        bvae = args.bvae or default_bundle("bvae")
        results = sensitivity(bvae, _load(args.data, args.split), args.every)
    except (DatasetError, BundleError) as err:
        print(f"nuisance sensitivity: {err}", file=sys.stderr)
        return 1
    print("| change | factor | median calibration percentile |\n|---|---|---|")
    for name, value, percentile in results:
        print(f"| {name} | {value:g} | {100 * percentile:.1f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["photometric"]:
        return photometric_main(argv[1:])
    if argv[:1] == ["sensitivity"]:
        return sensitivity_main(argv[1:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        action="extend",
        required=True,
        help="dataset(s) on the plain test maps: ID drives and OOD onset drives",
    )
    parser.add_argument(
        "--decorated",
        type=Path,
        nargs="+",
        action="extend",
        default=[],
        help="dataset(s) of ID drives on decorated test maps (the decorated-town row)",
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--bvae", type=Path, help="β-VAE bundle (default: the runtime's)")
    parser.add_argument("--flow", type=Path, help="optical-flow bundle (default: the runtime's)")
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=list(ROWS_BY_NAME),
        metavar="ROW",
        help="rows to run (default: all): " + "; ".join(ROWS_BY_NAME).replace("%", "%%"),
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--frozen-s",
        type=non_negative_seconds,
        default=SafetyConfig.frozen_s,
        help="the safety stop's frozen-camera limit [s] (0: detectors only)",
    )
    args = parser.parse_args(argv)
    bundles = {
        "bvae": args.bvae or default_bundle("bvae"),
        "flow": args.flow or default_bundle("flow"),
    }
    rows = tuple(ROWS_BY_NAME[n] for n in args.rows) if args.rows else NORMAL_ROWS
    if AS_RECORDED not in rows:
        rows = (AS_RECORDED, *rows)
    try:
        for bundle in bundles.values():
            load_bundle(bundle)
        summaries, lines, drives = run_rows(
            _load(args.data, args.split),
            _load(args.decorated, args.split),
            bundles,
            rows,
            args.workers,
            args.frozen_s,
        )
    except (DatasetError, BundleError) as err:
        print(f"nuisance: {err}", file=sys.stderr)
        return 1
    title = f"Nuisance evaluation: {bundles['bvae'].name} + {bundles['flow'].name}"
    report = write_report(summaries, lines, drives, args.out, title)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
