"""The whole monitor graph in one process (`vae-ood-monitor monitor`), for machines without launch.

Same nodes, same parameter file as launch/monitor.launch.py; a multi-threaded executor runs them,
so one slow detector does not hold up the safety stop's watchdog.
"""

from __future__ import annotations

from pathlib import Path

from rclpy.node import Node
from rclpy.parameter import Parameter

from vae_ood_monitor.nodes.bag_player import BagPlayerNode
from vae_ood_monitor.nodes.common import run_nodes
from vae_ood_monitor.nodes.detector import DetectorNode
from vae_ood_monitor.nodes.safety_stop import SafetyStopNode
from vae_ood_monitor.offline import share_dir


def default_params_file() -> Path:
    return share_dir() / "config" / "monitor.yaml"


def run_monitor(
    params_file: Path, bag: Path | None = None, rate: float = 1.0, ros_args: list[str] | None = None
) -> int:
    """Run detectors and safety stop (and a bag player with `bag`) until Ctrl-C or the bag ends."""

    def nodes() -> list[Node]:
        graph: list[Node] = [DetectorNode("bvae"), DetectorNode("flow"), SafetyStopNode()]
        if bag is not None:
            # Play only once the detectors and the safety stop listen to the camera.
            overrides = [
                Parameter("bag", value=str(bag)),
                Parameter("rate", value=rate),
                Parameter("wait_for_subscribers", value=3),
            ]
            graph.append(BagPlayerNode(parameter_overrides=overrides))
        return graph

    def bag_done(graph: list[Node]) -> bool:
        return any(isinstance(node, BagPlayerNode) and node.finished.is_set() for node in graph)

    args = ["vae-ood-monitor", "--ros-args", "--params-file", str(params_file), *(ros_args or [])]
    return run_nodes(nodes, args, bag_done, threads=4)
