"""An independent camera client for benchmarks: streams recorded JPEG frames over DDS at a chosen
rate with fresh header stamps, counts what it actually published, watches the emergency stop and
/diagnostics, and asks the safety stop for a reset. `bench` drives the monitor with it.

It runs in its own rclpy context, so it is a separate participant from anything else in the
process, as a camera driver on the robot would be.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from vae_ood_monitor.bags import DEFAULT_CAMERA_TOPIC, read_camera_messages
from vae_ood_monitor.ground_truth import read_ground_truth
from vae_ood_monitor.nodes.common import LATCHED_QOS, RELIABLE_QOS

ESTOP_TOPIC = "/duckiebot/wheels_driver_node/emergency_stop"
RESET_SERVICE = "/ood_monitor/safety_stop/reset"
RECORDED_HZ = 30.0  # the rate the drives were recorded at
# At the end of a looped drive the stamps jump by this much: a camera hiccup the flow detector
# restarts its stack on (FlowPreprocessing.max_gap_s), instead of a cut it would see as motion.
LOOP_GAP_S = 1.0


@dataclass
class Drive:
    """A recorded drive: JPEG bytes per frame and, when labelled, the first OOD frame."""

    jpeg: list[bytes]
    onset: int | None

    @property
    def in_distribution(self) -> list[bytes]:
        return self.jpeg[: self.onset] if self.onset is not None else self.jpeg

    @property
    def out_of_distribution(self) -> list[bytes]:
        return self.jpeg[self.onset :] if self.onset is not None else []


def load_drive(bag: Path, topic: str | None = None) -> Drive:
    """The JPEG frames of a bag's CompressedImage camera topic, with the onset of its labels."""
    jpeg = []
    for message in read_camera_messages(bag, topic):
        if not hasattr(message.msg, "format"):
            raise ValueError(f"{bag}: the camera topic is not sensor_msgs/CompressedImage")
        jpeg.append(bytes(message.msg.data))
    truth = read_ground_truth(bag)
    onset = next((label.frame for label in truth if label.ood), None) if truth else None
    return Drive(jpeg, onset)


@dataclass
class ClientLog:
    """What the client saw, in time.monotonic() seconds."""

    estop: list[tuple[float, bool]] = field(default_factory=list)
    diagnostics: dict[str, dict[str, str]] = field(default_factory=dict)
    published: int = 0


class CameraClient:
    """Publishes frames on the camera topic, records the stop and diagnostics (own context)."""

    def __init__(self, topic: str = DEFAULT_CAMERA_TOPIC) -> None:
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        self.log = ClientLog()
        self._context = Context()
        rclpy.init(context=self._context)
        self._node = Node(f"bench_camera_{os.getpid()}", context=self._context)
        self._publisher = self._node.create_publisher(CompressedImage, topic, RELIABLE_QOS)
        self._node.create_subscription(
            Bool,
            ESTOP_TOPIC,
            lambda m: self.log.estop.append((time.monotonic(), m.data)),
            LATCHED_QOS,
        )
        self._node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics, RELIABLE_QOS
        )
        self._reset = self._node.create_client(Trigger, RESET_SERVICE)
        self._executor = MultiThreadedExecutor(num_threads=2, context=self._context)
        self._executor.add_node(self._node)
        self._spin = threading.Thread(target=self._executor.spin, daemon=True)
        self._spin.start()
        self._stamp_ns = time.time_ns()
        self._cursor = (0, 0)  # (id of the frame list played last, its next frame)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            self.log.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}

    def subscribers(self) -> int:
        return self._publisher.get_subscription_count()

    def play(
        self,
        frames: Sequence[bytes],
        rate_hz: float,
        seconds: float | None = None,
        follows: bool = False,
    ) -> None:
        """Publish `frames` at `rate_hz` (every n-th recorded frame for a slower camera, header
        stamps honest) for `seconds`, looping them, or up to their end (None). A list played
        again continues where it stopped. Where the stream is cut (a loop starts over, another
        list starts, unless it `follows` the previous one in the recording) the stamps jump by
        LOOP_GAP_S."""
        every = max(1, round(RECORDED_HZ / rate_hz))
        period = every / RECORDED_HZ
        if not frames:
            return
        key, position = self._cursor
        if key != id(frames):
            position = 0
            if not follows:
                self._stamp_ns += round(LOOP_GAP_S * 1e9)
        count = (
            max(0, -(-(len(frames) - position) // every))
            if seconds is None
            else max(1, round(seconds / period))
        )
        next_time = time.monotonic()
        for _ in range(count):
            if position >= len(frames):
                position = 0
                self._stamp_ns += round(LOOP_GAP_S * 1e9)
            self._stamp_ns += round(period * 1e9)
            msg = CompressedImage(format="jpeg", data=frames[position])
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(self._stamp_ns, 1_000_000_000)
            msg.header.frame_id = "camera"
            delay = next_time - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._publisher.publish(msg)
            self.log.published += 1
            position += every
            next_time += period
        self._cursor = (id(frames), position)

    def silence(self, seconds: float) -> None:
        """No frames for `seconds` (the stamps move on as a camera's clock would)."""
        time.sleep(seconds)
        self._stamp_ns += round(seconds * 1e9)

    def reset(self, timeout: float = 5.0) -> tuple[bool, str]:
        """Ask the safety stop to release the latched stop: (accepted, its message)."""
        if not self._reset.wait_for_service(timeout_sec=timeout):
            return False, f"no {RESET_SERVICE} service"
        future = self._reset.call_async(Trigger.Request())
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not future.done():
            return False, "no answer"
        return future.result().success, future.result().message

    def stop_since(self, since: float) -> float | None:
        """Seconds from `since` to the first emergency stop true received after it (None: none)."""
        return next((t - since for t, v in self.log.estop if v and t >= since), None)

    def stopped(self) -> bool:
        return bool(self.log.estop) and self.log.estop[-1][1]

    def close(self) -> None:
        self._executor.shutdown()
        # A spin thread still inside rclpy's wait when the interpreter exits aborts the process
        # ("terminate called without an active exception", ros2/rclpy#1484): let it finish first.
        self._spin.join(timeout=5.0)
        self._node.destroy_node()
        rclpy.shutdown(context=self._context)
