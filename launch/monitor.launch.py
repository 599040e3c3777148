"""The monitor graph on a robot with full ROS 2: both detectors and the safety stop.

ros2 launch vae_ood_monitor monitor.launch.py [params_file:=...] [veh:=duckiebot]
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(
        get_package_share_directory("vae_ood_monitor"), "config", "monitor.yaml"
    )
    params = LaunchConfiguration("params_file")
    veh = {"veh": LaunchConfiguration("veh")}
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "params_file",
                default_value=default_params,
                description="parameter YAML of the graph",
            ),
            DeclareLaunchArgument(
                "veh", default_value="duckiebot", description="vehicle name (topic prefix)"
            ),
            Node(
                package="vae_ood_monitor",
                executable="bvae_detector",
                name="bvae_detector",
                parameters=[params, veh],
                output="screen",
            ),
            Node(
                package="vae_ood_monitor",
                executable="flow_detector",
                name="flow_detector",
                parameters=[params, veh],
                output="screen",
            ),
            Node(
                package="vae_ood_monitor",
                executable="safety_stop",
                name="safety_stop",
                parameters=[params, veh],
                output="screen",
            ),
        ]
    )
