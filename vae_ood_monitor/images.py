"""Camera messages to RGB numpy images, without cv_bridge.

ROS 2 cv_bridge is not installable from PyPI and the PyPI `cv-bridge` is ROS 1 code that breaks on
numpy 2, so the two sensor_msgs image types are converted here directly. Works the same for rclpy
messages and for messages deserialized by `rosbags` (same field names).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
RAW_IMAGE_TYPE = "sensor_msgs/msg/Image"
IMAGE_TYPES = (COMPRESSED_IMAGE_TYPE, RAW_IMAGE_TYPE)

# encoding -> (channels, OpenCV conversion to RGB or None when already RGB)
_RAW_ENCODINGS: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
}


class FrameError(ValueError):
    """A camera frame that cannot be turned into an image; the message says why."""


def decode_compressed(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode JPEG/PNG bytes (sensor_msgs/CompressedImage.data) to an RGB uint8 image."""
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if buffer.size == 0:
        raise FrameError("empty compressed image")
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise FrameError(
            f"unreadable compressed image ({buffer.size} bytes, not a decodable JPEG/PNG)"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_raw(encoding: str, height: int, width: int, step: int, data: Any) -> np.ndarray:
    """Convert sensor_msgs/Image fields to an RGB uint8 image, honouring the row `step`."""
    if encoding not in _RAW_ENCODINGS:
        raise FrameError(
            f"unsupported encoding '{encoding}' (supported: {', '.join(_RAW_ENCODINGS)})"
        )
    if height <= 0 or width <= 0:
        raise FrameError(f"zero-size image ({width}x{height})")
    channels, conversion = _RAW_ENCODINGS[encoding]
    row_bytes = width * channels
    if step < row_bytes:
        raise FrameError(f"step {step} is smaller than width*channels = {row_bytes}")
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if buffer.size < step * height:
        raise FrameError(
            f"truncated image: {buffer.size} bytes, expected {step * height} "
            f"({width}x{height} {encoding})"
        )
    rows = buffer[: step * height].reshape(height, step)[:, :row_bytes]
    image = rows.reshape(height, width, channels)
    if conversion is None:
        return np.ascontiguousarray(image)
    return cv2.cvtColor(image, conversion)


def decode_message(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage or sensor_msgs/Image message to RGB uint8."""
    if hasattr(msg, "format"):
        return decode_compressed(msg.data)
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data)


# JPEG decoding at 1/2, 1/4 or 1/8 scale (libjpeg's scaled inverse DCT): a fraction of the cost
# of a full decode followed by a resize. Scale → (colour flag, grey flag).
# Colour straight as RGB (libjpeg's own channel order, no conversion afterwards: the same pixels).
_RGB = cv2.IMREAD_COLOR_RGB
_REDUCED_FLAGS = {
    1: (_RGB, cv2.IMREAD_GRAYSCALE),
    2: (cv2.IMREAD_REDUCED_COLOR_2 & ~cv2.IMREAD_COLOR | _RGB, cv2.IMREAD_REDUCED_GRAYSCALE_2),
    4: (cv2.IMREAD_REDUCED_COLOR_4 & ~cv2.IMREAD_COLOR | _RGB, cv2.IMREAD_REDUCED_GRAYSCALE_4),
    8: (cv2.IMREAD_REDUCED_COLOR_8 & ~cv2.IMREAD_COLOR | _RGB, cv2.IMREAD_REDUCED_GRAYSCALE_8),
}
DECODES = ("full", "reduced", "shared")


class FrameDecoder:
    """Camera messages to the image a model needs: RGB, or grey with `grey`.

    "full" decodes every frame at the camera's size (RGB, as `decode_message`). "reduced" decodes
    a compressed frame at the largest reduction (1/2, 1/4, 1/8) that still covers `size` (width,
    height), and grey straight from the JPEG luma when `grey`: a 640x480 JPEG for a 64x64 model
    decodes at 160x120. "shared" decodes as "reduced" but always in colour, and grey from that
    colour image (`cv2.cvtColor`, within a grey level of the luma): detectors in one process then
    share one decode per frame (`decode_once`), and a detector alone gets the same pixels. The
    reduction follows the previous frame's size (the first frame decodes in full), so a camera
    that changes resolution costs one frame at a wrong scale, not an error.
    """

    def __init__(self, decode: str = "full", size: tuple[int, int] = (1, 1), grey: bool = False):
        if decode not in DECODES:
            raise ValueError(f"decode must be one of {DECODES}, got '{decode}'")
        self.reduced = decode != "full"
        self.luma = grey and decode == "reduced"  # grey decoded by libjpeg, not converted
        self.size = size
        self.grey = grey
        self.scale = 1

    def _next_scale(self, decoded: np.ndarray) -> int:
        """The largest reduction of the frame just decoded that still covers `size`."""
        width, height = decoded.shape[1] * self.scale, decoded.shape[0] * self.scale
        fits = [
            s for s in _REDUCED_FLAGS if width // s >= self.size[0] and height // s >= self.size[1]
        ]
        return max(fits, default=1)

    def _scaled(self, msg: Any) -> bool:
        return self.reduced and hasattr(msg, "format")

    def key(self, msg: Any) -> tuple[object, ...]:
        """What `decoded(msg)` decodes: decoders with equal keys can share one decode."""
        return ("jpeg", self.scale, self.luma) if self._scaled(msg) else ("message",)

    def decoded(self, msg: Any) -> np.ndarray:
        """The frame as this decoder decodes it, before `image` makes it the model's image."""
        if not self._scaled(msg):
            return decode_message(msg)
        buffer = np.frombuffer(msg.data, dtype=np.uint8)
        if buffer.size == 0:
            raise FrameError("empty compressed image")
        image = cv2.imdecode(buffer, _REDUCED_FLAGS[self.scale][int(self.luma)])
        if image is None or image.size == 0:
            raise FrameError(
                f"unreadable compressed image ({buffer.size} bytes, not a decodable JPEG/PNG)"
            )
        return image

    def image(self, msg: Any, decoded: np.ndarray) -> np.ndarray:
        """The model's image of `msg` from `decoded` (this decoder's, or one of an equal `key`);
        adapts the reduction to the frame's size."""
        if self._scaled(msg):
            self.scale = self._next_scale(decoded)
        if self.grey and self.reduced and decoded.ndim == 3:
            return cv2.cvtColor(decoded, cv2.COLOR_RGB2GRAY)
        return decoded

    def __call__(self, msg: Any) -> np.ndarray:
        return self.image(msg, self.decoded(msg))


def decode_once(decoders: Sequence[FrameDecoder], msg: Any) -> list[np.ndarray]:
    """Each decoder's image of `msg`, the same as each alone would give, with one decode per
    distinct `key`: one for detectors that all decode "shared" (or all "full")."""
    decoded: dict[tuple[object, ...], np.ndarray] = {}
    images = []
    for decoder in decoders:
        key = decoder.key(msg)
        if key not in decoded:
            decoded[key] = decoder.decoded(msg)
        images.append(decoder.image(msg, decoded[key]))
    return images


@dataclass(frozen=True)
class SerializedCompressedImage:
    """A sensor_msgs/CompressedImage read from its serialized bytes: the fields the monitor uses,
    `data` a view into those bytes. Building the rclpy message (a Python object, an array copy
    of the JPEG) cost a detector more CPU per frame than parsing the few fields before `data`."""

    stamp_ns: int
    format: str
    data: memoryview


@dataclass(frozen=True)
class SerializedImage:
    """A sensor_msgs/Image read from its serialized bytes (see SerializedCompressedImage)."""

    stamp_ns: int
    height: int
    width: int
    encoding: str
    step: int
    data: memoryview


_CDR_ORDER = {0: ">", 1: "<"}  # encapsulation kind: 0x0000 CDR_BE, 0x0001 CDR_LE (ROS 2's)


def _cdr_aligned(at: int) -> int:
    """`at` rounded up to a 4-byte field boundary (CDR aligns relative to the payload, after the
    4-byte encapsulation header)."""
    return 4 + -(-(at - 4) // 4) * 4


def parse_serialized_image(
    serialized: bytes | memoryview, raw_image: bool = False
) -> SerializedCompressedImage | SerializedImage:
    """The fields of a serialized sensor_msgs CompressedImage (or Image with `raw_image`) in
    classic CDR (what ROS 2's RMWs write), walked without deserializing; FrameError for anything
    else or a truncated message."""
    view = memoryview(serialized)
    if len(view) < 12 or view[0] != 0 or view[1] not in _CDR_ORDER:
        raise FrameError("camera message is not a classic-CDR serialized image")
    order = _CDR_ORDER[view[1]]
    uint32 = struct.Struct(order + "I")

    def number(at: int) -> tuple[int, int]:
        at = _cdr_aligned(at)
        if at + 4 > len(view):
            raise FrameError(f"truncated camera message ({len(view)} bytes)")
        return uint32.unpack_from(view, at)[0], at + 4

    def text(at: int) -> tuple[str, int]:
        length, at = number(at)
        if at + length > len(view):
            raise FrameError(f"truncated camera message ({len(view)} bytes)")
        return bytes(view[at : at + max(length - 1, 0)]).decode("utf-8", "replace"), at + length

    sec, nanosec = struct.unpack_from(order + "iI", view, 4)
    stamp_ns = sec * 1_000_000_000 + nanosec
    _, position = text(12)  # header.frame_id
    if raw_image:
        height, position = number(position)
        width, position = number(position)
        encoding, position = text(position)
        step, position = number(position + 1)  # is_bigendian (one byte), then step
    else:
        image_format, position = text(position)
    length, position = number(position)  # data
    if position + length > len(view):
        raise FrameError(f"truncated camera message: {len(view) - position} of {length} data bytes")
    data = view[position : position + length]
    if raw_image:
        return SerializedImage(stamp_ns, height, width, encoding, step, data)
    return SerializedCompressedImage(stamp_ns, image_format, data)


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (rclpy or rosbags) to integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
