"""`vae-ood-monitor bench`: what the graph costs and whether it keeps up (docs/performance.md).

- live (default): an independent client (vae_ood_monitor.stream) streams the bag's 640×480 JPEG
  frames into the graph over DDS: ID driving, camera silence, ID driving with resets, the onset.
  Per node the CPU seconds per frame (from /proc), frames processed against frames the client
  actually published, stop times and resident memory; `--baseline-ref` runs a git worktree of an
  earlier version beside this checkout, in the same run.
- `--soak MINUTES`: ID driving that long; resident memory and CPU per node over time (CSV, PNG).
- `--offline`: no graph; the bag scored as `score` does on a slower or lossy camera.
- `--replay`: the earlier bench — the bag player replays the bag `--runs` times, onset latency
  p50 / p95 / max, frames handled, processing time, peak memory.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vae_ood_monitor.bundle import default_bundle, models_dir
from vae_ood_monitor.demo import (
    NODES,
    GraphRun,
    Recording,
    onset_stamp,
    resident_mb,
    start_node,
    stop_events,
)
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.graph import stop_processes
from vae_ood_monitor.ground_truth import read_ground_truth
from vae_ood_monitor.offline import DETECTORS, score_bag, thinned
from vae_ood_monitor.safety import SafetyConfig
from vae_ood_monitor.stream import CameraClient, Drive, load_drive


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
        for name, shares in handled.items():
            values = recording.diagnostics[f"ood_monitor/{name}_detector"]
            done = (
                int(values["processed"])
                + int(values["dropped_stale"])
                + int(values["bad_frames"])
                + int(values["model_errors"])
            )
            shares.append(done / max(published, 1))
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
            f"onset-to-stop latency: p50 {p50:.3f} s, p95 {p95:.3f} s, "
            f"max {max(latencies):.3f} s ({misses} missed, {false_stops} false stops)"
        )
    else:
        print(
            f"onset-to-stop latency: no stop measured ({misses} missed, {false_stops} false stops)"
        )
    for name, shares in handled.items():
        print(
            f"{name:5s} detector ({Path(bundle_paths[name]).name}): frames handled "
            f"{np.median(shares):.2%} of published, processing p50 "
            f"{np.median(processing[name]):.1f} ms, receive-to-decision p50 "
            f"{np.median(decision_latency[name]):.1f} ms, warm-up {np.median(warm_up[name]):.0f} ms"
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
    "per second, reduced decode": ("reduced", True),
    "per second, shared decode (now)": ("shared", True),
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
    """Print, per camera (rate, lost frames) and variant (per frame or per second, full, reduced
    or shared decode): median scores of the ID frames after the first second, the share flagged
    (flow detector, fused decision) and the onset delay. Lost frames: medians over `seeds`
    draws."""
    print(
        f"offline replay of {bag.name}: ID = frames before the onset, "
        f"after the first {settle_s:g} s"
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


# ---- Live: an independent client streams JPEG frames into the graph; CPU per frame per node ----

NODE_NAMES = ("bvae_detector", "flow_detector", "safety_stop")
READY = {"ood_monitor/bvae_detector", "ood_monitor/flow_detector", "ood_monitor/safety_stop"}
# nodes: a process per node, as launch/monitor.launch.py starts them with `detectors:=separate`;
# detectors: `ood_detectors` (both detectors, one decode, decode "shared") and the safety stop;
# monitor: `vae-ood-monitor monitor`, whichever processes it starts.
GRAPHS = ("nodes", "detectors", "monitor")
LAYOUTS = {"nodes": NODE_NAMES, "detectors": ("ood_detectors", "safety_stop")}
PROCESSES = (*NODE_NAMES, "ood_detectors", "monitor")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc); NaN once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class Side:
    """A version of the monitor under test: where its code is (its nodes start there, so
    `-m vae_ood_monitor…` imports that copy) and the models folder it ships."""

    name: str
    root: Path
    models: Path

    def bundles(self) -> dict[str, Path]:
        """The version's default bundles, from its own models/defaults.json."""
        defaults = json.loads((self.models / "defaults.json").read_text())
        return {name: self.models / defaults[name] for name in DETECTORS}


