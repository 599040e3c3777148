"""The monitor graph on a robot with full ROS 2: both detectors and the safety stop.

ros2 launch vae_ood_monitor monitor.launch.py [namespace:=ood_monitor] [params_file:=...]
    [veh:=duckiebot] [live_view:=false] [separate_detectors:=false]

The nodes use relative names. `namespace` holds the monitor's own topics and services
(/ood_monitor/bvae/score, /ood_monitor/safety_stop/reset, ...); the robot's topics are remapped to
the Duckietown names of vehicle `veh` (/<veh>/camera_node/image/compressed,
/<veh>/wheels_driver_node/emergency_stop) and cmd_vel_in/out to /cmd_vel_in, /cmd_vel_out.
`live_view:=true` adds the annotated picture on <namespace>/live_view/image/compressed.
Both detector nodes run in one process (`ood_detectors`: one camera subscription, one JPEG decode
per frame); `separate_detectors:=true` starts each in its own process. Names, parameters and
topics are the same either way.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from vae_ood_monitor.nodes.common import (
    DEFAULT_VEHICLE,
    DUCKIETOWN_NAMES,
    GLOBAL_NAMES,
    NAMESPACE,
)


def remappings() -> list[tuple[str, object]]:
    """The relative robot-side names → /<veh>/... Duckietown names and the global cmd_vel pair."""
    veh = LaunchConfiguration("veh")
    return [
        *((name, ["/", veh, f"/{target}"]) for name, target in DUCKIETOWN_NAMES.items()),
        *GLOBAL_NAMES.items(),
    ]


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(
        get_package_share_directory("vae_ood_monitor"), "config", "monitor.yaml"
    )
    separate = LaunchConfiguration("separate_detectors")
    conditions = {
        # both detector nodes in one process; no `name`: it would rename both
        "ood_detectors": UnlessCondition(separate),
        "bvae_detector": IfCondition(separate),
        "flow_detector": IfCondition(separate),
        "safety_stop": None,
        "live_view": IfCondition(LaunchConfiguration("live_view")),
    }
    nodes = [
        Node(
            package="vae_ood_monitor",
            executable=name,
            name=None if name == "ood_detectors" else name,
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file")],
            remappings=remappings(),
            output="screen",
            condition=condition,
        )
        for name, condition in conditions.items()
    ]
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "namespace",
                default_value=NAMESPACE,
                description="namespace of the monitor's nodes, topics and services",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=default_params,
                description="parameter YAML of the graph (keys /**/<node>)",
            ),
            DeclareLaunchArgument(
                "veh",
                default_value=DEFAULT_VEHICLE,
                description="Duckietown vehicle: camera and emergency stop remapped under /<veh>",
            ),
            DeclareLaunchArgument(
                "live_view",
                default_value="false",
                description="also run the annotated picture for rqt_image_view / Foxglove",
            ),
            DeclareLaunchArgument(
                "separate_detectors",
                default_value="false",
                description="each detector node in its own process instead of both in one "
                "(ood_detectors: one camera subscription, one JPEG decode per frame)",
            ),
            *nodes,
        ]
    )
