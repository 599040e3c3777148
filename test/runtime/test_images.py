"""Camera message decoding: both image types, row padding, and clear errors on bad frames."""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from vae_ood_monitor.images import FrameError, decode_compressed, decode_message, decode_raw


def test_raw_rgb_with_row_padding_round_trips(frames):
    rgb = frames[3]
    height, width = rgb.shape[:2]
    step = width * 3 + 5
    padded = np.zeros((height, step), np.uint8)
    padded[:, : width * 3] = rgb.reshape(height, -1)
    out = decode_raw("rgb8", height, width, step, padded.tobytes())
    assert np.array_equal(out, rgb)


@pytest.mark.parametrize(
    ("encoding", "convert"),
    [("bgr8", cv2.COLOR_RGB2BGR), ("rgba8", cv2.COLOR_RGB2RGBA), ("bgra8", cv2.COLOR_RGB2BGRA)],
)
def test_raw_colour_orders_come_back_as_rgb(frames, encoding, convert):
    rgb = frames[1]
    native = cv2.cvtColor(rgb, convert)
    height, width, channels = native.shape
    assert np.array_equal(
        decode_raw(encoding, height, width, width * channels, native.tobytes()), rgb
    )


def test_mono_becomes_three_channels():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = decode_raw("mono8", 3, 4, 4, grey.tobytes())
    assert out.shape == (3, 4, 3) and np.array_equal(out[..., 0], grey)


def test_compressed_jpeg_decodes_to_rgb(frames):
    rgb = frames[0]
    _, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
    )
    out = decode_message(SimpleNamespace(format="jpeg", data=jpeg.tobytes()))
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 3


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("yuv422", 2, 2, 4, bytes(8)), "unsupported encoding 'yuv422'"),
        (("rgb8", 0, 4, 12, b""), "zero-size image"),
        (("rgb8", 4, 4, 12, bytes(20)), "truncated image: 20 bytes, expected 48"),
        (("rgb8", 4, 4, 6, bytes(48)), "step 6 is smaller"),
    ],
)
def test_bad_raw_frames_say_why(args, reason):
    with pytest.raises(FrameError, match=reason):
        decode_raw(*args)


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff\xe0 not really a jpeg", bytes(1000)])
def test_bad_compressed_frames_say_why(data):
    with pytest.raises(FrameError, match="compressed image"):
        decode_compressed(data)