def this_version() -> Side:
    """The code running this bench with the models it was installed with (share/, as ament finds
    them; an installed package has no models/ beside its code)."""
    return Side("this checkout", Path(__file__).resolve().parents[1], models_dir())


def checkout(ref: str, out_dir: Path) -> Side:
    """A `git worktree` of `ref` under `out_dir` (kept for the next run), as a Side."""
    repo = Path(__file__).resolve().parents[1]
    sha = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if sha.returncode != 0:
        raise ValueError(f"--baseline-ref {ref}: not a commit of {repo} ({sha.stderr.strip()})")
    path = (out_dir / f"baseline-{sha.stdout.strip()[:10]}").resolve()
    if not (path / "vae_ood_monitor").exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        # A worktree whose folder was deleted stays registered and blocks `add` at its path
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], check=True)
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "add", "--detach", str(path), sha.stdout.strip()],
            check=True,
            capture_output=True,
        )
    return Side(ref, path, path / "models")


class LiveGraph:
    """The monitor's nodes as processes, from `side`'s code: a process per node ("nodes"), both
    detectors in one ("detectors"), or as one `vae-ood-monitor monitor` command starts them."""

    def __init__(
        self, side: Side, graph: str, log_dir: Path, rules: list[str] | None = None
    ) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        params = (log_dir / "monitor.yaml").resolve()  # the nodes run in side.root
        decode = "    decode: shared\n" if graph == "detectors" else ""
        params.write_text(
            "".join(
                f"/**/{kind}_detector:\n  ros__parameters:\n    bundle: {path}\n{decode}"
                for kind, path in side.bundles().items()
            )
        )
        if graph in LAYOUTS:
            self.processes = {
                name: start_node(
                    name,
                    {},
                    log_dir / f"{name}.log",
                    cwd=side.root,
                    rules=[*(rules or []), "--params-file", str(params)],
                )
                for name in LAYOUTS[graph]
            }
        else:
            command = [sys.executable, "-m", "vae_ood_monitor.cli", "monitor"]
            with (log_dir / "monitor.log").open("w") as log:
                self.processes = {
                    "monitor": subprocess.Popen(
                        [*command, "--params-file", str(params)],
                        cwd=side.root,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                }
        # Processes on the camera: at least the safety stop's and the detectors' one
        self.camera_subscribers = len(LAYOUTS.get(graph, LAYOUTS["detectors"]))

    def pids(self) -> dict[str, int]:
        """Node → process id; a one-process monitor is one entry, a supervising one its children."""
        pids = {name: p.pid for name, p in self.processes.items()}
        if "monitor" in pids:
            # `vae-ood-monitor monitor` starts each with `from <module> import <function>; ...`
            starts = {
                name: "from {} import {};".format(*NODES[name].split(":"))
                for name in PROCESSES[:-1]
            }
            for child in _children(pids["monitor"]):
                line = _cmdline(child)
                name = next((n for n, start in starts.items() if start in line), None)
                if name is not None:
                    pids[name] = child
        return pids

    def dead(self) -> list[str]:
        return [name for name, p in self.processes.items() if p.poll() is not None]

    def close(self) -> None:
        stop_processes(self.processes, timeout=15.0)


@dataclass
class LiveResult:
    """One live run: what the bar asks, per node CPU and memory."""

    published: int = 0
    processed: dict[str, float] = field(default_factory=dict)  # share of published frames
    cpu_ms_per_frame: dict[str, float] = field(default_factory=dict)  # per process, ID segment
    rss_mb: dict[str, float] = field(default_factory=dict)
    false_stop_s: float | None = None  # first stop during ID driving, from its start
    silence_stop_s: float | None = None  # camera silence → stop
    reset_after_s: float | None = None  # ID driving after the silence → reset accepted
    onset_stop_s: float | None = None  # first OOD frame published → stop received
    recovery_s: float | None = None  # ID driving after the OOD part → reset accepted
    notes: list[str] = field(default_factory=list)


def _processed(client: CameraClient, published: int) -> dict[str, float]:
    shares = {}
    for kind in DETECTORS:
        values = client.log.diagnostics.get(f"ood_monitor/{kind}_detector", {})
        shares[kind] = int(values.get("processed", 0)) / max(published, 1)
    return shares


def _reset_while(client: CameraClient, play: Callable[[], None], start: float) -> float | None:
    """Run `play` and ask for a reset every 0.25 s meanwhile; seconds from `start` to the first
    accepted reset (None: none was)."""
    accepted: list[float] = []
    done = threading.Event()

    def ask() -> None:
        while not done.is_set() and not accepted:
            ok, _ = client.reset(timeout=1.0)
            if ok:  # the safety stop's answer: released (or was not stopped)
                accepted.append(time.monotonic() - start)
            done.wait(0.25)

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    play()
    done.set()
    asker.join(timeout=3.0)
    return accepted[0] if accepted else None


def live_run(
    side: Side, graph: str, drive: Drive, rate_hz: float, id_s: float, log_dir: Path
) -> LiveResult:
    """Start the graph, wait until it reports, then: ID driving (`id_s`, CPU measured), camera
    silence, ID driving with resets asked for, the drive's OOD part; stops timed at the client."""
    result = LiveResult()
    client = CameraClient()
    run = LiveGraph(side, graph, log_dir)
    try:
        deadline = time.monotonic() + 90.0
        while (
            not READY <= set(client.log.diagnostics)
            or client.subscribers() < run.camera_subscribers
        ):
            if run.dead() or time.monotonic() > deadline:
                result.notes.append(f"graph did not come up; see {log_dir}")
                return result
            time.sleep(0.2)
        ids = drive.in_distribution
        client.play(ids, rate_hz, seconds=3.0)  # the safety stop releases the robot
        if client.stopped():
            result.notes.append("not released after 3 s of ID driving")
        pids = run.pids()
        start, published = time.monotonic(), client.log.published
        cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client.play(ids, rate_hz, seconds=id_s)
        frames = client.log.published - published
        for name, pid in pids.items():
            result.cpu_ms_per_frame[name] = (cpu_seconds(pid) - cpu[name]) / frames * 1000.0
            result.rss_mb[name] = resident_mb(pid)
        result.false_stop_s = client.stop_since(start)
        if client.stopped():
            _reset_while(client, lambda: client.play(ids, rate_hz, seconds=4.0), time.monotonic())
        silent = time.monotonic()
        client.silence(1.5)
        result.silence_stop_s = client.stop_since(silent)
        resumed = time.monotonic()
        result.reset_after_s = _reset_while(
            client, lambda: client.play(ids, rate_hz, seconds=4.0), resumed
        )
        client.play(ids, rate_hz)  # up to the last frame before the onset
        onset = time.monotonic()
        client.play(drive.out_of_distribution, rate_hz, follows=True)
        time.sleep(0.5)
        result.onset_stop_s = client.stop_since(onset)
        back = time.monotonic()
        result.recovery_s = _reset_while(
            client, lambda: client.play(ids, rate_hz, seconds=5.0), back
        )
        time.sleep(1.5)  # one more 1 Hz diagnostics round
        result.published = client.log.published
        result.processed = _processed(client, result.published)
    finally:
        run.close()
        client.close()
    return result


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f} s"


