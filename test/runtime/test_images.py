"""Camera message decoding: both image types, row padding, and clear errors on bad frames."""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from vae_ood_monitor.images import (
    FrameDecoder,
    FrameError,
    decode_compressed,
    decode_message,
    decode_once,
    decode_raw,
)

_RGB_FLAG = cv2.IMREAD_COLOR_RGB


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


def _jpeg_message(rgb: np.ndarray) -> SimpleNamespace:
    _, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
    )
    return SimpleNamespace(format="jpeg", data=jpeg.tobytes())


def _camera_frame() -> np.ndarray:
    """A smooth 640x480 picture: a gradient with a bright square."""
    rgb = np.zeros((480, 640, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 640, dtype=np.uint8)[None, :]
    rgb[..., 1], rgb[..., 2] = 120, 60
    rgb[200:280, 300:380] = 250
    return rgb


@pytest.mark.parametrize(
    ("size", "shape"),
    [
        ((64, 64), (120, 160)),
        ((88, 66), (120, 160)),
        ((200, 150), (240, 320)),
        ((640, 480), (480, 640)),
    ],
)
def test_reduced_decoding_picks_the_smallest_scale_that_covers_the_model(size, shape):
    message = _jpeg_message(_camera_frame())
    decoder = FrameDecoder("reduced", size)
    assert decoder(message).shape == (480, 640, 3), "the first frame decodes in full"
    reduced = decoder(message)
    assert reduced.shape == (*shape, 3)
    full = cv2.resize(decode_message(message), shape[::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 2.0, "the same picture"


def test_reduced_grey_decoding_is_the_luma_and_full_decoding_is_unchanged():
    message = _jpeg_message(_camera_frame())
    grey = FrameDecoder("reduced", (88, 66), grey=True)
    grey(message)
    luma = grey(message)
    assert luma.shape == (120, 160)
    expected = cv2.resize(
        cv2.cvtColor(decode_message(message), cv2.COLOR_RGB2GRAY),
        (160, 120),
        interpolation=cv2.INTER_AREA,
    )
    assert np.abs(luma.astype(int) - expected.astype(int)).mean() < 2.0
    assert np.array_equal(
        FrameDecoder("full", (88, 66), grey=True)(message), decode_message(message)
    )


def test_reduced_decoding_of_a_raw_image_and_of_bad_bytes(frames):
    rgb = frames[0]
    height, width = rgb.shape[:2]
    raw = SimpleNamespace(
        encoding="rgb8", height=height, width=width, step=width * 3, data=rgb.tobytes()
    )
    assert np.array_equal(
        FrameDecoder("reduced", (8, 8), grey=True)(raw), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    )
    with pytest.raises(FrameError, match="unreadable compressed image"):
        FrameDecoder("reduced", (8, 8))(SimpleNamespace(format="jpeg", data=b"\xff\xd8 not a jpeg"))
    with pytest.raises(FrameError, match="empty"):
        FrameDecoder("reduced", (8, 8))(SimpleNamespace(format="jpeg", data=b""))
    with pytest.raises(ValueError, match="decode must be one of"):
        FrameDecoder("half")


def _serialized(message_type: type, stamp: tuple[int, int], **fields: object) -> bytes:
    from builtin_interfaces.msg import Time
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    header = Header(stamp=Time(sec=stamp[0], nanosec=stamp[1]), frame_id="camera_optical")
    return serialize_message(message_type(header=header, **fields))


@pytest.mark.parametrize("frame_id_pad", ["", "x", "xy", "xyz"])
def test_a_serialized_compressed_image_parses_to_the_message_and_decodes_identically(
    frame_id_pad,
):
    """The detectors take camera messages as serialized bytes (rclpy `raw=True`) and parse the
    fields themselves: stamp and JPEG bytes equal the deserialized message's, and the model's
    image decodes bit-identically, for every string alignment."""
    from builtin_interfaces.msg import Time
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import CompressedImage
    from std_msgs.msg import Header

    from vae_ood_monitor.images import SerializedCompressedImage, parse_serialized_image

    jpeg = _jpeg_message(_camera_frame()).data
    message = CompressedImage(
        header=Header(stamp=Time(sec=1765000000, nanosec=33_333_333), frame_id=frame_id_pad),
        format="jpeg" + frame_id_pad,
        data=jpeg,
    )
    serialized = serialize_message(message)
    parsed = parse_serialized_image(serialized)
    assert isinstance(parsed, SerializedCompressedImage)
    assert parsed.stamp_ns == 1765000000 * 10**9 + 33_333_333
    assert parsed.format == "jpeg" + frame_id_pad and bytes(parsed.data) == jpeg
    rclpy_message = deserialize_message(serialized, CompressedImage)
    for grey, size in ((False, (64, 64)), (True, (88, 66))):
        from_message, from_bytes = (
            FrameDecoder("reduced", size, grey),
            FrameDecoder("reduced", size, grey),
        )
        for _ in range(2):  # the first frame decodes in full, the next ones reduced
            assert np.array_equal(from_message(rclpy_message), from_bytes(parsed))


def test_a_serialized_raw_image_parses_to_its_fields(frames):
    from sensor_msgs.msg import Image

    from vae_ood_monitor.images import SerializedImage, parse_serialized_image

    rgb = frames[2]
    height, width = rgb.shape[:2]
    serialized = _serialized(
        Image,
        (7, 5),
        height=height,
        width=width,
        encoding="bgr8",
        step=width * 3,
        data=cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).tobytes(),
    )
    parsed = parse_serialized_image(serialized, raw_image=True)
    assert isinstance(parsed, SerializedImage)
    assert (parsed.stamp_ns, parsed.height, parsed.width, parsed.encoding, parsed.step) == (
        7_000_000_005,
        height,
        width,
        "bgr8",
        width * 3,
    )
    assert np.array_equal(FrameDecoder("reduced", (8, 8))(parsed), rgb)


def test_bad_serialized_images_say_why():
    from sensor_msgs.msg import CompressedImage

    from vae_ood_monitor.images import parse_serialized_image

    serialized = _serialized(CompressedImage, (1, 2), format="jpeg", data=bytes(100))
    with pytest.raises(FrameError, match="not a classic-CDR"):
        parse_serialized_image(b"\x00\x07\x00\x00" + serialized[4:])
    with pytest.raises(FrameError, match="truncated camera message: 50 of 100 data bytes"):
        parse_serialized_image(serialized[:-50])
    with pytest.raises(FrameError, match="truncated camera message"):
        parse_serialized_image(serialized[:20])


@pytest.mark.parametrize(
    ("size", "flag"),
    [
        ((320, 240), cv2.IMREAD_REDUCED_COLOR_2),
        ((64, 64), cv2.IMREAD_REDUCED_COLOR_4),
        ((32, 32), cv2.IMREAD_REDUCED_COLOR_8),
    ],
)
def test_reduced_colour_decoding_is_libjpegs_bgr_decode_with_channels_swapped(size, flag):
    """The models' inputs stay bit-identical: RGB asked of libjpeg equals the BGR decode (the
    earlier path) converted to RGB, at full size (first frame) and at the reduced scale."""
    message = _jpeg_message(_camera_frame() // 3 + np.arange(640, dtype=np.uint8)[None, :, None])
    buffer = np.frombuffer(message.data, np.uint8)
    decoder = FrameDecoder("reduced", size)
    for expected in (cv2.IMREAD_COLOR, flag):
        bgr = cv2.imdecode(buffer, expected)
        assert np.array_equal(decoder(message), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_shared_decoding_gives_the_grey_of_the_colour_decode_from_one_decode(monkeypatch):
    """ "shared": the β-VAE's image is the reduced colour decode, the flow's its cvtColor grey,
    bit for bit, whether each detector decodes alone or both share one decode per frame."""
    message = _jpeg_message(_camera_frame() // 3 + np.arange(640, dtype=np.uint8)[None, :, None])
    buffer = np.frombuffer(message.data, np.uint8)
    colour = cv2.imdecode(buffer, cv2.IMREAD_REDUCED_COLOR_4 & ~cv2.IMREAD_COLOR | _RGB_FLAG)
    alone = {
        "bvae": FrameDecoder("shared", (64, 64)),
        "flow": FrameDecoder("shared", (88, 66), grey=True),
    }
    together = [FrameDecoder("shared", (64, 64)), FrameDecoder("shared", (88, 66), grey=True)]
    decodes = []
    real_imdecode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decodes.append(a[1]) or real_imdecode(*a))
    for _ in range(2):  # the first frame decodes in full, the next at 1/4
        decodes.clear()
        bvae, flow = decode_once(together, message)
        assert len(decodes) == 1, "one decode for both"
        assert np.array_equal(bvae, alone["bvae"](message))
        assert np.array_equal(flow, alone["flow"](message))
    assert np.array_equal(bvae, colour)
    assert np.array_equal(flow, cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY))
    reduced, luma = FrameDecoder("reduced", (64, 64)), FrameDecoder("reduced", (88, 66), grey=True)
    reduced(message), luma(message)
    assert np.array_equal(bvae, reduced(message)), "the β-VAE's pixels are unchanged"
    assert np.abs(flow.astype(int) - luma(message).astype(int)).max() <= 6, "about the luma"


def test_decoders_that_cannot_share_decode_each_for_itself():
    """ "reduced" colour and luma are two decodes; decode_once gives each what it gives alone."""
    message = _jpeg_message(_camera_frame())
    together = [FrameDecoder("reduced", (64, 64)), FrameDecoder("reduced", (88, 66), grey=True)]
    alone = [FrameDecoder("reduced", (64, 64)), FrameDecoder("reduced", (88, 66), grey=True)]
    for _ in range(2):
        shared = decode_once(together, message)
        for image, decoder in zip(shared, alone):
            assert np.array_equal(image, decoder(message))
    assert shared[0].ndim == 3 and shared[1].ndim == 2


@pytest.mark.parametrize("decode", ["shared", "reduced", "full"])
def test_a_raw_image_is_converted_once_for_every_decoder(frames, decode):
    """A raw sensor_msgs/Image has no scale to reduce: one conversion serves both detectors, and
    each gets what it gets alone."""
    rgb = frames[2]
    height, width = rgb.shape[:2]
    raw = SimpleNamespace(
        encoding="bgr8",
        height=height,
        width=width,
        step=width * 3,
        data=cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).tobytes(),
    )
    together = [FrameDecoder(decode, (32, 32)), FrameDecoder(decode, (80, 60), grey=True)]
    alone = [FrameDecoder(decode, (32, 32)), FrameDecoder(decode, (80, 60), grey=True)]
    assert len({decoder.key(raw) for decoder in together}) == 1
    for image, decoder in zip(decode_once(together, raw), alone):
        assert np.array_equal(image, decoder(raw))
