"""Safety-stop logic without ROS: fusion, silence, latching and reset rules."""

import pytest

from vae_ood_monitor.safety import SafetyConfig, SafetyStop, State


def _live(stop, now, bvae=False, flow=False):
    stop.on_camera(now)
    stop.on_decision("bvae", bvae, now)
    stop.on_decision("flow", flow, now)
    return stop.update(now)


def test_waits_for_every_input_then_drives():
    stop = SafetyStop(SafetyConfig())
    stop.on_camera(0.0)
    stop.on_decision("bvae", False, 0.0)
    assert not stop.update(0.0) and stop.state is State.WAITING and stop.stopped
    stop.on_decision("flow", False, 0.1)
    stop.update(0.1)
    assert stop.state is State.RUNNING and not stop.stopped


def test_ood_latches_until_a_reset_while_in_distribution():
    stop = SafetyStop(SafetyConfig())
    _live(stop, 0.0)
    assert _live(stop, 0.1, bvae=True) and stop.stopped
    assert "out of distribution: bvae" in stop.stop_reasons[0]
    accepted, reason = stop.request_reset(0.15)
    assert not accepted and "out of distribution" in reason
    _live(stop, 0.2)  # back in distribution: still latched
    assert stop.state is State.STOPPED
    assert stop.request_reset(0.2) == (True, "stop released")
    assert stop.state is State.RUNNING


@pytest.mark.parametrize("silent", ["camera", "bvae", "flow"])
def test_silence_past_the_timeout_stops(silent):
    stop = SafetyStop(SafetyConfig(timeout_s=0.5))
    _live(stop, 0.0)
    now = 0.6
    if silent != "camera":
        stop.on_camera(now)
    for name in ("bvae", "flow"):
        if name != silent:
            stop.on_decision(name, False, now)
    assert stop.update(now)
    assert any(reason.startswith(f"{silent}: silent") for reason in stop.stop_reasons)
    accepted, reason = stop.request_reset(now)
    assert not accepted and f"{silent}: silent" in reason


def test_detector_error_stops():
    stop = SafetyStop(SafetyConfig())
    _live(stop, 0.0)
    stop.on_error("flow", "15 bad frames in a row")
    assert stop.update(0.1) and "flow: error: 15 bad frames in a row" in stop.stop_reasons


@pytest.mark.parametrize(
    ("fusion", "k", "votes", "stops"),
    [
        ("any", 1, (True, False), True),
        ("all", 1, (True, False), False),
        ("all", 1, (True, True), True),
        ("k_of_n", 2, (False, True), False),
        ("k_of_n", 1, (False, True), True),
    ],
)
def test_fusion_rules(fusion, k, votes, stops):
    stop = SafetyStop(SafetyConfig(fusion=fusion, k=k))
    _live(stop, 0.0)
    assert _live(stop, 0.1, *votes) is stops


def test_ood_at_start_up_latches_once_everyone_is_heard():
    stop = SafetyStop(SafetyConfig())
    assert _live(stop, 0.0, bvae=True) and stop.state is State.STOPPED