def run_live_bench(
    bag: Path,
    out_dir: Path,
    baseline_ref: str | None,
    graph: str = "nodes",
    rates: tuple[float, ...] = (30.0,),
    id_s: float = 20.0,
    id_bag: Path | None = None,
) -> int:
    """CPU per frame per node, keep-up and stop times of the graph, this checkout beside
    `baseline_ref` (a git worktree of it, with its own default bundles), at each camera rate."""
    drive = load_drive(bag)
    if not drive.out_of_distribution:
        print(f"bench: {bag} has no labelled onset", file=sys.stderr)
        return 1
    if id_bag is not None:
        drive = Drive(load_drive(id_bag).in_distribution + drive.out_of_distribution, None)
        drive.onset = len(drive.jpeg) - len(load_drive(bag).out_of_distribution)
    sides = [this_version()]
    if baseline_ref is not None:
        sides.insert(0, checkout(baseline_ref, out_dir))
    results: dict[str, LiveResult] = {}
    for rate in rates:
        for side in sides:
            label = f"{side.name} @ {rate:g} Hz"
            layout = baseline_graph(graph, side) if side is not sides[-1] else graph
            print(f"running {layout} graph of {label} ...", flush=True)
            results[label] = live_run(
                side,
                layout,
                drive,
                rate,
                id_s,
                out_dir / f"{side.name}_{rate:g}hz".replace(" ", "_"),
            )
    width = max(len(k) for k in results) + 2
    print(f"\nlive bench ({graph} graph): {bag.name}, ID driving {id_s:g} s, independent client")
    print(f"{'':34s}" + "".join(f"{k:>{width}s}" for k in results))
    processes = [n for n in PROCESSES if any(n in r.rss_mb for r in results.values())]
    rows: list[tuple[str, Callable[[LiveResult], str]]] = [
        ("frames published", lambda r: str(r.published)),
        *(
            (
                f"CPU ms/frame {name}",
                lambda r, n=name: (
                    f"{r.cpu_ms_per_frame[n]:.2f}" if n in r.cpu_ms_per_frame else "—"
                ),
            )
            for name in processes
        ),
        ("CPU ms/frame whole graph", lambda r: f"{sum(r.cpu_ms_per_frame.values()):.2f}"),
        *(
            (f"processed {kind} / published", lambda r, k=kind: f"{r.processed.get(k, 0.0):.1%}")
            for kind in DETECTORS
        ),
        (
            "stop during ID driving",
            lambda r: "none" if r.false_stop_s is None else f"after {r.false_stop_s:.1f} s",
        ),
        ("camera silence → stop", lambda r: _seconds(r.silence_stop_s)),
        ("reset accepted after ID", lambda r: _seconds(r.reset_after_s)),
        ("onset → stop", lambda r: _seconds(r.onset_stop_s)),
        ("reset accepted after OOD → ID", lambda r: _seconds(r.recovery_s)),
        *(
            (f"RSS MB {name}", lambda r, n=name: f"{r.rss_mb[n]:.0f}" if n in r.rss_mb else "—")
            for name in processes
        ),
    ]
    for title, cell in rows:
        print(f"{title:34s}" + "".join(f"{cell(r):>{width}s}" for r in results.values()))
    for label, result in results.items():
        for note in result.notes:
            print(f"note ({label}): {note}")
    return 0


