"""Launch files run by launch_pytest where full ROS 2 is installed (parsed in test_package)."""

from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[2] / "launch"


launch_pytest = pytest.importorskip(
    "launch_pytest",
    reason="launch_pytest/launch_ros are not installable from PyPI (see ENVIRONMENT.md); "
    "this runs on robots with full ROS 2",
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
def test_monitor_launch_starts_the_three_nodes_under_the_default_names(launch_context):
    import rclpy

    rclpy.init()
    node = rclpy.create_node("launch_probe")
    wanted_nodes = {"bvae_detector", "flow_detector", "safety_stop"}
    wanted_topics = {
        "/duckiebot/camera_node/image/compressed",
        "/duckiebot/wheels_driver_node/emergency_stop",
        "/ood_monitor/bvae/score",
        "/ood_monitor/flow/ood",
        "/ood_monitor/ood",
    }
    try:
        names: set[str] = set()
        topics: set[str] = set()
        services: set[str] = set()
        for _ in range(300):
            rclpy.spin_once(node, timeout_sec=0.1)
            names = set(node.get_node_names())
            topics = {name for name, _ in node.get_topic_names_and_types()}
            services = {name for name, _ in node.get_service_names_and_types()}
            if (
                wanted_nodes <= names
                and wanted_topics <= topics
                and "/ood_monitor/safety_stop/reset" in services
            ):
                break
        assert wanted_nodes <= names
        assert wanted_topics <= topics, topics
        assert "/ood_monitor/safety_stop/reset" in services
    finally:
        node.destroy_node()
        rclpy.shutdown()
