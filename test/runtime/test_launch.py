"""Launch files started with launch_pytest, where full ROS 2 is installed (parsed in test_package)."""

from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[2] / "launch"


launch_pytest = pytest.importorskip(
    "launch_pytest",
    reason="launch_pytest/launch_ros are not installable from PyPI (see ENVIRONMENT.md); this runs on robots with full ROS 2",
)
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

from launch import LaunchDescription


@launch_pytest.fixture
def monitor_launch():
    return LaunchDescription(
        [
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(str(LAUNCH / "monitor.launch.py"))
            ),
            launch_pytest.actions.ReadyToTest(),
        ]
    )


@pytest.mark.launch(fixture=monitor_launch)
def test_monitor_launch_starts_the_three_nodes(launch_context):
    import rclpy

    rclpy.init()
    node = rclpy.create_node("launch_probe")
    try:
        names: set[str] = set()
        for _ in range(100):
            rclpy.spin_once(node, timeout_sec=0.1)
            names = set(node.get_node_names())
            if {"bvae_detector", "flow_detector", "safety_stop"} <= names:
                break
        assert {"bvae_detector", "flow_detector", "safety_stop"} <= names
    finally:
        node.destroy_node()
        rclpy.shutdown()