def paired_camera(index: int) -> str:
    return f"/paired_{index}/camera/image/compressed"


def paired_rules(index: int) -> list[str]:
    """Remappings that give the `index`-th of several graphs running at once its own camera topic,
    namespace, stop and velocity topics."""
    prefix = f"/paired_{index}"
    names = {
        "__ns": prefix,
        "camera/image/compressed": paired_camera(index),
        "emergency_stop": f"{prefix}/emergency_stop",
        "cmd_vel_in": f"{prefix}/cmd_vel_in",
        "cmd_vel_out": f"{prefix}/cmd_vel_out",
    }
    return [arg for name, target in names.items() for arg in ("-r", f"{name}:={target}")]


def baseline_graph(graph: str, side: Side) -> str:
    """The earlier version's graph for `graph`: "nodes" where `side` has no `ood_detectors` (before
    2026-12-07), so like is compared with like where it can be."""
    if graph != "detectors":
        return graph
    setup = (side.root / "setup.py").read_text()  # its console scripts: the executables it has
    return graph if re.search(r"['\"]ood_detectors\s*=", setup) else "nodes"


def run_paired_bench(
    bag: Path,
    out_dir: Path,
    baseline_ref: str,
    rate_hz: float = 30.0,
    windows: int = 6,
    window_s: float = 15.0,
    id_bag: Path | None = None,
    graphs: tuple[str, ...] = ("nodes",),
) -> int:
    """CPU per frame per process of `baseline_ref`'s graph (the first of `graphs` where it has
    it, else a process per node: baseline_graph) and this
    checkout's in each of `graphs` ("nodes", "detectors"), all running at the same time (each
    graph under its own names and fed the same ID drive by its own client): all see the same load
    from everything else on the machine, which on a shared machine changes CPU time per frame by
    ±20 % from one minute to the next. Reports each window, the medians, and the median of the
    per-window ratios of the whole graphs: each of this checkout's to the baseline's, and to each
    other's."""
    ids = load_drive(id_bag or bag).in_distribution
    this = this_version()
    baseline = checkout(baseline_ref, out_dir)
    runs = [(baseline, baseline_graph(graphs[0], baseline)), *((this, graph) for graph in graphs)]
    labels = [baseline_ref] + [
        this.name if graphs == ("nodes",) else f"this, {graph}" for graph in graphs
    ]
    started: list[tuple[LiveGraph, CameraClient]] = []
    rows: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    try:
        for index, ((side, graph), label) in enumerate(zip(runs, labels)):
            log_dir = out_dir / f"paired_{index}_{label}".replace(" ", "_").replace(",", "")
            started.append(
                (
                    LiveGraph(side, graph, log_dir, paired_rules(index)),
                    CameraClient(paired_camera(index)),
                )
            )
        deadline = time.monotonic() + 120.0
        while any(client.subscribers() < run.camera_subscribers for run, client in started):
            if any(run.dead() for run, _ in started) or time.monotonic() > deadline:
                print(f"bench: a graph did not come up; see {out_dir}/paired_*", file=sys.stderr)
                return 1
            time.sleep(0.2)

        def stream(seconds: float) -> None:
            players = [
                threading.Thread(target=client.play, args=(ids, rate_hz, seconds))
                for _, client in started
            ]
            for player in players:
                player.start()
            for player in players:
                player.join()

        stream(4.0)  # warm: the detectors' first frames, the safety stops' release
        print(f"paired bench: {bag.name} ID drive at {rate_hz:g} Hz, {windows} × {window_s:g} s")
        for window in range(windows):
            published = [client.log.published for _, client in started]
            before = [
                {name: cpu_seconds(pid) for name, pid in run.pids().items()} for run, _ in started
            ]
            load = os.getloadavg()[0]
            stream(window_s)
            for label, (run, client), count, cpu in zip(labels, started, published, before):
                frames = client.log.published - count
                row = {
                    name: (cpu_seconds(pid) - cpu[name]) / frames * 1000.0
                    for name, pid in run.pids().items()
                }
                row["whole graph"] = sum(row.values())
                rows[label].append(row)
                print(
                    f"window {window + 1} (load {load:.1f}) {label:>20s}: "
                    + ", ".join(f"{name} {value:.2f}" for name, value in row.items())
                )
    finally:
        for run, client in started:
            run.close()
            client.close()
    print(f"\nCPU ms/frame, medians over {windows} windows (all graphs running at once)")
    names = [n for n in (*PROCESSES, "whole graph") if any(n in rows[label][0] for label in labels)]
    print(f"{'':22s}" + "".join(f"{n:>15s}" for n in names))
    for label in labels:
        medians = [
            f"{np.median([r[n] for r in rows[label]]):15.2f}"
            if n in rows[label][0]
            else f"{'—':>15s}"
            for n in names
        ]
        print(f"{label:>22s}" + "".join(medians))
    for later in range(1, len(labels)):
        for earlier in range(later):
            ratios = [
                new["whole graph"] / old["whole graph"]
                for old, new in zip(rows[labels[earlier]], rows[labels[later]])
            ]
            print(
                f"whole graph, {labels[later]} / {labels[earlier]}: median "
                f"{np.median(ratios):.3f} (windows {min(ratios):.3f}-{max(ratios):.3f})"
            )
    return 0


