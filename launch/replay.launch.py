"""Replay a bag through the monitor graph: monitor.launch.py plus the bag player.

ros2 launch vae_ood_monitor replay.launch.py bag:=/path/to/bag [rate:=1.0] [loop:=false]
    [namespace:=ood_monitor] [params_file:=...] [veh:=duckiebot] [live_view:=false]

The player publishes on the bag's own topic names (as `ros2 bag play`); set its `output_topic`
parameter when they differ from the camera topic the monitor listens to.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from vae_ood_monitor.nodes.common import DEFAULT_VEHICLE, NAMESPACE


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("vae_ood_monitor")
    passed_on = ("namespace", "params_file", "veh", "live_view")
    return LaunchDescription(
        [
            DeclareLaunchArgument("bag", description="rosbag2 folder or ROS 1 .bag to replay"),
            DeclareLaunchArgument("rate", default_value="1.0"),
            DeclareLaunchArgument("loop", default_value="false"),
            DeclareLaunchArgument("namespace", default_value=NAMESPACE),
            DeclareLaunchArgument(
                "params_file", default_value=os.path.join(share, "config", "monitor.yaml")
            ),
            DeclareLaunchArgument("veh", default_value=DEFAULT_VEHICLE),
            DeclareLaunchArgument("live_view", default_value="false"),
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(os.path.join(share, "launch", "monitor.launch.py")),
                launch_arguments={name: LaunchConfiguration(name) for name in passed_on}.items(),
            ),
            Node(
                package="vae_ood_monitor",
                executable="bag_player",
                name="bag_player",
                namespace=LaunchConfiguration("namespace"),
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
