"""What every node shares: parameter declaration, QoS profiles, diagnostics, camera subscriptions
and a `main` wrapper that turns start-up errors into one clear log line and an exit code."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import (
    ExternalShutdownException,
    MultiThreadedExecutor,
    SingleThreadedExecutor,
)
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

try:  # rclpy's C++ events executor (Jazzy and later); Humble (JetPack 6) has only the Python one
    from rclpy.experimental import EventsExecutor as SingleThreadExecutor
except ImportError:
    SingleThreadExecutor = SingleThreadedExecutor

# The newest two frames: a detector never works through a backlog of stale frames (its callback only
# keeps the newest), but when frames arrive in a burst and the newest is corrupt it scores the one
# before it — with a depth of 1 that frame would be gone before the callback ran.
CAMERA_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=2, reliability=qos_profile_sensor_data.reliability
)
# The stop is a state, not an event: late joiners get the last value (as a latched ROS 1 topic).
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
RELIABLE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
)
# Replayed frames: a reliable keep-last queue only protects what fits in it, so the bag player and
# a recorder that must see every frame keep a few seconds' worth (a start-up load spike lasts that
# long).
REPLAY_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=150, reliability=ReliabilityPolicy.RELIABLE
)
TRANSPORTS = ("compressed", "raw")


class StartupError(RuntimeError):
    """A node that must not start (bad parameter, missing or corrupt bundle): says what, where."""


def declare(node: Node, name: str, default: Any, description: str) -> Any:
    return node.declare_parameter(name, default, ParameterDescriptor(description=description)).value


# Names. The nodes use relative names only (nav2's and the ROS 2 demos' convention); where they
# land is the launcher's business: a namespace for the monitor's own topics and services, and
# remappings for the robot's. `ros_arguments()` gives the defaults, which resolve to the contract
# names: /ood_monitor/bvae/score, /ood_monitor/ood, /ood_monitor/safety_stop/reset, ...
NAMESPACE = "ood_monitor"
DEFAULT_VEHICLE = "duckiebot"
# Robot-side relative names → their names under a Duckietown vehicle's namespace.
DUCKIETOWN_NAMES = {
    "camera/image/compressed": "camera_node/image/compressed",
    "camera/image/raw": "camera_node/image/raw",
    "emergency_stop": "wheels_driver_node/emergency_stop",
}
# The velocity gate's topics keep the global names they have always had.
GLOBAL_NAMES = {"cmd_vel_in": "/cmd_vel_in", "cmd_vel_out": "/cmd_vel_out"}


def default_remappings(veh: str = DEFAULT_VEHICLE) -> dict[str, str]:
    """Relative name → resolved name on Duckietown vehicle `veh` (launch files, demo, monitor)."""
    return {
        **{name: f"/{veh}/{target}" for name, target in DUCKIETOWN_NAMES.items()},
        **GLOBAL_NAMES,
    }


def ros_arguments(namespace: str = NAMESPACE, veh: str = DEFAULT_VEHICLE) -> list[str]:
    """`--ros-args` rules (without the `--ros-args` itself) that put a node, or every node of a
    process, where the launch files put it: `-r __ns:=/<namespace>` and the Duckietown remappings.
    Rules given before these win (rcl applies the first matching rule)."""
    rules = {"__ns": f"/{namespace.strip('/')}", **default_remappings(veh)}
    return [arg for name, target in rules.items() for arg in ("-r", f"{name}:={target}")]


def camera_topic(transport: str) -> str:
    """The camera subscription's relative name for `transport`."""
    if transport not in TRANSPORTS:
        raise StartupError(f"image_transport must be one of {TRANSPORTS}, got '{transport}'")
    return f"camera/image/{transport}"


def robot_topic(node: Node, name: str, veh: str) -> str:
    """Relative `name`, or its absolute Duckietown name under /<veh> when the deprecated `veh`
    parameter is set (old parameter files keep the stop on the wheels driver's topic)."""
    if not veh:
        return name
    target = f"/{veh}/{DUCKIETOWN_NAMES[name]}"
    node.get_logger().warning(
        f"parameter 'veh' is deprecated: remap {name}:={target} instead (using {target})"
    )
    return target


def declare_veh(node: Node) -> str:
    return declare(
        node,
        "veh",
        "",
        "DEPRECATED (remap instead): when set, camera and emergency stop use /<veh>/... names",
    )