def _plot_soak(rows: list[dict[str, float | str]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    for name in sorted({str(r["process"]) for r in rows}):
        mine = [r for r in rows if r["process"] == name]
        ax.plot(
            [float(r["t_s"]) / 60 for r in mine], [float(r["rss_mb"]) for r in mine], label=name
        )
    ax.set_xlabel("minutes of ID driving")
    ax.set_ylabel("resident memory [MB]")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_soak(
    bag: Path,
    out_dir: Path,
    minutes: float,
    graph: str = "nodes",
    rate_hz: float = 30.0,
    id_bag: Path | None = None,
    baseline_ref: str | None = None,
    sample_s: float = 10.0,
) -> int:
    """Stream ID driving for `minutes` (the drive looped; at each loop the stamps jump, a camera
    hiccup the flow detector restarts on, not a cut it would see as motion) into the graph; every
    `sample_s` record each node's resident memory and CPU time; report RSS growth, frames
    processed against frames the client published, CPU per frame and every stop (each followed
    by a reset so the soak goes on)."""
    side = checkout(baseline_ref, out_dir) if baseline_ref else this_version()
    ids = load_drive(id_bag or bag).in_distribution
    out_dir.mkdir(parents=True, exist_ok=True)
    client = CameraClient()
    run = LiveGraph(side, graph, out_dir / "soak_logs")
    rows: list[dict[str, float | str]] = []
    try:
        deadline = time.monotonic() + 90.0
        while (
            not READY <= set(client.log.diagnostics)
            or client.subscribers() < run.camera_subscribers
        ):
            if run.dead() or time.monotonic() > deadline:
                print(f"bench: graph did not come up; see {out_dir}/soak_logs", file=sys.stderr)
                return 1
            time.sleep(0.2)
        client.play(ids, rate_hz, seconds=3.0)
        pids = run.pids()
        start, published0 = time.monotonic(), client.log.published
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        done = threading.Event()

        def sample() -> None:
            while not done.wait(sample_s):
                now = time.monotonic() - start
                for name, pid in pids.items():
                    rows.append(
                        {
                            "t_s": round(now, 1),
                            "process": name,
                            "rss_mb": round(resident_mb(pid), 1),
                            "cpu_s": round(cpu_seconds(pid) - cpu0[name], 2),
                            "published": client.log.published - published0,
                        }
                    )
                if client.stopped():
                    _reset_while(client, lambda: time.sleep(3.0), time.monotonic())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        client.play(ids, rate_hz, seconds=minutes * 60.0)
        end = time.monotonic()
        done.set()
        sampler.join(timeout=10.0)
        time.sleep(1.5)  # the detectors' last 1 Hz report; the camera is silent from here on
        # Every frame since the graph came up, warm-up included: the detectors count them all.
        published = client.log.published
        processed = {
            kind: int(client.log.diagnostics[f"ood_monitor/{kind}_detector"]["processed"])
            for kind in DETECTORS
        }
        stop_events_s = [t - start for t, v in client.log.estop if v and start <= t <= end]
    finally:
        run.close()
        client.close()
    with (out_dir / "soak.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["t_s", "process", "rss_mb", "cpu_s", "published"]
        )
        writer.writeheader()
        writer.writerows(rows)
    plotted = _plot_soak(rows, out_dir / "soak.png")
    print(f"\nsoak ({graph} graph, {side.name}): {minutes:g} min of ID driving at {rate_hz:g} Hz")
    print(f"frames published by the client (warm-up included): {published}")
    for kind, count in processed.items():
        print(f"{kind} detector processed {count} ({count / max(published, 1):.1%} of published)")
    for name in pids:
        mine = [r for r in rows if r["process"] == name]
        if len(mine) >= 2:
            first = next((r for r in mine if float(r["t_s"]) >= 60.0), mine[0])
            growth = float(mine[-1]["rss_mb"]) / float(first["rss_mb"]) - 1.0
            cpu_ms = float(mine[-1]["cpu_s"]) / max(int(mine[-1]["published"]), 1) * 1000.0
            print(
                f"{name:14s} RSS {float(first['rss_mb']):6.1f} MB at {float(first['t_s']):4.0f} s"
                f" → {float(mine[-1]['rss_mb']):6.1f} MB at {float(mine[-1]['t_s']):4.0f} s "
                f"({growth:+.1%}), CPU {cpu_ms:.2f} ms/frame"
            )
    shown = ", ".join(f"{t:.1f} s" for t in stop_events_s) or "none"
    print(f"stops during ID driving: {len(stop_events_s)} ({shown})")
    print(
        f"per-sample CSV: {out_dir / 'soak.csv'}"
        + (f", plot: {out_dir / 'soak.png'}" if plotted else "")
    )
    return 0
