"""`vae-ood-monitor bench`: does the graph keep up with 30 Hz camera input, and how fast does it stop?

Replays a labelled bag (default: the shipped demo bag, 640×480 JPEG at 30 Hz, in distribution and
then foggy) `--runs` times through fresh node processes over DDS and reports, side by side:
onset-to-stop latency (first OOD frame arrived at a peer → emergency_stop true received at that
peer, decision window included) p50 / p95 / max; per detector the frames handled (processed or
deliberately dropped as stale) against frames published, processing time p50 and
receive-to-decision latency p50 and the warm-up before it subscribed; and each node's peak
resident memory.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_ood_monitor.demo import GraphRun, Recording, onset_stamp, stop_events
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.ground_truth import read_ground_truth
from vae_ood_monitor.offline import DETECTORS, default_bundle, score_bag, thinned
from vae_ood_monitor.safety import SafetyConfig


def frames_published(recording: Recording) -> int:
    """Frames the bag player sent: its own final count, or, if that report was lost as the player
    exited, the frames the recorder received (a reliable subscriber can still miss a few)."""
    player = recording.diagnostics.get("ood_monitor/bag_player", {})
    return max(int(player.get("published", 0)), len(recording.frames))


def run_bench(
    bag: Path,
    runs: int,
    out_dir: Path,
    rate: float = 1.0,
    bundles: dict[str, Path | None] | None = None,
) -> int:
    try:
        onset_ns = onset_stamp(bag)
    except ValueError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    latencies: list[float] = []
    misses = false_stops = 0
    handled: dict[str, list[float]] = {"bvae": [], "flow": []}
    processing: dict[str, list[float]] = {"bvae": [], "flow": []}
    bundle_paths: dict[str, str] = {}
    decision_latency: dict[str, list[float]] = {"bvae": [], "flow": []}
    warm_up: dict[str, list[float]] = {"bvae": [], "flow": []}
    rss: dict[str, list[float]] = {}
    for index in range(runs):
        run = GraphRun(out_dir / f"run_{index}", bundles)
        try:
            problem = run.wait_ready()
            if problem:
                print(f"bench: {problem}", file=sys.stderr)
                return 1
            run.replay(bag, rate)
        finally:
            run.close()
        recording = run.recording
        onset_time = recording.frames.get(onset_ns) if onset_ns is not None else None
        _, stops = stop_events(recording)
        published = frames_published(recording)
        for name in handled:
            values = recording.diagnostics[f"ood_monitor/{name}_detector"]
            done = (
                int(values["processed"])
                + int(values["dropped_stale"])
                + int(values["bad_frames"])
                + int(values["model_errors"])
            )
            handled[name].append(done / max(published, 1))
            processing[name].append(float(values["processing_ms_p50"]))
            decision_latency[name].append(float(values["latency_ms_p50"]))
            warm_up[name].append(float(values["warm_up_ms"]))
            bundle_paths[name] = str(values.get("bundle", "?"))
        for name, value in recording.peak_rss_mb.items():
            rss.setdefault(name, []).append(value)
        if onset_time is None or any(t < onset_time for t in stops):
            false_stops += 1
        elif stops:
            latencies.append(stops[0] - onset_time)
        else:
            misses += 1
        shown = (
            f"{latencies[-1]:.3f} s"
            if latencies and len(latencies) + misses + false_stops == index + 1 and stops
            else "—"
        )
        print(f"run {index + 1}/{runs}: published {published} frames, onset-to-stop {shown}")
    print(f"\nbench over {runs} replays of {bag.name} at {rate:g}x (medians across runs)")
    if latencies:
        p50, p95 = np.percentile(latencies, [50, 95])
        print(
            f"onset-to-stop latency: p50 {p50:.3f} s, p95 {p95:.3f} s, max {max(latencies):.3f} s ({misses} missed, {false_stops} false stops)"
        )
    else:
        print(
            f"onset-to-stop latency: no stop measured ({misses} missed, {false_stops} false stops)"
        )
    for name in handled:
        print(
            f"{name:5s} detector ({Path(bundle_paths[name]).name}): frames handled {np.median(handled[name]):.2%} of published, "
            f"processing p50 {np.median(processing[name]):.1f} ms, receive-to-decision p50 {np.median(decision_latency[name]):.1f} ms, "
            f"warm-up {np.median(warm_up[name]):.0f} ms"
        )
    for name, values in rss.items():
        print(f"peak resident memory {name:14s} {np.median(values):7.1f} MB")
    return 0


# ---- Offline comparisons: the same detectors and code path as `score`, on a thinned camera ----

CAMERAS = {  # name → (every n-th frame, share of frames lost at random, speed-up)
    "30 Hz": (1, 0.0, 1.0),
    "15 Hz": (2, 0.0, 1.0),
    "10 Hz": (3, 0.0, 1.0),
    "30 Hz, 25 % lost": (1, 0.25, 1.0),
    "2x speed-up (OOD)": (2, 0.0, 2.0),
}
VARIANTS = {  # name → (decode, header stamps used)
    "per frame, full decode (before)": ("full", False),
    "per second, full decode": ("full", True),
    "per second, reduced decode (now)": ("reduced", True),
}


@dataclass
class Replay:
    """One replay of a labelled bag through the detectors: ID statistics and the onset delay."""

    flow_median: float  # median flow score of the ID frames after the first second
    flagged: dict[str, float]  # share of those frames flagged: per detector and "fused"
    onset_delay_s: float | None  # first fused flag at or after the onset, by header stamps
    id_frames: int
    bvae_median: float


def replay_offline(
    bag: Path,
    bundles: dict[str, Path | None],
    decode: str,
    stamps: bool,
    every: int = 1,
    drop: float = 0.0,
    seed: int = 0,
    settle_s: float = 1.0,
    speed: float = 1.0,
) -> Replay:
    """Score `bag` as `vae-ood-monitor score` does (frozen check included) on a camera thinned to
    every `every`-th frame with a share `drop` lost; ID frames are those before the onset."""
    truth = read_ground_truth(bag)
    if truth is None:
        raise ValueError(f"{bag} carries no ground truth")
    onset_ns = next((label.stamp_ns for label in truth if label.ood), None)
    if onset_ns is not None:  # on the clock of `thinned`
        onset_ns = truth[0].stamp_ns + round((onset_ns - truth[0].stamp_ns) / speed)
    detectors = {
        name: OODDetector.from_path(str(path or default_bundle(name)), decode=decode)
        for name, path in {**dict.fromkeys(DETECTORS), **bundles}.items()
    }
    stamps_ns: list[int] = []
    scores: dict[str, list[float]] = {name: [] for name in detectors}
    flags: dict[str, list[bool]] = {name: [] for name in (*detectors, "fused")}
    for chunk_stamps, results in score_bag(
        bag,
        detectors,
        frozen_s=SafetyConfig.frozen_s,
        select=lambda messages: thinned(messages, every, drop, seed, speed),
        stamps=stamps,
    ):
        stamps_ns += chunk_stamps
        for name in detectors:
            scores[name] += list(results.scores[name])
            flags[name] += list(results.flags[name])
        flags["fused"] += list(results.fused_flags)
    t = (np.asarray(stamps_ns) - stamps_ns[0]) * 1e-9
    before = np.asarray(stamps_ns) < (onset_ns if onset_ns is not None else np.inf)
    steady = before & (t >= settle_s)
    fused = np.asarray(flags["fused"])
    after = np.flatnonzero(~before & fused)
    return Replay(
        flow_median=float(np.nanmedian(np.asarray(scores["flow"])[steady])),
        flagged={name: float(np.mean(np.asarray(v)[steady])) for name, v in flags.items()},
        onset_delay_s=(
            None if onset_ns is None or not after.size else (stamps_ns[after[0]] - onset_ns) * 1e-9
        ),
        id_frames=int(steady.sum()),
        bvae_median=float(np.nanmedian(np.asarray(scores["bvae"])[steady])),
    )


def run_offline_table(
    bag: Path, bundles: dict[str, Path | None], seeds: int = 5, settle_s: float = 1.0
) -> int:
    """Print, per camera (rate, lost frames) and variant (per frame or per second, full or
    reduced decode): median scores of the ID frames after the first second, the share flagged
    (flow detector, fused decision) and the onset delay. Lost frames: medians over `seeds` draws."""
    print(
        f"offline replay of {bag.name}: ID = frames before the onset, after the first {settle_s:g} s"
    )
    print(
        f"{'camera':18s} {'variant':34s} {'ID fr':>5s} {'flow med':>9s} {'bvae med':>9s} "
        f"{'flow flag':>9s} {'bvae flag':>9s} {'fused':>7s} {'onset→flag':>10s}"
    )
    for camera, (every, drop, speed) in CAMERAS.items():
        for variant, (decode, stamps) in VARIANTS.items():
            replays = [
                replay_offline(bag, bundles, decode, stamps, every, drop, seed, settle_s, speed)
                for seed in range(seeds if drop else 1)
            ]
            delays = [r.onset_delay_s for r in replays if r.onset_delay_s is not None]
            delay = f"{np.median(delays):.3f} s" if delays else "missed"
            print(
                f"{camera:18s} {variant:34s} {replays[0].id_frames:5d} "
                f"{np.median([r.flow_median for r in replays]):9.1f} "
                f"{np.median([r.bvae_median for r in replays]):9.2f} "
                f"{np.median([r.flagged['flow'] for r in replays]):9.1%} "
                f"{np.median([r.flagged['bvae'] for r in replays]):9.1%} "
                f"{np.median([r.flagged['fused'] for r in replays]):7.1%} {delay:>10s}"
            )
    return 0
