"""`safety_stop`: fuses the detectors' decisions and owns the stop (logic: vae_ood_monitor.safety).

Relative names (defaults resolved by `ros_arguments()` / the launch files in brackets): publishes
std_msgs/Bool on `emergency_stop` [/duckiebot/wheels_driver_node/emergency_stop] (TRANSIENT_LOCAL,
reliable; true = stop) and why on `stop_reason` [/ood_monitor/stop_reason] (std_msgs/String, same
QoS; empty while running) whenever they change, the fused decision on `ood` [/ood_monitor/ood], and
gates `cmd_vel_in` → `cmd_vel_out` [/cmd_vel_in → /cmd_vel_out] (geometry_msgs/Twist, or
TwistStamped with `enable_stamped_cmd_vel`; zero commands while stopped). A silent or frozen camera
(`camera/image/compressed`), a silent detector (`<name>/ood`), a detector's ERROR on /diagnostics,
or an OOD decision latch the stop until `~/reset` [/ood_monitor/safety_stop/reset]
(std_srvs/Trigger) succeeds.
"""

from __future__ import annotations

import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import Twist, TwistStamped
from rclpy.node import Node
from std_msgs.msg import Bool, Header, String
from std_srvs.srv import Trigger

from vae_ood_monitor.nodes.common import (
    LATCHED_QOS,
    RELIABLE_QOS,
    Diagnostics,
    ListenedPublisher,
    StartupError,
    camera_topic,
    declare,
    declare_veh,
    robot_topic,
    run_node,
    subscribe_camera,
)
from vae_ood_monitor.nodes.detector import diagnostic_name
from vae_ood_monitor.safety import (
    FUSIONS,
    SafetyConfig,
    SafetyStop,
    State,
    message_fingerprint,
    serialized_bool,
)


