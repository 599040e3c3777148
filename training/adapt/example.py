"""The measured example of docs/adapt.md: four 10 s bags of two decorated towns the defaults never
saw, cut from the `decorated_test` drives (60 Hz) as a 30 Hz camera would record them.

    python -m training.data.generate --preset decorated_test --workers 2   # datasets/decorated_test
    python -m training.adapt.example --data datasets/decorated_test --out runs/adapt_example/bags

Each drive gives two bags: frames 0–599 and 600–1199, every second one, stamps as recorded, JPEG
quality 85.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
from rosbags import rosbag2
from rosbags.typesys import Stores, get_typestore

from training.dataset import DatasetError, episodes
from vae_ood_monitor.bags import DEFAULT_CAMERA_TOPIC, read_camera_messages
from vae_ood_monitor.images import decode_message

COMPRESSED = "sensor_msgs/msg/CompressedImage"


def cut_bag(source: Path, out: Path, start: int, count: int, step: int, quality: int = 85) -> Path:
    """`count` frames of `source` from `start`, every `step`-th, as a CompressedImage bag."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    types = typestore.types
    messages = list(read_camera_messages(source))[start : start + count * step : step]
    with rosbag2.Writer(
        out, version=rosbag2.Writer.VERSION_LATEST, storage_plugin=rosbag2.StoragePlugin.MCAP
    ) as writer:
        connection = writer.add_connection(DEFAULT_CAMERA_TOPIC, COMPRESSED, typestore=typestore)
        for message in messages:
            rgb = decode_message(message.msg)
            _, jpeg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
            stamp = types["builtin_interfaces/msg/Time"](
                sec=message.stamp_ns // 10**9, nanosec=message.stamp_ns % 10**9
            )
            msg = types[COMPRESSED](
                header=types["std_msgs/msg/Header"](stamp=stamp, frame_id="camera"),
                format="jpeg",
                data=jpeg.reshape(-1),
            )
            writer.write(connection, message.log_time_ns, typestore.serialize_cdr(msg, COMPRESSED))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("datasets/decorated_test"))
    parser.add_argument("--out", type=Path, default=Path("runs/adapt_example/bags"))
    args = parser.parse_args(argv)
    try:
        drives = episodes(args.data, "test")
    except DatasetError as err:
        print(f"adapt.example: {err}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for number, episode in enumerate(drives, start=1):
        for part in (0, 1):
            bag = cut_bag(episode.path, args.out / f"town{number}_part{part}", part * 600, 300, 2)
            print(f"{bag} ({episode.map})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
