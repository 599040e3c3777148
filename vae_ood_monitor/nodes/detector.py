"""`bvae_detector` and `flow_detector`: camera frames in, OOD score and decision out.

The subscription callback only keeps the newest message; a worker thread scores it. A frame that
arrives while the worker is busy replaces the waiting one (counted as dropped stale), so the
detector always works on the newest frame and never builds a queue — except that when the newest
turns out bad, the frame it replaced is scored instead: messages often arrive in bursts, and a
stream with every other frame corrupt must not have all its good frames displaced (the detector
would fall silent and stop the robot over isolated bad frames). Bad frames (undecodable,
zero-size, wrong encoding, NaN model output) are logged, counted and skipped; after
`max_bad_frames` in a row the detector reports ERROR on /diagnostics, which stops the robot.
The detector runs a few blank frames through its models before it subscribes (warm-up), so the
slow first inferences of a fresh session do not stall its first real frames.

`ood_detectors` runs both detector nodes in one process, with their names, parameters, topics and
/diagnostics statuses, and one camera subscription (the β-VAE node's): its worker decodes each
frame once for both (`images.decode_once`: one decode where both `decode` parameters are "shared",
their default there, or both "full") and scores it with each detector in turn. A frame that
cannot be decoded is bad for both; the frame it displaced is scored instead when the newest was
bad for both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node
from std_msgs.msg import Bool, Float32

from vae_ood_monitor.backends import BACKENDS, BackendError
from vae_ood_monitor.bundle import BundleError, default_bundle
from vae_ood_monitor.detector import DEFAULT_DECODE, ModelOutputError, OODDetector
from vae_ood_monitor.images import DECODES, FrameError, decode_once, parse_serialized_image
from vae_ood_monitor.nodes.common import (
    RELIABLE_QOS,
    Diagnostics,
    ListenedPublisher,
    RateMeter,
    StartupError,
    camera_topic,
    declare,
    declare_veh,
    robot_topic,
    run_node,
    run_nodes,
    subscribe_camera,
)


def diagnostic_name(kind: str) -> str:
    """Status name the safety stop watches for this detector's errors."""
    return f"ood_monitor/{kind}_detector"


class FrameIntake:
    """The newest-frame hand-over (module docstring) from a camera callback to one worker thread,
    which calls `process(serialized, received)`: False for a bad frame."""

    def __init__(
        self, name: str, process: Callable[[bytes, float], bool], alive: Callable[[], bool]
    ) -> None:
        self._process = process
        self._alive = alive  # False once Ctrl-C has shut the context down
        self._lock = threading.Lock()
        self._newest: tuple[bytes, float] | None = None
        self._displaced: tuple[bytes, float] | None = None  # scored if _newest is bad
        self._wake = threading.Event()
        self._running = True
        self.counts = {"received": 0, "dropped_stale": 0}
        self.rate = RateMeter()
        self._worker = threading.Thread(target=self._work, name=f"{name}-worker", daemon=True)

    def start(self) -> None:
        self._worker.start()

    def on_frame(self, serialized: bytes) -> None:
        with self._lock:
            if self._newest is not None:
                self.counts["dropped_stale"] += 1
                self._displaced = self._newest
            self._newest = (serialized, time.monotonic())
            self.counts["received"] += 1
        self.rate.tick()
        self._wake.set()

    def _work(self) -> None:
        while self._running:
            if not self._wake.wait(timeout=0.2):
                continue
            with self._lock:
                item, displaced, self._newest, self._displaced = (
                    self._newest,
                    self._displaced,
                    None,
                    None,
                )
                self._wake.clear()
            if item is not None:
                try:
                    if not self._process(*item) and displaced is not None:
                        with self._lock:
                            self.counts["dropped_stale"] -= 1  # scored after all
                        self._process(*displaced)
                except Exception:
                    # Ctrl-C shuts the context down before destroy_node stops this thread; a
                    # publish in between fails, and that is the end of the stream, not an error.
                    if self._alive():
                        raise
                    return

    def close(self) -> None:
        self._running = False
        self._wake.set()
        if self._worker.is_alive():
            self._worker.join(timeout=2.0)