def test_reset_when_running_is_a_no_op():
    stop = SafetyStop(SafetyConfig())
    _live(stop, 0.0)
    assert stop.request_reset(0.0) == (True, "not stopped (running)")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fusion": "majority"}, "fusion"),
        ({"detectors": ()}, "at least one"),
        ({"fusion": "k_of_n", "k": 3}, "k must"),
        ({"timeout_s": -0.1}, "timeout"),
        ({"frozen_s": -1.0}, "frozen_s"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SafetyConfig(**kwargs)


def test_a_frozen_camera_stops_but_a_slow_one_does_not():
    stop = SafetyStop(SafetyConfig(frozen_s=0.5))
    for step in range(5):  # a live camera: every frame differs
        now = step * 0.1
        stop.on_camera(now, fingerprint=step)
        stop.on_decision("bvae", False, now)
        stop.on_decision("flow", False, now)
        stop.update(now)
    assert stop.state is State.RUNNING
    for step in range(5, 12):  # the driver repeats its last buffer
        now = step * 0.1
        stop.on_camera(now, fingerprint=4)
        stop.on_decision("bvae", False, now)
        stop.on_decision("flow", False, now)
        if stop.update(now):
            break
    assert stop.stopped and any(reason.startswith("camera: frozen") for reason in stop.stop_reasons)
    assert now > 0.4 + 0.5, "not before frozen_s of repeated frames"
    accepted, reason = stop.request_reset(now)
    assert not accepted and "camera: frozen" in reason
    stop.on_camera(now + 0.05, fingerprint=99)  # live again
    assert stop.request_reset(now + 0.05)[0]

    slow = SafetyStop(SafetyConfig(frozen_s=0.5, timeout_s=2.0))
    for step in range(4):  # one new frame a second: slow, not frozen
        _live(slow, float(step))
        slow.on_camera(float(step), fingerprint=step)
        assert not slow.update(float(step)) and slow.state is State.RUNNING


def test_the_frozen_check_can_be_switched_off():
    stop = SafetyStop(SafetyConfig(frozen_s=0.0))
    for step in range(20):
        stop.on_camera(step * 0.1, fingerprint=7)
        stop.on_decision("bvae", False, step * 0.1)
        stop.on_decision("flow", False, step * 0.1)
        assert not stop.update(step * 0.1)


def test_a_zero_timeout_disables_the_silence_check():
    stop = SafetyStop(SafetyConfig(timeout_s=0.0))
    _live(stop, 0.0)
    assert not stop.update(100.0) and stop.state is State.RUNNING, "silent for 100 s: no stop"
    stop.on_decision("bvae", True, 100.0)
    assert stop.update(100.0), "an OOD decision still stops"


def test_the_reason_says_why_the_wheels_stand_still():
    stop = SafetyStop(SafetyConfig())
    assert stop.reason == "waiting for camera, bvae, flow"
    stop.on_camera(0.0)
    stop.on_decision("bvae", False, 0.0)
    stop.update(0.0)
    assert stop.reason == "waiting for flow"
    _live(stop, 0.1)
    assert stop.reason == ""
    _live(stop, 0.2, flow=True)
    assert stop.reason == "out of distribution: flow (any)"
    _live(stop, 0.3)
    stop.request_reset(0.3)
    assert stop.reason == ""


def _serialized(msg_type, stamp_s: int, **fields) -> bytes:
    from builtin_interfaces.msg import Time
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    header = Header(stamp=Time(sec=stamp_s, nanosec=123), frame_id="camera")
    return serialize_message(msg_type(header=header, **fields))


def test_the_message_fingerprint_ignores_the_stamp_and_sees_new_frames():
    """The safety stop hashes serialized messages: a buffer republished with fresh stamps, or an
    identical frame JPEG-encoded again (bit-identical, as before), is the same frame; live ones
    differ — for JPEG (hashed whole) and for large raw frames (sampled)."""
    import cv2
    import numpy as np
    from sensor_msgs.msg import CompressedImage, Image

    from vae_ood_monitor.safety import MAX_HASHED_BYTES, message_fingerprint

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(2)]

    def jpeg(frame: np.ndarray, stamp_s: int) -> bytes:
        data = cv2.imencode(".jpg", frame)[1].tobytes()
        return _serialized(CompressedImage, stamp_s, format="jpeg", data=data)

    def raw(frame: np.ndarray, stamp_s: int) -> bytes:
        fields = {"height": 480, "width": 640, "encoding": "rgb8", "step": 1920}
        return _serialized(Image, stamp_s, data=frame.tobytes(), **fields)

    for encode, is_raw in ((jpeg, False), (raw, True)):

        def fingerprint(serialized: bytes, is_raw: bool = is_raw) -> int | None:
            return message_fingerprint(serialized, is_raw)

        same = fingerprint(encode(frames[0], 1))
        assert same is not None and same == fingerprint(encode(frames[0], 2))
        assert same != fingerprint(encode(frames[1], 1))
        # alignment padding after the strings, which some serializers leave uninitialised
        garbled = bytearray(encode(frames[0], 3))
        for at in (23, 33, 34, 35) if not is_raw else (23, 42, 43):
            garbled[at] = 0xAB
        assert fingerprint(bytes(garbled)) == same
    noisy = np.clip(frames[0].astype(int) + rng.integers(-2, 3, frames[0].shape), 0, 255)
    assert message_fingerprint(raw(frames[0], 1), True) != message_fingerprint(
        raw(noisy.astype(np.uint8), 1), True
    ), "a live sensor's noise changes the sampled bytes"
    assert len(raw(frames[0], 1)) > MAX_HASHED_BYTES, "the raw frame is sampled"
    assert message_fingerprint(b"\x00\x07\x00\x00" + bytes(100)) is None, "not classic CDR"


def test_a_serialized_decision_reads_as_its_value_and_an_unreadable_one_as_stop():
    """The safety stop takes the detectors' std_msgs/Bool decisions serialized."""
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Bool

    from vae_ood_monitor.safety import serialized_bool

    assert serialized_bool(serialize_message(Bool(data=True))) is True
    assert serialized_bool(serialize_message(Bool(data=False))) is False
    assert serialized_bool(b"\x00\x01\x00") is True, "too short to hold a value: stop"
