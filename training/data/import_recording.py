"""Import a real recording into the dataset's episode format (rosbag2 MCAP + ground truth).

    python -m training.data.import_recording SOURCE --out EPISODE_DIR [options]

SOURCE is a ROS 2 bag (directory, MCAP or sqlite3), a ROS 1 `.bag` (sensor_msgs/Image or
CompressedImage), a folder of images (sorted by name) or a video file. Header stamps of bags are
kept; images and videos get stamps at `--fps` (a video's own rate by default). Every frame is
decoded, so a corrupt one stops the import with a message naming it, and nothing half-written
is left behind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from training.data.episodes import STORAGES, EpisodeInfo, EpisodeWriter
from vae_ood_monitor.bags import BagError, choose_topic, image_topics, read_camera_messages
from vae_ood_monitor.images import FrameError, decode_message

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mjpeg")
BAG_SUFFIXES = (".bag", ".mcap", ".db3")


class RecordingError(RuntimeError):
    """A recording that cannot be imported; the message names the file and the reason."""


Frame = tuple[np.ndarray, int | None]
"""(rgb image, header stamp in ns or None when the source has no clock)."""


def _bag_frames(path: Path, topic: str | None) -> Iterator[Frame]:
    for message in read_camera_messages(path, topic):
        try:
            yield decode_message(message.msg), message.stamp_ns
        except FrameError as err:
            raise RecordingError(
                f"{path}: frame {message.index} (stamp {message.stamp_ns}): {err}"
            ) from None


def _folder_frames(path: Path) -> Iterator[Frame]:
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise RecordingError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    for image in images:
        bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise RecordingError(f"{image}: unreadable image")
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None


def _video_frames(path: Path) -> Iterator[Frame]:
    capture = cv2.VideoCapture(str(path))
    try:
        ok, bgr = capture.read()
        if not capture.isOpened() or not ok:
            raise RecordingError(f"{path}: not a readable video")
        while ok:
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None
            ok, bgr = capture.read()
    finally:
        capture.release()


def _is_rosbag2_dir(path: Path) -> bool:
    return path.is_dir() and (path / "metadata.yaml").exists()


def source_kind(path: Path) -> str:
    """'bag', 'folder' or 'video', from what is at `path`."""
    if not path.exists():
        raise RecordingError(f"{path}: no such file or folder")
    if _is_rosbag2_dir(path) or path.suffix.lower() in BAG_SUFFIXES:
        return "bag"
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    raise RecordingError(
        f"{path}: unknown recording type (expected a ROS bag, an image folder or a video)"
    )


def video_fps(path: Path) -> float | None:
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return fps if fps and fps > 0 else None


def import_recording(
    source: Path,
    out: Path,
    *,
    topic: str | None = None,
    fps: float | None = None,
    label: str = "id",
    scenario: str | None = None,
    onset_frame: int | None = None,
    size: tuple[int, int] | None = None,
    storage: str = "mcap",
    progress: bool = True,
) -> EpisodeInfo:
    """Convert `source` into an episode at `out`. `label` is 'id' or 'ood' (OOD from
    `onset_frame`, default the first frame); `size` resizes frames to (width, height)."""
    if label not in ("id", "ood"):
        raise RecordingError(f"label must be 'id' or 'ood', got '{label}'")
    if out.exists():
        raise RecordingError(f"{out}: exists already, not overwriting")
    kind = source_kind(source)
    try:
        if kind == "bag":  # fail on a bad bag or topic before any output is written
            topic = choose_topic(source, image_topics(source), topic)
    except BagError as err:
        raise RecordingError(str(err)) from None
    if kind == "video":
        fps = fps or video_fps(source)
    if kind == "bag":
        frames = _bag_frames(source, topic)
    elif kind == "folder":
        frames = _folder_frames(source)
    else:
        frames = _video_frames(source)
    onset_frame = (onset_frame or 0) if label == "ood" else None
    info = EpisodeInfo(
        name=out.name,
        scenario=scenario or label,
        category="id" if label == "id" else "recorded",
        onset_frame=onset_frame,
        fps=fps or 30.0,
        source=f"{kind}:{source.name}",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with EpisodeWriter(out, info, storage=storage) as writer:
            for rgb, stamp in tqdm(
                frames, desc=f"import {source.name}", unit="frame", disable=not progress
            ):
                if size is not None and (rgb.shape[1], rgb.shape[0]) != size:
                    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
                ood = onset_frame is not None and writer.frames_written >= onset_frame
                writer.add_frame(rgb, ood, stamp)
            if writer.frames_written == 0:
                raise RecordingError(f"{source}: no frames to import")
    except BagError as err:
        raise RecordingError(str(err)) from None
    return info


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got '{text}'") from None
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="ROS 1/2 bag, image folder or video file")
    parser.add_argument(
        "--out", type=Path, required=True, help="episode folder to create (a rosbag2 bag)"
    )
    parser.add_argument(
        "--topic", help="image topic of a bag (default: the camera topic or the only image topic)"
    )
    parser.add_argument(
        "--fps",
        type=float,
        help="frame rate for image folders (default 30) and videos (default: the video's)",
    )
    parser.add_argument(
        "--label", choices=("id", "ood"), default="id", help="ground truth of the recording"
    )
    parser.add_argument(
        "--onset-frame", type=int, help="with --label ood: first OOD frame (default 0)"
    )
    parser.add_argument(
        "--scenario", help="scenario name written to the ground truth (default: the label)"
    )
    parser.add_argument("--size", type=_size, help="resize frames, e.g. 640x480")
    parser.add_argument("--storage", choices=sorted(STORAGES), default="mcap")
    args = parser.parse_args(argv)
    try:
        info = import_recording(
            args.source,
            args.out,
            topic=args.topic,
            fps=args.fps,
            label=args.label,
            scenario=args.scenario,
            onset_frame=args.onset_frame,
            size=args.size,
            storage=args.storage,
        )
    except RecordingError as err:
        print(f"import: {err}", file=sys.stderr)
        return 1
    print(
        f"imported {info.frames} frames {info.width}x{info.height} "
        f"from {args.source} into {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
