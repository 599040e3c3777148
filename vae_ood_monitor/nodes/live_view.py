"""`live_view`: an annotated picture of what the monitor sees and decides, for rqt_image_view or
Foxglove. Optional: the launch files start it with `live_view:=true`; nothing in the default graph
runs it.

Publishes sensor_msgs/CompressedImage (JPEG) on `~/image/compressed`
[/ood_monitor/live_view/image/compressed] at `rate_hz`, and only while someone subscribes: the
camera frame downscaled to `width`, the state and stop reason (`emergency_stop`, `stop_reason`),
and per detector its score (`<name>/score`), decision (`<name>/ood`) and decision statistic against
its alarm level. The level comes from the bundle each detector reports on /diagnostics.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import cv2
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Float32, String

from vae_ood_monitor.bundle import BundleError, load_bundle
from vae_ood_monitor.images import FrameDecoder, FrameError
from vae_ood_monitor.live_view import DetectorTrace, render
from vae_ood_monitor.nodes.common import (
    LATCHED_QOS,
    RELIABLE_QOS,
    StartupError,
    camera_topic,
    declare,
    run_node,
    subscribe_camera,
)
from vae_ood_monitor.nodes.detector import diagnostic_name

# Reliable, newest picture only: matches reliable and best-effort viewers alike.
VIEW_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


class LiveViewNode(Node):
    def __init__(self, **node_options: Any) -> None:
        super().__init__("live_view", **node_options)
        detectors = declare(self, "detectors", ["bvae", "flow"], "detectors to show")
        transport = declare(
            self, "image_transport", "compressed", "camera message type: compressed or raw"
        )
        rate = declare(self, "rate_hz", 5.0, "pictures per second (while someone subscribes)")
        self._width = declare(self, "width", 320, "picture width [px]; the frame is downscaled")
        self._quality = declare(self, "jpeg_quality", 80, "JPEG quality of the picture (1-100)")
        history = declare(self, "history_s", 10.0, "seconds of decision statistic drawn")
        if rate <= 0 or self._width < 64 or not 1 <= self._quality <= 100 or history <= 0:
            raise StartupError(
                "live_view needs rate_hz > 0, width >= 64, 1 <= jpeg_quality <= 100, "
                f"history_s > 0 (got {rate}, {self._width}, {self._quality}, {history})"
            )
        self._message_type = CompressedImage if transport == "compressed" else Image
        self._decode = FrameDecoder("reduced", (self._width, self._width * 3 // 4))
        self._traces = {name: DetectorTrace(name, history) for name in detectors}
        self._watched = {diagnostic_name(name): name for name in detectors}
        self._bundles: dict[str, str] = {}  # detector → bundle path its level was loaded from
        self._lock = threading.Lock()
        self._camera: bytes | None = None
        self._frame = None
        self._stopped: bool | None = None
        self._reason = ""
        subscribe_camera(self, transport, camera_topic(transport), self._on_camera, raw=True)
        for name in detectors:
            self.create_subscription(
                Float32, f"{name}/score", lambda m, n=name: self._on_score(n, m), RELIABLE_QOS
            )
            self.create_subscription(
                Bool, f"{name}/ood", lambda m, n=name: self._on_decision(n, m), RELIABLE_QOS
            )
        self.create_subscription(Bool, "emergency_stop", self._on_stop, LATCHED_QOS)
        self.create_subscription(String, "stop_reason", self._on_reason, LATCHED_QOS)
        self.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics, RELIABLE_QOS
        )
        self._publisher = self.create_publisher(CompressedImage, "~/image/compressed", VIEW_QOS)
        self.create_timer(1.0 / rate, self._publish)
        self.get_logger().info(f"live view on {self._publisher.topic_name} at {rate} Hz")

    def _on_camera(self, data: bytes) -> None:
        self._camera = data  # decoded only when a picture is drawn

    def _on_score(self, name: str, msg: Float32) -> None:
        with self._lock:
            self._traces[name].on_score(time.monotonic(), float(msg.data))

    def _on_decision(self, name: str, msg: Bool) -> None:
        self._traces[name].ood = bool(msg.data)

    def _on_stop(self, msg: Bool) -> None:
        self._stopped = bool(msg.data)

    def _on_reason(self, msg: String) -> None:
        self._reason = msg.data

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        """Load each detector's bundle (its decision) when it first reports it, or another."""
        for status in msg.status:
            name = self._watched.get(status.name)
            path = {kv.key: kv.value for kv in status.values}.get("bundle")
            if name is None or not path or self._bundles.get(name) == path:
                continue
            self._bundles[name] = path
            try:
                bundle = load_bundle(path)
            except BundleError as err:
                self.get_logger().warning(f"{name}: no alarm level to draw: {err}")
                continue
            with self._lock:
                self._traces[name].use_bundle(bundle.calibration_scores, bundle.decision)

    def _publish(self) -> None:
        if self._publisher.get_subscription_count() == 0:
            return
        camera, self._camera = self._camera, None
        if camera is not None:
            try:
                self._frame = self._decode(deserialize_message(camera, self._message_type))
            except FrameError as err:
                self.get_logger().warning(f"frame not shown: {err}", throttle_duration_sec=5.0)
        with self._lock:
            picture = render(
                self._frame,
                self._width,
                self._stopped,
                self._reason,
                list(self._traces.values()),
                time.monotonic(),
            )
        ok, jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        if not ok:
            return
        msg = CompressedImage(format="jpeg", data=jpeg.tobytes())
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = "live_view"
        self._publisher.publish(msg)


def main(args: list[str] | None = None) -> int:
    return run_node(LiveViewNode, args)
