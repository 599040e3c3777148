"""`bag_player`: replays a ROS 2 or ROS 1 bag's camera topic onto a live topic at the recorded rate.

Messages are published as CDR bytes straight from the bag (ROS 1 converted), so nothing is
decoded on the way. Parameters: rate factor, loop, start offset. The node exits when the bag is
done unless it loops.
"""

from __future__ import annotations

import threading
import time
from importlib import import_module
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node

from vae_ood_monitor.bags import BagError, choose_topic, image_topics, read_raw_messages
from vae_ood_monitor.nodes.common import (
    REPLAY_QOS,
    Diagnostics,
    RateMeter,
    StartupError,
    declare,
    run_node,
)


def message_class(msgtype: str) -> Any:
    """'sensor_msgs/msg/CompressedImage' → the rclpy message class."""
    package, _, name = msgtype.split("/")
    return getattr(import_module(f"{package}.msg"), name)


class BagPlayerNode(Node):
    def __init__(self, **node_options: Any) -> None:
        super().__init__("bag_player", **node_options)
        bag = declare(
            self, "bag", "", "bag to replay: rosbag2 folder (MCAP, sqlite3) or ROS 1 .bag"
        )
        topic = declare(
            self,
            "topic",
            "",
            "image topic in the bag (empty: the camera topic or the only image topic)",
        )
        output = declare(
            self, "output_topic", "", "topic to publish on (empty: the bag's topic name)"
        )
        self._rate = declare(self, "rate", 1.0, "replay speed factor (2.0 = twice as fast)")
        self._loop = declare(self, "loop", False, "start again at the end")
        self._offset = declare(self, "start_offset", 0.0, "seconds of the bag to skip")
        self._wait_for = declare(
            self,
            "wait_for_subscribers",
            0,
            "hold the first message until this many subscribers matched (10 s at most)",
        )
        if not bag:
            raise StartupError("parameter 'bag' is required (a rosbag2 folder or ROS 1 .bag)")
        if self._rate <= 0 or self._offset < 0:
            raise StartupError(
                "rate must be > 0 and start_offset >= 0 "
                f"(got rate={self._rate}, start_offset={self._offset})"
            )
        self._bag = Path(bag)
        try:
            topics = image_topics(self._bag)
            self._topic = choose_topic(self._bag, topics, topic or None)
        except BagError as err:
            raise StartupError(str(err)) from None
        self._publisher = self.create_publisher(
            message_class(topics[self._topic]), output or self._topic, REPLAY_QOS
        )
        self.published = 0
        self.finished = threading.Event()
        self.exit_code = 0
        self._error = ""
        self._meter = RateMeter()
        self._diagnostics = Diagnostics(
            self, "ood_monitor/bag_player", str(self._bag), self._report
        )
        self._thread = threading.Thread(target=self._play, name="bag-player", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"replaying {self._topic} of {self._bag} on {output or self._topic} at {self._rate}x"
        )

    def _play(self) -> None:
        deadline = time.monotonic() + 10.0
        while (
            self._publisher.get_subscription_count() < self._wait_for
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        try:
            while rclpy.ok():
                self._play_once()
                if not self._loop:
                    break
        except BagError as err:
            self._error, self.exit_code = str(err), 1
            self.get_logger().error(self._error)
        self.finished.set()
        self._diagnostics.publish()  # the final count, before the node exits between 1 Hz reports

    def _play_once(self) -> None:
        start_wall: float | None = None
        first_log: int | None = None
        for message in read_raw_messages(self._bag, self._topic):
            if first_log is None:
                first_log = message.log_time_ns
            bag_seconds = (message.log_time_ns - first_log) / 1e9 - self._offset
            if bag_seconds < 0:
                continue
            if start_wall is None:
                start_wall = time.monotonic()
            delay = start_wall + bag_seconds / self._rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not rclpy.ok():
                return
            self._publisher.publish(message.cdr)
            self.published += 1
            self._meter.tick()

    def _report(self) -> tuple[bytes, str, dict[str, Any]]:
        if self._error:
            level, message = DiagnosticStatus.ERROR, self._error
        else:
            level, message = (
                DiagnosticStatus.OK,
                "finished" if self.finished.is_set() else "playing",
            )
        return (
            level,
            message,
            {
                "published": self.published,
                "rate_hz": f"{self._meter.rate():.1f}",
                "topic": self._topic,
            },
        )


def main(args: list[str] | None = None) -> int:
    """Run until the bag is done (or forever with loop:=true); exit 1 when the bag broke off."""
    return run_node(BagPlayerNode, args, done=lambda node: node.finished.is_set())