class ListenedPublisher:
    """A publisher that builds and sends nothing while no subscription is matched: the scores and
    the fused decision are published for whoever listens, and an rclpy publish costs 50-180 µs of
    CPU at a camera's pace even with no one listening (docs/performance.md). The topics are
    volatile: a message published before a subscriber matched would not reach it anyway; one that
    joins gets every message from the next count on, at most `RECOUNT_S` later. (rclpy's matched
    events would need no polling, but with the events executor a subscription created in the
    same process then deadlocks.)"""

    RECOUNT_S = 0.25

    def __init__(self, node: Node, message_type: Any, topic: str, qos: QoSProfile) -> None:
        self._publisher = node.create_publisher(message_type, topic, qos)
        self._listeners = 0
        self._recount_at = 0.0

    def publish(self, msg: Any) -> None:
        now = time.monotonic()
        if now >= self._recount_at:
            self._listeners = self._publisher.get_subscription_count()
            self._recount_at = now + self.RECOUNT_S
        if self._listeners:
            self._publisher.publish(msg)


def subscribe_camera(
    node: Node, transport: str, topic: str, callback: Callable[[Any], None], **kwargs: Any
) -> Any:
    message_type = CompressedImage if transport == "compressed" else Image
    return node.create_subscription(message_type, topic, callback, CAMERA_QOS, **kwargs)


class RateMeter:
    """Events per second over the last few seconds, and a rolling median of a measured value."""

    def __init__(self, horizon_s: float = 2.0, samples: int = 200) -> None:
        self._times: deque[float] = deque()
        self._values: deque[float] = deque(maxlen=samples)
        self._horizon = horizon_s
        self._lock = threading.Lock()

    def tick(self, value: float | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            self._times.append(now)
            while self._times and now - self._times[0] > self._horizon:
                self._times.popleft()
            if value is not None:
                self._values.append(value)

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._times if now - t <= self._horizon]
        return len(recent) / self._horizon

    def median(self) -> float:
        with self._lock:
            return float(np.median(self._values)) if self._values else float("nan")


class Diagnostics:
    """Publishes one DiagnosticStatus on /diagnostics at 1 Hz, built by `report()` → (level,
    message, values)."""

    def __init__(
        self,
        node: Node,
        name: str,
        hardware_id: str,
        report: Callable[[], tuple[bytes, str, dict[str, Any]]],
    ) -> None:
        self._node = node
        self._name = name
        self._hardware_id = hardware_id
        self._report = report
        self._publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        node.create_timer(1.0, self.publish)

    def publish(self) -> None:
        level, message, values = self._report()
        status = DiagnosticStatus(
            level=level,
            name=self._name,
            message=message,
            hardware_id=self._hardware_id,
            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
        )
        self._publisher.publish(DiagnosticArray(header=self._header(), status=[status]))

    def _header(self) -> Header:
        return Header(stamp=self._node.get_clock().now().to_msg())


def run_nodes(
    factory: Callable[[], list[Node]],
    args: list[str] | None = None,
    done: Callable[[list[Any]], bool] | None = None,
    threads: int = 1,
) -> int:
    """rclpy.init → nodes → spin until Ctrl-C or `done(nodes)`. A StartupError is one fatal log line
    and exit code 2; otherwise the highest `exit_code` attribute of the nodes (default 0)."""
    rclpy.init(args=args if args is not None else sys.argv)
    nodes: list[Node] = []
    # One thread: rclpy's EventsExecutor (C++) costs a fraction of the Python executor's CPU per
    # callback (docs/performance.md); several: the multi-threaded one.
    executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadExecutor()
    try:
        nodes = factory()
        for node in nodes:
            executor.add_node(node)
        while rclpy.ok() and not (done is not None and done(nodes)):
            executor.spin_once(timeout_sec=0.1)
    except StartupError as err:
        rclpy.logging.get_logger("vae_ood_monitor").fatal(f"refusing to start: {err}")
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # Ctrl-C or SIGTERM while the nodes were being built: rclpy's signal handler shut the
        # context down under them, and the error that follows is the end of the run, not a bug.
    finally:
        executor.shutdown()
        for node in nodes:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return max((int(getattr(node, "exit_code", 0)) for node in nodes), default=0)


def run_node(
    factory: Callable[[], Node],
    args: list[str] | None = None,
    done: Callable[[Any], bool] | None = None,
) -> int:
    """`run_nodes` for a single node."""
    return run_nodes(
        lambda: [factory()], args, None if done is None else lambda nodes: done(nodes[0])
    )
