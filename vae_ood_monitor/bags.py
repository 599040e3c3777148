"""Reading camera frames from ROS 2 (MCAP, sqlite3) and ROS 1 bags with `rosbags`.

Every failure becomes a `BagError` whose one-line message names the bag, so command-line tools can
print it instead of a traceback from inside the library.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.typesys import Stores, get_typestore

from vae_ood_monitor.images import IMAGE_TYPES, stamp_to_ns

DEFAULT_CAMERA_TOPIC = "/duckiebot/camera_node/image/compressed"
T = TypeVar("T")

# Exceptions rosbags and its storage back-ends raise on damaged files (truncated MCAP chunks,
# corrupt sqlite pages, short ROS 1 records); turned into BagError with the bag's name.
_DAMAGED_BAG_ERRORS: tuple[type[BaseException], ...] = (
    AnyReaderError,
    EOFError,
    OSError,
    struct.error,
    ValueError,
    KeyError,
    IndexError,
)


class BagError(RuntimeError):
    """A bag that cannot be read as asked; the message names the file and the reason."""


@dataclass(frozen=True)
class BagMessage:
    """One camera message: its position in the topic, header stamp, log time and typed message."""

    index: int
    stamp_ns: int
    log_time_ns: int
    msgtype: str
    msg: Any


def _open(path: Path) -> AnyReader:
    if not path.exists():
        raise BagError(f"{path}: no such bag")
    try:
        # The default typestore serves bags without embedded definitions (sqlite3 before Iron).
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED))
        reader.open()
    except _DAMAGED_BAG_ERRORS as err:
        raise BagError(f"{path}: not a readable ROS bag ({err})") from None
    return reader


def _camera_connections(reader: AnyReader, path: Path, topic: str | None) -> tuple[str, list[Any]]:
    available = {c.topic: c.msgtype for c in reader.connections if c.msgtype in IMAGE_TYPES}
    chosen = choose_topic(path, available, topic)
    return chosen, [c for c in reader.connections if c.topic == chosen]


def image_topics(path: Path) -> dict[str, str]:
    """Image topics of a bag and their message types."""
    reader = _open(path)
    try:
        return {c.topic: c.msgtype for c in reader.connections if c.msgtype in IMAGE_TYPES}
    finally:
        reader.close()


def choose_topic(path: Path, available: dict[str, str], topic: str | None) -> str:
    """The requested topic, else the default camera topic, else the bag's only image topic."""
    if topic is not None:
        if topic not in available:
            listed = ", ".join(sorted(available)) or "none"
            raise BagError(f"{path}: no image topic '{topic}' (image topics in this bag: {listed})")
        return topic
    if DEFAULT_CAMERA_TOPIC in available:
        return DEFAULT_CAMERA_TOPIC
    if len(available) == 1:
        return next(iter(available))
    if not available:
        raise BagError(f"{path}: no sensor_msgs/Image or CompressedImage topic in this bag")
    raise BagError(
        f"{path}: several image topics, choose one with --topic: {', '.join(sorted(available))}"
    )


def _camera_records(
    path: Path | str, topic: str | None, convert: Callable[[AnyReader, Any, int, bytes, int], T]
) -> Iterator[T]:
    """`convert(reader, connection, log_time, rawdata, index)` of every message of the camera
    topic, in log-time order; damage found on the way becomes a BagError naming the bag."""
    path = Path(path)
    reader = _open(path)
    try:
        chosen, connections = _camera_connections(reader, path, topic)
        index = 0
        try:
            for connection, log_time, rawdata in reader.messages(connections=connections):
                item = convert(reader, connection, log_time, rawdata, index)
                yield item
                index += 1
        except _DAMAGED_BAG_ERRORS as err:
            raise BagError(
                f"{path}: damaged bag, stopped after {index} messages on {chosen} ({err})"
            ) from None
    finally:
        reader.close()


def _typed(
    reader: AnyReader, connection: Any, log_time: int, rawdata: bytes, index: int
) -> BagMessage:
    msg = reader.deserialize(rawdata, connection.msgtype)
    return BagMessage(index, stamp_to_ns(msg.header.stamp), log_time, connection.msgtype, msg)


def read_camera_messages(path: Path | str, topic: str | None = None) -> Iterator[BagMessage]:
    """Yield the camera messages of one topic in log-time order, deserialized."""
    return _camera_records(path, topic, _typed)


@dataclass(frozen=True)
class RawMessage:
    """A camera message as ROS 2 CDR bytes, ready for `Publisher.publish` without deserializing."""

    log_time_ns: int
    msgtype: str
    cdr: bytes


def _cdr(
    reader: AnyReader, connection: Any, log_time: int, rawdata: bytes, index: int
) -> RawMessage:
    cdr = rawdata if reader.is2 else reader.typestore.ros1_to_cdr(rawdata, connection.msgtype)
    return RawMessage(log_time, connection.msgtype, bytes(cdr))


def read_raw_messages(path: Path | str, topic: str | None = None) -> Iterator[RawMessage]:
    """Yield a camera topic's messages as CDR (ROS 1 bags are converted) in log-time order."""
    return _camera_records(path, topic, _cdr)