class DetectorNode(Node):
    """One detector: its model, score and decision topics, /diagnostics status. It subscribes to
    the camera and scores each frame, for itself and for the detector nodes of `partners` (kinds)
    it builds in this process, from one decode (`ood_detectors`)."""

    def __init__(
        self,
        kind: str,
        partners: Sequence[str] = (),
        intake: FrameIntake | None = None,
        **node_options: Any,
    ) -> None:
        """`intake`: a partner's — frames handed over by the node that subscribes."""
        super().__init__(f"{kind}_detector", **node_options)
        self.kind = kind
        veh = declare_veh(self)
        bundle = declare(
            self, "bundle", "", "bundle folder or shipped name (empty: models/defaults.json)"
        )
        backend = declare(
            self, "backend", "onnxruntime", f"inference backend: {', '.join(BACKENDS)}"
        )
        threads = declare(self, "threads", 1, "inference threads")
        # In one process with another detector "shared": one decode for both.
        decode = declare(
            self,
            "decode",
            "shared" if partners or intake else DEFAULT_DECODE,
            f"JPEG decoding: {' or '.join(DECODES)} (the smallest scale covering the model "
            "input; shared: grey from the colour decode, one decode for detectors in one process)",
        )
        self.transport = declare(
            self, "image_transport", "compressed", "camera message type: compressed or raw"
        )
        self._max_bad = declare(
            self, "max_bad_frames", 15, "bad frames in a row before the detector reports an error"
        )
        # OpenCV's thread pool splits the flow and resize of a 160x120 frame across threads and
        # spins while it waits: more CPU per frame than one thread doing it (same pixels: the
        # split is by rows). ONNX Runtime has its own `threads`.
        cv2.setNumThreads(1)
        try:
            self.detector = OODDetector.from_path(
                bundle or str(default_bundle(kind)), backend=backend, threads=threads, decode=decode
            )
        except (BundleError, BackendError, ValueError) as err:
            raise StartupError(str(err)) from None
        if self.detector.kind != kind:
            raise StartupError(
                f"{self.detector.bundle.path} is a '{self.detector.kind}' bundle, "
                f"this node needs '{kind}'"
            )
        warm_up_started = time.monotonic()
        try:
            self.detector.warm_up()
        except ModelOutputError as err:
            raise StartupError(f"warm-up failed: {err}") from None
        self._warm_up_ms = (time.monotonic() - warm_up_started) * 1000.0
        self._score_pub = ListenedPublisher(self, Float32, f"{kind}/score", RELIABLE_QOS)
        self._ood_pub = self.create_publisher(Bool, f"{kind}/ood", RELIABLE_QOS)
        # One message of each, refilled per frame: building an rclpy message costs more than
        # setting its field.
        self._score_msg, self._ood_msg = Float32(), Bool()
        self.counts = {"processed": 0, "bad_frames": 0, "model_errors": 0}
        self._bad_in_a_row = 0
        self._last_problem = ""
        self._latency = RateMeter()  # frame received → decision published
        self._processing = RateMeter()  # decode + preprocess + inference + score
        self._topic = ""  # the camera topic, once subscribed (a partner's: its owner's)
        self._owns_intake = intake is None
        self.intake = intake or FrameIntake(kind, self._process, self.context.ok)
        self._nodes: list[DetectorNode] = [self]
        if self._owns_intake:
            self._nodes += [DetectorNode(k, intake=self.intake, **node_options) for k in partners]
            self._subscribe(veh)

    def _subscribe(self, veh: str) -> None:
        """The camera subscription for this node and its partners; their diagnostics."""
        for node in self._nodes[1:]:
            if node.transport != self.transport:
                raise StartupError(
                    f"{node.get_name()}.image_transport '{node.transport}' differs from "
                    f"{self.get_name()}'s '{self.transport}': one subscription serves both"
                )
        camera = subscribe_camera(
            self,
            self.transport,
            robot_topic(self, camera_topic(self.transport), veh),
            self.intake.on_frame,
            raw=True,  # serialized bytes, parsed in the worker: no rclpy message per frame
        )
        self._raw_image = self.transport == "raw"
        for node in self._nodes:
            node._topic = camera.topic_name
            Diagnostics(node, diagnostic_name(node.kind), node.get_namespace(), node._report)
            node.get_logger().info(
                f"{node.kind} detector on {node._topic} with {node.detector.bundle.path.name} "
                f"({node.detector.backend_name}, sha256 {node.detector.bundle.sha256[:12]}, "
                f"warm-up {node._warm_up_ms:.0f} ms)"
            )
        self.intake.start()

    @property
    def nodes(self) -> list[DetectorNode]:
        """This node and the partners it scores frames for."""
        return self._nodes

    def _process(self, serialized: bytes, received: float) -> bool:
        """Decode one frame (its serialized message) once, score and publish it for every node;
        False when it was bad for all of them (skipped)."""
        started = time.monotonic()
        try:
            msg = parse_serialized_image(serialized, self._raw_image)
            images = decode_once([node.detector.decode for node in self._nodes], msg)
        except FrameError as err:
            for node in self._nodes:
                node._bad_frame("bad_frames", f"bad frame skipped: {err}")
            return False
        decoding_ms = (time.monotonic() - started) * 1000.0
        # Motion is measured per second by the frames' header stamps; a camera that leaves them
        # zero is timed by arrival instead.
        stamp_ns = msg.stamp_ns or int(received * 1e9)
        scored = [
            node._score(image, stamp_ns, received, decoding_ms)
            for node, image in zip(self._nodes, images)
        ]
        return any(scored)

    def _score(self, image: np.ndarray, stamp_ns: int, received: float, decoding_ms: float) -> bool:
        """Score this detector's image of a frame and publish; False for a bad frame."""
        started = time.monotonic()
        try:
            score = self.detector.score_frame(image, stamp_ns)
        except FrameError as err:
            self._bad_frame("bad_frames", f"bad frame skipped: {err}")
            return False
        except ModelOutputError as err:
            self._bad_frame("model_errors", str(err))
            return False
        self._bad_in_a_row = 0
        self.counts["processed"] += 1
        self._processing.tick(decoding_ms + (time.monotonic() - started) * 1000.0)
        if score is None:  # the flow detector is still filling its stack
            return True
        decision = self.detector.decide(score)
        self._score_msg.data = score
        self._ood_msg.data = decision.ood
        self._score_pub.publish(self._score_msg)
        self._ood_pub.publish(self._ood_msg)
        self._latency.tick((time.monotonic() - received) * 1000.0)
        return True

    def _bad_frame(self, counter: str, problem: str) -> None:
        self.counts[counter] += 1
        self._bad_in_a_row += 1
        self._last_problem = problem
        self.get_logger().warning(problem, throttle_duration_sec=1.0)
        if self._bad_in_a_row == self._max_bad:
            self.get_logger().error(f"{self._bad_in_a_row} bad frames in a row: reporting an error")

    def _report(self) -> tuple[bytes, str, dict[str, Any]]:
        if self._bad_in_a_row >= self._max_bad:
            level, message = (
                DiagnosticStatus.ERROR,
                f"{self._bad_in_a_row} bad frames in a row: {self._last_problem}",
            )
        elif self.intake.rate.rate() == 0.0:
            level, message = DiagnosticStatus.WARN, f"no frames on {self._topic}"
        else:
            level, message = DiagnosticStatus.OK, "scoring"
        values = {
            **self.intake.counts,
            **self.counts,
            "input_rate_hz": f"{self.intake.rate.rate():.1f}",
            "latency_ms_p50": f"{self._latency.median():.1f}",
            "processing_ms_p50": f"{self._processing.median():.1f}",
            "warm_up_ms": f"{self._warm_up_ms:.0f}",
            "backend": self.detector.backend_name,
            "bundle": str(self.detector.bundle.path),
            "bundle_sha256": self.detector.bundle.sha256,
            "cusum": f"{self.detector.decider.cusum:.2f}",
        }
        return level, message, values

    def destroy_node(self) -> None:
        if self._owns_intake:
            self.intake.close()
        super().destroy_node()


def main_bvae(args: list[str] | None = None) -> int:
    return run_node(lambda: DetectorNode("bvae"), args)


def main_flow(args: list[str] | None = None) -> int:
    return run_node(lambda: DetectorNode("flow"), args)


def main_detectors(args: list[str] | None = None) -> int:
    """`ood_detectors`: both detector nodes in one process, one subscription, one decode."""
    return run_nodes(lambda: DetectorNode("bvae", partners=("flow",)).nodes, args)
