"""Replay a bag through the monitor graph: monitor.launch.py plus the bag player.

ros2 launch vae_ood_monitor replay.launch.py bag:=/path/to/bag [rate:=1.0] [loop:=false]
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("vae_ood_monitor")
    return LaunchDescription(
        [
            DeclareLaunchArgument("bag", description="rosbag2 folder or ROS 1 .bag to replay"),
            DeclareLaunchArgument("rate", default_value="1.0"),
            DeclareLaunchArgument("loop", default_value="false"),
            DeclareLaunchArgument(
                "params_file", default_value=os.path.join(share, "config", "monitor.yaml")
            ),
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(os.path.join(share, "launch", "monitor.launch.py")),
                launch_arguments={"params_file": LaunchConfiguration("params_file")}.items(),
            ),
            Node(
                package="vae_ood_monitor",
                executable="bag_player",
                name="bag_player",
                output="screen",
                parameters=[
                    LaunchConfiguration("params_file"),
                    {
                        "bag": LaunchConfiguration("bag"),
                        "rate": LaunchConfiguration("rate"),
                        "loop": LaunchConfiguration("loop"),
                    },
                ],
            ),
        ]
    )
