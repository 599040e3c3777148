"""`ood_detectors`: both detector nodes in one process, one camera subscription, one decode.

Real node processes over DDS: the combined process and the two separate detector nodes (decode
"shared") listen to the same camera at once, each graph under its own namespace; the test plays
the camera and compares what both graphs publish with the detectors scored here, offline.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Bool, Float32
from support import spinning, synthetic_frames, tiny_bundle
from test_ros_graph import wait_for

from vae_ood_monitor import demo
from vae_ood_monitor.decision import DecisionParams
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.graph import stop_processes
from vae_ood_monitor.nodes.common import RELIABLE_QOS

REPO = Path(__file__).resolve().parents[2]
CAMERA = "/ood_detectors_test/camera"
GRAPHS = ("/combined", "/separate")
INTERVAL_NS = 33_333_333  # header stamps of a 30 Hz camera, whatever the publishing pace
# A threshold decision of the tiny bundles: the decisions compared come from the decider.
THRESHOLD = DecisionParams(mode="threshold", threshold=0.0)


@pytest.fixture(scope="module", autouse=True)
def ros_domain():
    os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 90 + 10))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    rclpy.init()
    yield
    rclpy.shutdown()


class Camera(Node):
    """Plays the camera; records each graph's scores, decisions and detector statuses."""

    def __init__(self) -> None:
        super().__init__(f"camera_{os.getpid()}_{time.monotonic_ns()}")
        self.publisher = self.create_publisher(CompressedImage, CAMERA, RELIABLE_QOS)
        self.scores: dict[tuple[str, str], list[float]] = {}
        self.decisions: dict[tuple[str, str], list[bool]] = {}
        self.status: dict[tuple[str, str], dict[str, str]] = {}
        for graph in GRAPHS:
            for kind in ("bvae", "flow"):
                key = (graph, kind)
                self.scores[key], self.decisions[key] = [], []
                self.create_subscription(
                    Float32,
                    f"{graph}/{kind}/score",
                    lambda m, k=key: self.scores[k].append(m.data),
                    RELIABLE_QOS,
                )
                self.create_subscription(
                    Bool,
                    f"{graph}/{kind}/ood",
                    lambda m, k=key: self.decisions[k].append(m.data),
                    RELIABLE_QOS,
                )
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            kind = status.name.rsplit("/", 1)[-1].split("_")[0]
            self.status[(status.hardware_id, kind)] = {kv.key: kv.value for kv in status.values}

    def publish(self, data: bytes, stamp_ns: int) -> None:
        msg = CompressedImage(format="jpeg", data=data)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        self.publisher.publish(msg)


@pytest.fixture
def camera() -> Iterator[Camera]:
    with spinning(Camera(), SingleThreadedExecutor()) as node:
        yield node


def start(name: str, params_file: Path, namespace: str, log: Path) -> subprocess.Popen:
    rules = ["-r", f"__ns:={namespace}", "-r", f"camera/image/compressed:={CAMERA}"]
    return demo.start_node(
        name, {}, log, cwd=REPO, rules=[*rules, "--params-file", str(params_file)]
    )


def log_tails(logs: list[Path]) -> Callable[[], str]:
    return lambda: "\n".join(f"{log.name}: {log.read_text()[-2000:]}" for log in logs)


def test_one_process_publishes_what_the_two_detector_nodes_publish(camera, tmp_path):
    bundles = {
        "bvae": tiny_bundle("bvae_tiny", tmp_path, THRESHOLD),
        "flow": tiny_bundle("flow_tiny", tmp_path, THRESHOLD),
    }
    params = tmp_path / "params.yaml"
    params.write_text(
        "".join(
            f"/**/{kind}_detector:\n  ros__parameters:\n    bundle: {path}\n    decode: shared\n"
            for kind, path in bundles.items()
        )
    )
    logs = [tmp_path / f"{name}.log" for name in ("ood_detectors", "bvae", "flow")]
    processes = [
        start("ood_detectors", params, "/combined", logs[0]),
        start("bvae_detector", params, "/separate", logs[1]),
        start("flow_detector", params, "/separate", logs[2]),
    ]
    try:
        # One subscription for the combined process, one per separate node (after warm-up), and
        # every output matched before the first frame.
        wait_for(
            lambda: camera.publisher.get_subscription_count() == 3,
            25,
            "3 subscriptions",
            log_tails(logs),
        )
        topics = [f"{graph}/{kind}/{t}" for graph, kind in camera.scores for t in ("score", "ood")]
        wait_for(
            lambda: all(camera.count_publishers(t) == 1 for t in topics),
            10,
            "outputs",
            log_tails(logs),
        )
        time.sleep(0.5)
        frames = [
            cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
            for rgb in synthetic_frames(16)
        ]
        bad_at = 8
        stream = [(i, b"\xff\xd8 not a jpeg" if i == bad_at else f) for i, f in enumerate(frames)]
        for index, data in stream:
            camera.publish(data, 10**9 + index * INTERVAL_NS)
            time.sleep(0.15)  # every frame scored before the next: no frame dropped stale
        # What each detector alone gives these frames, the bad one skipped (offline, here)
        expected: dict[str, list[float]] = {}
        for kind, path in bundles.items():
            detector = OODDetector.from_path(str(path), decode="shared")
            scores = [
                detector.score_message(
                    SimpleNamespace(format="jpeg", data=data), 10**9 + i * INTERVAL_NS
                )
                for i, data in stream
                if i != bad_at
            ]
            expected[kind] = [s for s in scores if s is not None]
        for graph in GRAPHS:
            for kind, scores in expected.items():
                wait_for(
                    lambda k=(graph, kind), n=len(scores): (
                        len(camera.scores[k]) >= n
                        and camera.status.get(k, {}).get("bad_frames") == "1"
                        and camera.status[k]["processed"] == str(len(frames) - 1)
                    ),
                    10,
                    f"{graph} {kind}: {len(scores)} scores, the frames counted",
                    lambda: (
                        f"scores {[(k, len(v)) for k, v in camera.scores.items()]}, "
                        f"status {camera.status}\n{log_tails(logs)()}"
                    ),
                )
        for kind, scores in expected.items():
            assert len(scores) >= 8, "both detectors scored a stream"
            combined = camera.scores[("/combined", kind)]
            assert combined == camera.scores[("/separate", kind)], f"{kind}: as the separate node"
            assert np.allclose(combined, scores, rtol=1e-6), f"{kind}: as the offline detector"
            decisions = camera.decisions[("/combined", kind)]
            assert decisions == camera.decisions[("/separate", kind)]
            assert len(decisions) == len(scores)
            status = camera.status[("/combined", kind)]
            assert status["processed"] == str(len(frames) - 1) and status["dropped_stale"] == "0"
        assert all(p.poll() is None for p in processes), "every node survived the bad frame"
        assert "bad frame skipped" in logs[0].read_text()
    finally:
        stop_processes(dict(enumerate(processes)))


def test_one_subscription_needs_one_transport(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("/**/flow_detector:\n  ros__parameters:\n    image_transport: raw\n")
    log = tmp_path / "ood_detectors.log"
    process = start("ood_detectors", params, "/combined", log)
    try:
        assert process.wait(timeout=30) == 2
    finally:
        stop_processes({"ood_detectors": process})
    assert "flow_detector.image_transport 'raw' differs from bvae_detector's 'compressed'" in (
        log.read_text()
    )