class SafetyStopNode(Node):
    def __init__(self, **node_options: Any) -> None:
        super().__init__("safety_stop", **node_options)
        veh = declare_veh(self)
        detectors = declare(
            self,
            "detectors",
            ["bvae", "flow"],
            "enabled detectors (their decisions must keep coming)",
        )
        fusion = declare(self, "fusion", "any", f"how decisions combine: {', '.join(FUSIONS)}")
        k = declare(self, "k", 1, "with fusion k_of_n: detectors that must agree on OOD")
        timeout = declare(
            self,
            "timeout_s",
            SafetyConfig.timeout_s,
            "silence of the camera or a detector that stops the robot [s]; 0 disables",
        )
        frozen = declare(
            self,
            "frozen_s",
            SafetyConfig.frozen_s,
            "byte-identical camera frames for longer than this stop the robot [s]; 0 disables",
        )
        transport = declare(
            self, "image_transport", "compressed", "camera message type: compressed or raw"
        )
        self._stamped = declare(
            self,
            "enable_stamped_cmd_vel",
            False,
            "cmd_vel_in/out are geometry_msgs/TwistStamped (else Twist), as nav2's parameter",
        )
        rate = declare(
            self,
            "rate_hz",
            20.0,
            "how often staleness is checked and zero commands are sent while stopped",
        )
        try:
            self.logic = SafetyStop(SafetyConfig(tuple(detectors), fusion, k, timeout, frozen))
        except ValueError as err:
            raise StartupError(f"safety_stop parameters: {err}") from None
        if not timeout:
            self.get_logger().warning("timeout_s is 0: a silent camera or detector does not stop")
        self._stop_pub = self.create_publisher(
            Bool, robot_topic(self, "emergency_stop", veh), LATCHED_QOS
        )
        self._reason_pub = self.create_publisher(String, "stop_reason", LATCHED_QOS)
        self._fused_pub = ListenedPublisher(self, Bool, "ood", RELIABLE_QOS)
        command = TwistStamped if self._stamped else Twist
        self._cmd_pub = self.create_publisher(command, "cmd_vel_out", RELIABLE_QOS)
        self.create_subscription(command, "cmd_vel_in", self._on_cmd_vel, RELIABLE_QOS)
        self._cmd_frame = ""  # frame_id of the last stamped command, kept on the zero ones
        subscribe_camera(
            self,
            transport,
            robot_topic(self, camera_topic(transport), veh),
            self._on_camera,
            raw=True,  # serialized bytes: liveness and frozen frames need no decoded message
        )
        self._raw_image = transport == "raw"
        for name in detectors:
            self.create_subscription(
                Bool,
                f"{name}/ood",
                lambda serialized, n=name: self._on_decision(n, serialized_bool(serialized)),
                RELIABLE_QOS,
                raw=True,  # two decisions a frame: read the byte, build no message
            )
        self._fused_msg = Bool()  # refilled for each decision
        self._watched = {diagnostic_name(name): name for name in detectors}
        self.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics, RELIABLE_QOS
        )
        self.create_service(Trigger, "~/reset", self._on_reset)
        self._published: tuple[bool, str] | None = None
        self.stop_count = 0
        # The watchdog: restarted by every decision, which checks the same, so it fires only
        # when decisions pause: at 30 Hz it never wakes the process (each wake-up of a
        # Python node costs ~0.15 ms of CPU); silence is still noticed within 1/rate_hz.
        self._watchdog = self.create_timer(1.0 / rate, self._tick)
        Diagnostics(self, "ood_monitor/safety_stop", self.get_namespace(), self._report)
        self._publish_stop()

    def _on_camera(self, data: bytes) -> None:
        fingerprint = message_fingerprint(data, self._raw_image)
        if fingerprint is None:
            self.get_logger().warning(
                "camera message not in classic CDR: the frozen-camera check cannot see repeats",
                throttle_duration_sec=60.0,
            )
        self.logic.on_camera(time.monotonic(), fingerprint)

    def _on_decision(self, name: str, ood: bool) -> None:
        self.logic.on_decision(name, ood, time.monotonic())
        self._fused_msg.data = self.logic.fused_ood()
        self._fused_pub.publish(self._fused_msg)
        self._tick()
        self._watchdog.reset()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            name = self._watched.get(status.name)
            if name is not None and status.level == DiagnosticStatus.ERROR:
                self.logic.on_error(name, status.message)

    def _on_cmd_vel(self, msg: Twist | TwistStamped) -> None:
        if self._stamped:
            self._cmd_frame = msg.header.frame_id
        self._cmd_pub.publish(self._zero_command() if self.logic.stopped else msg)

    def _zero_command(self) -> Twist | TwistStamped:
        if not self._stamped:
            return Twist()
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self._cmd_frame)
        return TwistStamped(header=header)

    def _tick(self) -> None:
        if self.logic.update(time.monotonic()):
            self.stop_count += 1
            self.get_logger().error("STOP: " + "; ".join(self.logic.stop_reasons))
        self._publish_stop()
        if self.logic.stopped:
            self._cmd_pub.publish(self._zero_command())

    def _publish_stop(self) -> None:
        """The stop and its reason, latched, whenever either changes."""
        state = (self.logic.stopped, self.logic.reason)
        if self._published != state:
            self._reason_pub.publish(String(data=state[1]))  # first: a stop comes with its reason
            if self._published is None or self._published[0] != state[0]:
                self._stop_pub.publish(Bool(data=state[0]))
            self._published = state

    def _on_reset(self, _: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.logic.request_reset(time.monotonic())
        self.get_logger().info(f"reset requested: {response.message}")
        self._publish_stop()
        return response

    def _report(self) -> tuple[bytes, str, dict[str, Any]]:
        state = self.logic.state
        level = {
            State.RUNNING: DiagnosticStatus.OK,
            State.WAITING: DiagnosticStatus.WARN,
            State.STOPPED: DiagnosticStatus.ERROR,
        }[state]
        message = (
            state.value
            if state is not State.STOPPED
            else "stopped: " + "; ".join(self.logic.stop_reasons)
        )
        return (
            level,
            message,
            {
                "state": state.value,
                "stop_reason": self.logic.reason,
                "stops": self.stop_count,
                "fusion": self.logic.config.fusion,
            },
        )


def main(args: list[str] | None = None) -> int:
    return run_node(SafetyStopNode, args)
