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
from pathlib import Path

import numpy as np

from vae_ood_monitor.demo import GraphRun, Recording, onset_stamp, stop_events


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
