"""Shared fixtures: real bags written with rosbags (ROS 1 and ROS 2), synthetic camera frames."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from rosbags import rosbag1, rosbag2
from rosbags.typesys import Stores, get_typestore

from training.data.generate import DEFAULT_SIM_PYTHON, generate
from training.export import export_encoder, write_bundle
from training.models import VAE, VAEConfig
from vae_ood_monitor.bags import DEFAULT_CAMERA_TOPIC
from vae_ood_monitor.decision import DecisionParams
from vae_ood_monitor.preprocessing import FlowPreprocessing, ImagePreprocessing
from vae_ood_monitor.scoring import LatentScore

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


IMAGE_VAE = VAEConfig(height=32, width=32, conv_channels=(8, 8), dense=(32,), latent=6)
FLOW_PREP = FlowPreprocessing(width=80, height=60, crop=(8, 6, 64, 48), stack=3)
FLOW_VAE = VAEConfig(
    in_channels=3, height=48, width=64, conv_channels=(4, 4), dense=(16,), latent=4, output="tanh"
)


def build_image_bundle(
    path: Path, decision: DecisionParams = DecisionParams(window=4, threshold=7.0)
):
    """An untrained tiny β-VAE bundle (real ONNX, real checksums) and its torch model."""
    torch.manual_seed(0)
    model = VAE(IMAGE_VAE).eval()
    onnx = export_encoder(model.encoder, (3, 32, 32), path / "work" / "image.onnx")
    write_bundle(
        path / "bundle",
        "bvae",
        ImagePreprocessing(32, 32),
        {"image": onnx},
        LatentScore("kl", {"image": [0, 2, 5]}),
        np.linspace(0.0, 5.0, 50),
        decision,
        {"note": "test"},
    )
    return model, path / "bundle"


def build_flow_bundle(path: Path, decision: DecisionParams = DecisionParams()):
    """An untrained tiny optical-flow bundle."""
    torch.manual_seed(1)
    files = {
        name: export_encoder(
            VAE(FLOW_VAE).eval().encoder, (3, 48, 64), path / "work" / f"{name}.onnx"
        )
        for name in ("horizontal", "vertical")
    }
    write_bundle(
        path / "bundle",
        "flow",
        FLOW_PREP,
        files,
        LatentScore("kl", {"horizontal": [0, 1], "vertical": [2, 3]}),
        np.linspace(0.0, 3.0, 30),
        decision,
        {},
    )
    return path / "bundle"


def skip_without_simulator() -> None:
    """Skip the calling test or fixture where the simulator venv is missing, saying how to build it."""
    if not DEFAULT_SIM_PYTHON.exists():
        pytest.skip(f"simulator venv missing at {DEFAULT_SIM_PYTHON}: `make sim-venv` builds it")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> tuple[Path, dict]:
    """The "small" preset rendered by the real simulator once per test session (~30 s)."""
    skip_without_simulator()
    root = tmp_path_factory.mktemp("small")
    manifest_path = generate("small", root, progress=False)
    return root, json.loads(manifest_path.read_text())


@pytest.fixture
def frames() -> list[np.ndarray]:
    return synthetic_frames(12)
