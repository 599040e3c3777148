"""`vae-ood-monitor demo`: the shipped demo bag through the real graph, over DDS, in separate processes.

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
from dataclasses import dataclass, field
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Bool, Float32

from vae_ood_monitor.bags import DEFAULT_CAMERA_TOPIC
from vae_ood_monitor.ground_truth import read_ground_truth
from vae_ood_monitor.images import stamp_to_ns
from vae_ood_monitor.nodes.common import CAMERA_QOS, LATCHED_QOS, RELIABLE_QOS
from vae_ood_monitor.offline import share_dir

ESTOP_TOPIC = "/duckiebot/wheels_driver_node/emergency_stop"
NODES = {
    "bvae_detector": "vae_ood_monitor.nodes.detector:main_bvae",
    "flow_detector": "vae_ood_monitor.nodes.detector:main_flow",
    "safety_stop": "vae_ood_monitor.nodes.safety_stop:main",
    "bag_player": "vae_ood_monitor.nodes.bag_player:main",
}


def demo_bag() -> Path:
    return share_dir() / "demo" / "demo_fog_onset"


@dataclass
class Recording:
    start: float = field(default_factory=time.monotonic)
    frames: dict[int, float] = field(default_factory=dict)  # header stamp → arrival
    scores: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {"bvae": [], "flow": []})
    decisions: dict[str, list[tuple[float, bool]]] = field(default_factory=lambda: {"bvae": [], "flow": []})
    estop: list[tuple[float, bool]] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)

    def now(self) -> float:
        return time.monotonic() - self.start


class Recorder(Node):
    def __init__(self, recording: Recording) -> None:
        super().__init__(f"demo_recorder_{os.getpid()}")
        r = recording
        self.create_subscription(CompressedImage, DEFAULT_CAMERA_TOPIC, lambda m: r.frames.setdefault(stamp_to_ns(m.header.stamp), r.now()), CAMERA_QOS)
        for name in ("bvae", "flow"):
            self.create_subscription(Float32, f"/ood_monitor/{name}/score", lambda m, n=name: r.scores[n].append((r.now(), m.data)), RELIABLE_QOS)
            self.create_subscription(Bool, f"/ood_monitor/{name}/ood", lambda m, n=name: r.decisions[n].append((r.now(), m.data)), RELIABLE_QOS)
        self.create_subscription(Bool, ESTOP_TOPIC, lambda m: r.estop.append((r.now(), m.data)), LATCHED_QOS)
        self.create_subscription(DiagnosticArray, "/diagnostics", lambda m: r.ready.update(s.name for s in m.status), RELIABLE_QOS)


def _start(name: str, params: dict[str, object], log_dir: Path) -> subprocess.Popen:
    module, function = NODES[name].split(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}(sys.argv))"
    args = ["--ros-args", *[a for k, v in params.items() for a in ("-p", f"{k}:={v}")]]
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=(log_dir / f"{name}.log").open("w"), stderr=subprocess.STDOUT)


def _last(series: list[tuple[float, object]], before: float) -> object:
    value = None
    for t, v in series:
        if t > before:
            break
        value = v
    return value


def run_demo(bag: Path, out_dir: Path, rate: float = 1.0) -> int:
    truth = read_ground_truth(bag)
    if truth is None:
        print(f"demo: {bag} carries no ground truth", file=sys.stderr)
        return 1
    onset_label = next((label for label in truth if label.ood), None)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    recording = Recording()
    rclpy.init()
    recorder = Recorder(recording)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(recorder)
    threading.Thread(target=executor.spin, daemon=True).start()
    processes = {name: _start(name, {}, out_dir) for name in ("bvae_detector", "flow_detector", "safety_stop")}
    print(f"demo: bag {bag}; node logs in {out_dir}/")
    try:
        deadline = time.monotonic() + 60
        wanted = {"ood_monitor/bvae_detector", "ood_monitor/flow_detector", "ood_monitor/safety_stop"}
        while not wanted <= recording.ready:
            dead = [n for n, p in processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                print(f"demo: {', '.join(dead) or 'nodes'} did not come up; see {out_dir}/*.log", file=sys.stderr)
                return 1
            time.sleep(0.1)
        recording.start = time.monotonic()
        player = _start("bag_player", {"bag": bag, "rate": rate, "wait_for_subscribers": 4}, out_dir)
        processes["bag_player"] = player
        print(f"{'t [s]':>6} {'bvae score':>11} {'flow score':>11} {'bvae':>5} {'flow':>5} {'STOP':>5}")
        shown = 0.0
        while player.poll() is None:
            time.sleep(0.05)
            if recording.now() >= shown + 0.5:
                shown += 0.5
                b, f = _last(recording.scores["bvae"], shown), _last(recording.scores["flow"], shown)
                print(f"{shown:6.1f} {b if b is not None else float('nan'):11.2f} {f if f is not None else float('nan'):11.2f} "
                      f"{str(_last(recording.decisions['bvae'], shown) or False):>5} {str(_last(recording.decisions['flow'], shown) or False):>5} "
                      f"{str(_last(recording.estop, shown) or False):>5}")
        time.sleep(1.0)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        executor.shutdown()
        recorder.destroy_node()
        rclpy.shutdown()
    return _summarise(recording, onset_label.stamp_ns if onset_label else None, out_dir)


def _summarise(recording: Recording, onset_stamp: int | None, out_dir: Path) -> int:
    onset_time = recording.frames.get(onset_stamp) if onset_stamp is not None else None
    released = next((t for t, v in recording.estop if not v), None)  # the robot started driving
    stops = [t for (t, v), (_, before) in zip(recording.estop[1:], recording.estop) if v and not before and released is not None and t > released]
    print(f"\nframes received by the recorder: {len(recording.frames)}")
    if released is None:
        print("the safety stop never released the robot (inputs never all live and in distribution)")
    if onset_time is None:
        print("onset frame was not received; no latency")
    else:
        print(f"onset (first OOD frame arrived): t = {onset_time:.2f} s")
        early = [t for t in stops if t < onset_time]
        if early:
            print(f"FALSE STOP before the onset at t = {early[0]:.2f} s (the stop was latched at the onset)")
        after = [t for t in stops if t >= onset_time]
        if after and not early:
            print(f"emergency stop received: t = {after[0]:.2f} s → onset-to-stop latency {after[0] - onset_time:.3f} s")
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
    _plot(recording, onset_time, stops, out_dir / "demo.png")
    return 0


def _plot(recording: Recording, onset_time: float | None, stops: list[float], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    for ax, name, label in zip(axes, ("bvae", "flow"), ("β-VAE KL score", "optical-flow KL score")):
        series = recording.scores[name]
        ax.plot([t for t, _ in series], [v for _, v in series], lw=1.2)
        ax.set_ylabel(label)
        if onset_time is not None:
            ax.axvline(onset_time, color="red", ls="--", label="onset (first OOD frame)")
        if stops:
            ax.axvline(stops[0], color="black", lw=2, label="emergency stop")
    axes[0].legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("time since replay start [s]")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")
