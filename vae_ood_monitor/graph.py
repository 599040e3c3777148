"""The whole monitor graph in one process (`vae-ood-monitor monitor`), for machines without launch.

Same nodes, same parameter file as launch/monitor.launch.py; a multi-threaded executor runs them,
so one slow detector does not hold up the safety stop's watchdog.
"""

from __future__ import annotations

from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from vae_ood_monitor.nodes.bag_player import BagPlayerNode
from vae_ood_monitor.nodes.common import StartupError
from vae_ood_monitor.nodes.detector import DetectorNode
from vae_ood_monitor.nodes.safety_stop import SafetyStopNode
from vae_ood_monitor.offline import share_dir


def default_params_file() -> Path:
    return share_dir() / "config" / "monitor.yaml"


def run_monitor(params_file: Path, bag: Path | None = None, rate: float = 1.0, ros_args: list[str] | None = None) -> int:
    """Run detectors and safety stop (and a bag player with `bag`) until Ctrl-C or the bag ends."""
    rclpy.init(args=["vae-ood-monitor", "--ros-args", "--params-file", str(params_file), *(ros_args or [])])
    nodes: list[Node] = []
    player: BagPlayerNode | None = None
    executor = MultiThreadedExecutor(num_threads=4)
    try:
        nodes += [DetectorNode("bvae"), DetectorNode("flow"), SafetyStopNode()]
        if bag is not None:
            # Play only once the detectors and the safety stop listen to the camera.
            overrides = [Parameter("bag", value=str(bag)), Parameter("rate", value=rate), Parameter("wait_for_subscribers", value=3)]
            player = BagPlayerNode(parameter_overrides=overrides)
            nodes.append(player)
        for node in nodes:
            executor.add_node(node)
        while rclpy.ok() and not (player is not None and player.finished.is_set()):
            executor.spin_once(timeout_sec=0.1)
    except StartupError as err:
        rclpy.logging.get_logger("vae_ood_monitor").fatal(f"refusing to start: {err}")
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        for node in nodes:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
