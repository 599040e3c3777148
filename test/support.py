"""Test helpers that need no torch: real bags written with rosbags (ROS 1 and ROS 2), synthetic
camera frames and the small committed bundles under test/runtime/data."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags import rosbag1, rosbag2
from rosbags.typesys import Stores, get_typestore

from vae_ood_monitor.bags import DEFAULT_CAMERA_TOPIC
from vae_ood_monitor.bundle import edit_meta
from vae_ood_monitor.decision import DecisionParams

FPS = 30.0
START_NS = 1_650_000_000_000_000_000


def synthetic_frames(count: int, width: int = 160, height: int = 120) -> list[np.ndarray]:
    """A grey road with a white square moving right: distinct, JPEG-friendly frames."""
    frames = []
    for i in range(count):
        rgb = np.full((height, width, 3), (90, 90, 100), np.uint8)
        rgb[height // 2 :, :] = (60, 60, 60)
        x = (8 * i) % (width - 20)
        rgb[height // 2 : height // 2 + 20, x : x + 20] = 255
        frames.append(rgb)
    return frames


def _image_message(typestore, rgb: np.ndarray, stamp_ns: int, compressed: bool, ros1: bool):
    types = typestore.types
    time = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    header_fields = {"stamp": time, "frame_id": "camera"}
    if ros1:
        header_fields["seq"] = 0
    header = types["std_msgs/msg/Header"](**header_fields)
    if compressed:
        _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        return types["sensor_msgs/msg/CompressedImage"](
            header=header, format="jpeg", data=jpeg.reshape(-1)
        )
    height, width = rgb.shape[:2]
    # A padded row (step > width*3), as some drivers publish, to check that step is honoured.
    step = width * 3 + 8
    padded = np.zeros((height, step), np.uint8)
    padded[:, : width * 3] = rgb.reshape(height, -1)
    return types["sensor_msgs/msg/Image"](
        header=header,
        height=height,
        width=width,
        encoding="rgb8",
        is_bigendian=0,
        step=step,
        data=padded.reshape(-1),
    )


def _write_frames(
    writer, typestore, topic: str, frames: list[np.ndarray], compressed: bool, ros1: bool
) -> None:
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    serialize = typestore.serialize_ros1 if ros1 else typestore.serialize_cdr
    connection = writer.add_connection(topic, msgtype, typestore=typestore)
    for i, rgb in enumerate(frames):
        stamp = START_NS + round(i * 1e9 / FPS)
        writer.write(
            connection,
            stamp,
            serialize(_image_message(typestore, rgb, stamp, compressed, ros1), msgtype),
        )


def write_ros2_bag(
    path: Path,
    frames: list[np.ndarray],
    *,
    topic: str = DEFAULT_CAMERA_TOPIC,
    compressed: bool = True,
    storage: str = "mcap",
) -> Path:
    plugin = rosbag2.StoragePlugin.MCAP if storage == "mcap" else rosbag2.StoragePlugin.SQLITE3
    with rosbag2.Writer(
        path, version=rosbag2.Writer.VERSION_LATEST, storage_plugin=plugin
    ) as writer:
        _write_frames(
            writer, get_typestore(Stores.ROS2_KILTED), topic, frames, compressed, ros1=False
        )
    return path


def write_ros1_bag(
    path: Path,
    frames: list[np.ndarray],
    *,
    topic: str = "/duckiebot/camera_node/image/raw",
    compressed: bool = False,
) -> Path:
    with rosbag1.Writer(path) as writer:
        _write_frames(
            writer, get_typestore(Stores.ROS1_NOETIC), topic, frames, compressed, ros1=True
        )
    return path


DATA = Path(__file__).resolve().parent / "runtime" / "data"
TINY_BUNDLES = ("bvae_tiny", "flow_tiny")


def tiny_bundle(name: str, dest: Path, decision: DecisionParams | None = None) -> Path:
    """A copy of a committed untrained tiny bundle (real ONNX, real checksums) under `dest`.

    `decision`, when given, replaces the bundle's decision parameters (checksums rewritten), so a
    test can pick detectors that never or always flag. test/training/training_support.py rebuilds
    them.
    """
    if name not in TINY_BUNDLES:
        raise ValueError(f"no tiny bundle {name!r}; there are {TINY_BUNDLES}")
    target = dest / name
    shutil.copytree(DATA / name, target)
    if decision is not None:
        edit_meta(target, lambda meta: meta.update(decision=decision.to_dict()))
    return target


@contextmanager
def spinning(node: Any, executor: Any) -> Iterator[Any]:
    """`node` spun by `executor` (an rclpy executor) in a background thread for the block; then
    the executor is shut down and the node destroyed. The tests' own DDS participants."""
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        yield node
    finally:
        executor.shutdown()
        node.destroy_node()
