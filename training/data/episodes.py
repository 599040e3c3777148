"""One driving episode on disk: a rosbag2 bag of JPEG camera frames plus its ground truth.

Layout of an episode directory (a normal rosbag2 bag that `ros2 bag play` and `rosbags` read):

    <episode>/metadata.yaml, <episode>_0.mcap
        the bag: sensor_msgs/CompressedImage on the camera topic
    <episode>/ground_truth.csv
        per-frame label, scenario, onset (vae_ood_monitor.ground_truth)
    <episode>/episode.json
        how it was made: scenario, map, seed, onset, intensity, source
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from vae_ood_monitor.bags import DEFAULT_CAMERA_TOPIC
from vae_ood_monitor.ground_truth import FrameLabel, write_ground_truth
from vae_ood_monitor.images import COMPRESSED_IMAGE_TYPE
from vae_ood_monitor.variations import CAMERA_JPEG_QUALITY

EPISODE_FILE = "episode.json"
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
_TYPESTORE = get_typestore(Stores.ROS2_KILTED)


@dataclass
class EpisodeInfo:
    """What an episode is; written to episode.json and gathered into the dataset manifest."""

    name: str
    scenario: str
    category: str
    onset_frame: int | None = None
    fps: float = 30.0
    source: str = "duckietown-gym"
    map: str | None = None
    seed: int | None = None
    intensity: float | None = None
    frames: int = 0
    width: int = 0
    height: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def read_episode_info(path: Path) -> EpisodeInfo:
    return EpisodeInfo(**json.loads((path / EPISODE_FILE).read_text()))


class EpisodeWriter:
    """Writes frames as JPEG CompressedImage messages with header stamps, then the sidecars.

    A writer that is left through an exception removes its half-written directory, so a failed
    generation or import never leaves a bag that looks complete.
    """

    def __init__(
        self,
        path: Path,
        info: EpisodeInfo,
        *,
        topic: str = DEFAULT_CAMERA_TOPIC,
        frame_id: str = "camera_optical_frame",
        storage: str = "mcap",
        jpeg_quality: int = CAMERA_JPEG_QUALITY,
        start_ns: int = 1_700_000_000_000_000_000,
    ) -> None:
        if storage not in STORAGES:
            raise ValueError(f"unknown bag storage '{storage}' (choose from {', '.join(STORAGES)})")
        self.path = path
        self.info = info
        self._topic = topic
        self._frame_id = frame_id
        self._jpeg_params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
        self._start_ns = start_ns
        self._labels: list[FrameLabel] = []
        self._writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage])
        self._connection: Any = None

    def __enter__(self) -> EpisodeWriter:  # noqa: PYI034 never subclassed here
        self._writer.open()
        self._connection = self._writer.add_connection(
            self._topic, COMPRESSED_IMAGE_TYPE, typestore=_TYPESTORE
        )
        return self

    @property
    def frames_written(self) -> int:
        return len(self._labels)

    def first_ood_frame(self) -> int | None:
        return next((label.frame for label in self._labels if label.ood), None)

    def stamp_of(self, frame: int) -> int:
        return self._start_ns + round(frame * 1e9 / self.info.fps)

    def add_frame(self, rgb: np.ndarray, ood: bool, stamp_ns: int | None = None) -> None:
        """Append one RGB frame; its stamp defaults to the episode clock at `info.fps`."""
        frame = self.frames_written
        stamp = self.stamp_of(frame) if stamp_ns is None else stamp_ns
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), self._jpeg_params)
        if not ok:
            raise ValueError(f"{self.path}: JPEG encoding failed for frame {frame}")
        msgtypes = _TYPESTORE.types
        time = msgtypes["builtin_interfaces/msg/Time"](
            sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000
        )
        header = msgtypes["std_msgs/msg/Header"](stamp=time, frame_id=self._frame_id)
        msg = msgtypes[COMPRESSED_IMAGE_TYPE](header=header, format="jpeg", data=jpeg.reshape(-1))
        self._writer.write(
            self._connection, stamp, _TYPESTORE.serialize_cdr(msg, COMPRESSED_IMAGE_TYPE)
        )
        self._labels.append(
            FrameLabel(frame, stamp, ood, self.info.scenario, self.info.onset_frame)
        )
        if frame == 0:
            self.info.height, self.info.width = rgb.shape[:2]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._writer.close()
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        self.info.frames = self.frames_written
        # The onset can be settled only after the frames (an obstacle's: when it came into view).
        write_ground_truth(
            self.path, [replace(label, onset_frame=self.info.onset_frame) for label in self._labels]
        )
        (self.path / EPISODE_FILE).write_text(json.dumps(asdict(self.info), indent=2) + "\n")
