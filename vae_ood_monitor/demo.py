"""`vae-ood-monitor demo`: the shipped demo bag through the real graph, over DDS, one process
a node.

bvae_detector, flow_detector, safety_stop and bag_player each run as their own process; this
process is a peer node that records camera arrivals, scores, decisions and the emergency stop,
prints a timeline, measures onset-to-stop latency (arrival of the first OOD frame → emergency_stop
true received) and draws both scores against time with onset and stop marked.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Bool, Float32

from vae_ood_monitor.bags import DEFAULT_CAMERA_TOPIC
from vae_ood_monitor.bundle import default_bundle, load_bundle, share_dir
from vae_ood_monitor.decision import cusum_trace
from vae_ood_monitor.ground_truth import read_ground_truth
from vae_ood_monitor.images import stamp_to_ns
from vae_ood_monitor.nodes.common import LATCHED_QOS, RELIABLE_QOS, REPLAY_QOS, ros_arguments

ESTOP_TOPIC = "/duckiebot/wheels_driver_node/emergency_stop"
NODES = {
    "bvae_detector": "vae_ood_monitor.nodes.detector:main_bvae",
    "flow_detector": "vae_ood_monitor.nodes.detector:main_flow",
    "ood_detectors": "vae_ood_monitor.nodes.detector:main_detectors",
    "safety_stop": "vae_ood_monitor.nodes.safety_stop:main",
    "bag_player": "vae_ood_monitor.nodes.bag_player:main",
    "live_view": "vae_ood_monitor.nodes.live_view:main",
}


def demo_bag() -> Path:
    return share_dir() / "demo" / "demo_fog_onset"


@dataclass
class Recording:
    start: float = field(default_factory=time.monotonic)
    frames: dict[int, float] = field(default_factory=dict)  # header stamp → arrival
    images: dict[int, bytes] = field(default_factory=dict)  # header stamp → JPEG, for the figure
    scores: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: {"bvae": [], "flow": []}
    )
    decisions: dict[str, list[tuple[float, bool]]] = field(
        default_factory=lambda: {"bvae": [], "flow": []}
    )
    estop: list[tuple[float, bool]] = field(default_factory=list)
    diagnostics: dict[str, dict[str, str]] = field(
        default_factory=dict
    )  # status name → latest values
    peak_rss_mb: dict[str, float] = field(
        default_factory=dict
    )  # node process → peak resident memory

    def now(self) -> float:
        return time.monotonic() - self.start


class Recorder(Node):
    def __init__(self, recording: Recording, context: Context) -> None:
        super().__init__(f"demo_recorder_{os.getpid()}", context=context)
        r = recording
        # Reliable and deep, unlike a detector: the recorder must see every frame to time the onset.
        # Times are the middleware's reception times, not the callback's, so a recorder that falls
        # behind under load neither loses the onset nor dates it late.
        self.create_subscription(CompressedImage, DEFAULT_CAMERA_TOPIC, self._on_frame, REPLAY_QOS)
        for name in ("bvae", "flow"):
            self.create_subscription(
                Float32,
                f"/ood_monitor/{name}/score",
                lambda m, i, n=name: r.scores[n].append((self._arrival(i), m.data)),
                RELIABLE_QOS,
            )
            self.create_subscription(
                Bool,
                f"/ood_monitor/{name}/ood",
                lambda m, i, n=name: r.decisions[n].append((self._arrival(i), m.data)),
                RELIABLE_QOS,
            )
        self.create_subscription(
            Bool, ESTOP_TOPIC, lambda m, i: r.estop.append((self._arrival(i), m.data)), LATCHED_QOS
        )
        self.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics, RELIABLE_QOS
        )
        self._recording = recording

    def _on_frame(self, msg: CompressedImage, info: MessageInfo) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        self._recording.frames.setdefault(stamp, self._arrival(info))
        self._recording.images.setdefault(stamp, bytes(msg.data))

    def _arrival(self, info: MessageInfo) -> float:
        """Recording time at which the middleware received the message."""
        now = self._recording.now()
        received_ns = info.get("received_timestamp") or 0
        if not received_ns:  # an rmw that does not report it: the callback's time
            return now
        return now - max(0.0, time.time() - received_ns / 1e9)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            self._recording.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}


def start_node(
    name: str,
    params: dict[str, object],
    log: Path | None = None,
    cwd: Path | None = None,
    rules: list[str] | None = None,
) -> subprocess.Popen:
    """Node `name` in its own process with this interpreter (from `cwd`'s code when given);
    output to `log` or discarded. `rules`: remapping arguments that win over the defaults."""
    module, function = NODES[name].split(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}(sys.argv))"
    params_args = [a for k, v in params.items() for a in ("-p", f"{k}:={v}")]
    args = ["--ros-args", *(rules or []), *ros_arguments(), *params_args]
    output = log.open("w") if log is not None else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=cwd, stdout=output, stderr=subprocess.STDOUT
    )


def _last(series: list[tuple[float, object]], before: float) -> object:
    value = None
    for t, v in series:
        if t > before:
            break
        value = v
    return value


def resident_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MB; NaN where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class GraphRun:
    """The three graph nodes as processes plus a recording peer; `replay` a bag through them."""

    READY = frozenset(
        {"ood_monitor/bvae_detector", "ood_monitor/flow_detector", "ood_monitor/safety_stop"}
    )

    def __init__(
        self,
        log_dir: Path,
        bundles: dict[str, Path | None] | None = None,
        safety_params: dict[str, object] | None = None,
    ) -> None:
        """`bundles`: detector ("bvae", "flow") → bundle folder; missing or None = the default
        bundle. `safety_params`: ROS parameters of the safety stop (e.g. a longer `timeout_s`),
        else its defaults."""
        log_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        self.log_dir = log_dir
        self.recording = Recording()
        self._context = Context()  # its own, so it works beside any other rclpy use in the process
        rclpy.init(context=self._context)
        self._recorder = Recorder(self.recording, self._context)
        self._executor = MultiThreadedExecutor(num_threads=2, context=self._context)
        self._executor.add_node(self._recorder)
        threading.Thread(target=self._executor.spin, daemon=True).start()
        params = {
            f"{kind}_detector": {"bundle": str(path)}
            for kind, path in (bundles or {}).items()
            if path is not None
        }
        params["safety_stop"] = dict(safety_params or {})
        self.processes = {
            name: start_node(name, params.get(name, {}), log_dir / f"{name}.log")
            for name in ("bvae_detector", "flow_detector", "safety_stop")
        }

    def wait_ready(self, timeout: float = 60.0) -> str | None:
        """None once every node reports on /diagnostics, else what went wrong."""
        deadline = time.monotonic() + timeout
        while not self.READY <= set(self.recording.diagnostics):
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                return f"{', '.join(dead) or 'nodes'} did not come up; see {self.log_dir}/*.log"
            time.sleep(0.1)
        return None

    def replay(
        self, bag: Path, rate: float, on_tick: Callable[[float], None] | None = None
    ) -> None:
        """Replay `bag` (clock restarts at its first frame) and wait one second past its end."""
        self.recording.start = time.monotonic()
        player = start_node(
            "bag_player",
            {"bag": bag, "rate": rate, "wait_for_subscribers": 4},
            self.log_dir / "bag_player.log",
        )
        self.processes["bag_player"] = player
        while player.poll() is None:
            time.sleep(0.05)
            for name, process in self.processes.items():
                self.recording.peak_rss_mb[name] = max(
                    self.recording.peak_rss_mb.get(name, 0.0), resident_mb(process.pid)
                )
            if on_tick is not None:
                on_tick(self.recording.now())
        time.sleep(1.5)  # one more 1 Hz diagnostics round after the last frame

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        self._executor.shutdown()
        self._recorder.destroy_node()
        rclpy.shutdown(context=self._context)


def onset_stamp(bag: Path) -> int | None:
    truth = read_ground_truth(bag)
    if truth is None:
        raise ValueError(f"{bag} carries no ground truth")
    return next((label.stamp_ns for label in truth if label.ood), None)


def run_demo(
    bag: Path, out_dir: Path, rate: float = 1.0, bundles: dict[str, Path | None] | None = None
) -> int:
    try:
        onset = onset_stamp(bag)
    except ValueError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    run = GraphRun(out_dir, bundles)
    print(f"demo: bag {bag}; node logs in {out_dir}/")
    try:
        problem = run.wait_ready()
        if problem:
            print(f"demo: {problem}", file=sys.stderr)
            return 1
        recording = run.recording
        shown = [0.0]

        def tick(now: float) -> None:
            if now >= shown[0] + 0.5:
                shown[0] += 0.5
                t = shown[0]
                scores = [_last(recording.scores[n], t) for n in ("bvae", "flow")]
                flags = [_last(recording.decisions[n], t) or False for n in ("bvae", "flow")] + [
                    _last(recording.estop, t) or False
                ]
                print(
                    f"{t:6.1f} "
                    + " ".join(f"{v if v is not None else float('nan'):11.2f}" for v in scores)
                    + " "
                    + " ".join(f"{f!s:>5}" for f in flags)
                )

        print(
            f"{'t [s]':>6} {'bvae score':>11} {'flow score':>11} "
            f"{'bvae':>5} {'flow':>5} {'STOP':>5}"
        )
        run.replay(bag, rate, tick)
    finally:
        run.close()
    return _summarise(run.recording, onset, out_dir, bundles or {})


def stop_events(recording: Recording) -> tuple[float | None, list[float]]:
    """When the robot was first released to drive, and every later switch of the stop to true."""
    released = next((t for t, v in recording.estop if not v), None)
    stops = [
        t
        for (t, v), (_, before) in zip(recording.estop[1:], recording.estop)
        if v and not before and released is not None and t > released
    ]
    return released, stops


def _summarise(
    recording: Recording, onset_ns: int | None, out_dir: Path, bundles: dict[str, Path | None]
) -> int:
    onset_time = recording.frames.get(onset_ns) if onset_ns is not None else None
    released, stops = stop_events(recording)
    print(f"\nframes received by the recorder: {len(recording.frames)}")
    if released is None:
        print(
            "the safety stop never released the robot (inputs never all live and in distribution)"
        )
    if onset_time is None:
        print("onset frame was not received; no latency")
    else:
        print(f"onset (first OOD frame arrived): t = {onset_time:.2f} s")
        early = [t for t in stops if t < onset_time]
        if early:
            print(
                f"FALSE STOP before the onset at t = {early[0]:.2f} s "
                "(the stop was latched at the onset)"
            )
        after = [t for t in stops if t >= onset_time]
        if after and not early:
            print(
                f"emergency stop received: t = {after[0]:.2f} s → "
                f"onset-to-stop latency {after[0] - onset_time:.3f} s"
            )
        elif not early:
            print("no emergency stop after the onset: MISSED")
    with (out_dir / "timeline.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t", "topic", "value"])
        for name, series in recording.scores.items():
            writer.writerows((f"{t:.3f}", f"{name}/score", f"{v:.4f}") for t, v in series)
        for name, series in recording.decisions.items():
            writer.writerows((f"{t:.3f}", f"{name}/ood", int(v)) for t, v in series)
        writer.writerows((f"{t:.3f}", "emergency_stop", int(v)) for t, v in recording.estop)
    _plot(recording, onset_time, stops, out_dir / "demo.png", bundles)
    return 0


def decision_trace(
    series: list[tuple[float, float]], bundle: Path | None, kind: str
) -> tuple[np.ndarray, float, str]:
    """The decision statistic over the published scores, replayed with the bundle's own decider
    (the node's code and parameters), its alarm level and what it is called."""
    loaded = load_bundle(bundle or default_bundle(kind))
    scores = np.array([v for _, v in series])
    if loaded.decision.mode == "threshold":
        return scores, loaded.decision.threshold, "score"
    trace = cusum_trace(scores, loaded.calibration_scores, loaded.decision)
    return trace, loaded.decision.threshold, "CUSUM"


def camera_moments(
    recording: Recording, onset_time: float | None, stop_time: float | None
) -> list[tuple[str, bytes]]:
    """The camera at three moments: in distribution (1 s before the onset, else the middle of the
    drive), the first OOD frame, and the last frame before the stop."""
    arrivals = sorted((t, stamp) for stamp, t in recording.frames.items())
    if not arrivals:
        return []

    def last_before(time_s: float) -> int:
        return max((a for a in arrivals if a[0] <= time_s), default=arrivals[0])[1]

    id_time = onset_time - 1.0 if onset_time is not None else arrivals[len(arrivals) // 2][0]
    moments = [("in distribution", last_before(id_time))]
    if onset_time is not None:
        moments.append(("first OOD frame", last_before(onset_time)))
    if stop_time is not None:
        moments.append(
            (f"at the stop (+{stop_time - (onset_time or 0):.2f} s)", last_before(stop_time))
        )
    return [
        (title, recording.images[stamp]) for title, stamp in moments if stamp in recording.images
    ]


def _plot(
    recording: Recording,
    onset_time: float | None,
    stops: list[float],
    path: Path,
    bundles: dict[str, Path | None],
) -> None:
    """The camera at three moments above each detector's decision statistic and alarm level."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    moments = camera_moments(recording, onset_time, stops[0] if stops else None)
    fig = plt.figure(figsize=(9, 7.5))
    grid = fig.add_gridspec(3, max(len(moments), 1), height_ratios=(1.3, 1, 1))
    for column, (title, jpeg) in enumerate(moments):
        ax = fig.add_subplot(grid[0, column])
        bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if bgr is not None:
            ax.imshow(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    first = None
    for row, (name, label) in enumerate((("bvae", "β-VAE"), ("flow", "optical flow")), start=1):
        ax = fig.add_subplot(grid[row, :], sharex=first)
        first = first or ax
        series = recording.scores[name]
        if series:
            times = [t for t, _ in series]
            trace, level, what = decision_trace(series, bundles.get(name), name)
            ax.plot(times, trace, lw=1.2, label=f"{label} {what}")
            ax.axhline(level, color="tab:orange", ls=":", label=f"alarm level {level:.3g}")
            ax.set_ylabel(f"{label} {what}")
            # Linear up to the level, logarithmic above: both the crossing and the peak show.
            ax.set_yscale("symlog", linthresh=max(level, 1e-6))
            ax.set_ylim(bottom=0)
        if onset_time is not None:
            ax.axvline(onset_time, color="red", ls="--", label="onset (first OOD frame)")
        if stops:
            ax.axvline(stops[0], color="black", lw=2, label="emergency stop")
        ax.legend(loc="upper left", fontsize=7)
    if first is not None:
        fig.axes[-1].set_xlabel("time since replay start [s]")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")
