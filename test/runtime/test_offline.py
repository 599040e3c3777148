"""Offline replays stop where the robot would: detector decisions plus the frozen-camera check."""

import numpy as np
import pytest
from support import FPS, synthetic_frames, tiny_bundle, write_ros2_bag

from vae_ood_monitor.decision import DecisionParams
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.offline import score_bag, score_frames
from vae_ood_monitor.safety import FrozenCameraWatch

LIVE, HELD = 20, 20  # live frames, then the driver repeats the last one
LIMIT_S = 0.31  # off the 30 fps frame grid, so the expected frame does not hinge on rounding
NEVER = DecisionParams(
    threshold=1e9
)  # detectors that never flag: every stop below is the camera check's


@pytest.fixture(scope="module")
def detectors(tmp_path_factory) -> dict[str, OODDetector]:
    root = tmp_path_factory.mktemp("offline")
    return {
        "bvae": OODDetector.from_path(tiny_bundle("bvae_tiny", root, NEVER)),
        "flow": OODDetector.from_path(tiny_bundle("flow_tiny", root, NEVER)),
    }


def _frozen_stream() -> list[np.ndarray]:
    live = synthetic_frames(LIVE)
    return live + [live[-1].copy() for _ in range(HELD)]


def _first_frozen_frame(limit_s: float) -> int:
    """The first repeat more than `limit_s` after the held frame first arrived."""
    return LIVE - 1 + int(np.floor(limit_s * FPS)) + 1


def test_repeated_frames_stop_after_the_limit_not_before(detectors):
    frames = _frozen_stream()
    times = np.arange(len(frames)) / FPS
    results = score_frames(
        frames, detectors, times_s=times, frozen_watch=FrozenCameraWatch(LIMIT_S)
    )
    first = _first_frozen_frame(LIMIT_S)
    assert not any(flags.any() for flags in results.flags.values())
    assert np.flatnonzero(results.frozen).tolist() == list(range(first, len(frames)))
    assert np.array_equal(results.fused_flags, results.frozen)
    assert not score_frames(frames, detectors).fused_flags.any(), "without a watch: detectors only"


def test_a_chunked_replay_keeps_counting_across_chunks(detectors):
    frames = _frozen_stream()
    times = np.arange(len(frames)) / FPS
    watch, cut = FrozenCameraWatch(LIMIT_S), LIVE + 3
    head = score_frames(frames[:cut], detectors, times_s=times[:cut], frozen_watch=watch)
    tail = score_frames(
        frames[cut:], detectors, reset=False, times_s=times[cut:], frozen_watch=watch
    )
    whole = score_frames(frames, detectors, times_s=times, frozen_watch=FrozenCameraWatch(LIMIT_S))
    assert np.array_equal(np.concatenate([head.frozen, tail.frozen]), whole.frozen)


def test_a_bag_replay_checks_repeats_by_arrival_time(detectors, tmp_path):
    bag = write_ros2_bag(tmp_path / "frozen", _frozen_stream(), compressed=False)
    fused = np.concatenate(
        [
            results.fused_flags
            for _, results in score_bag(bag, detectors, chunk=16, frozen_s=LIMIT_S)
        ]
    )
    assert np.flatnonzero(fused).tolist() == list(range(_first_frozen_frame(LIMIT_S), LIVE + HELD))
    off = np.concatenate(
        [results.fused_flags for _, results in score_bag(bag, detectors, chunk=16)]
    )
    assert not off.any(), "frozen_s=0: the check is off"


def test_the_watch_needs_a_time_per_frame(detectors):
    with pytest.raises(ValueError, match="one arrival time per frame"):
        score_frames(synthetic_frames(3), detectors, frozen_watch=FrozenCameraWatch(LIMIT_S))


def test_thinned_keeps_every_nth_frame_with_honest_stamps_and_drops_a_share(tmp_path):
    from vae_ood_monitor.bags import read_camera_messages
    from vae_ood_monitor.offline import thinned

    bag = write_ros2_bag(tmp_path / "bag", synthetic_frames(60))
    recorded = {m.index: m.stamp_ns for m in read_camera_messages(bag)}
    every_2nd = list(thinned(read_camera_messages(bag), every=2))
    assert [m.index for m in every_2nd] == list(range(0, 60, 2))
    assert all(m.stamp_ns == recorded[m.index] for m in every_2nd), "stamps stay honest"

    def lost(seed: int) -> list[int]:
        return [m.index for m in thinned(read_camera_messages(bag), drop=0.25, seed=seed)]

    assert 30 < len(lost(3)) < 60 and lost(3) == lost(3) != lost(4), "seeded"
    faster = list(thinned(read_camera_messages(bag), every=2, speed=2.0))
    gaps = np.diff([m.stamp_ns for m in faster])
    assert np.allclose(gaps, 1e9 / FPS, atol=2), "a 2x speed-up: every 2nd frame, 1/30 s apart"
    with pytest.raises(ValueError, match="every >= 1"):
        list(thinned(read_camera_messages(bag), every=0))


def test_score_bag_passes_the_stamps_to_the_flow_detector(tmp_path):
    """A 15 Hz replay scores differently with its stamps (motion per second, as the node) than
    with the frames taken as consecutive 30 Hz ones (`stamps=False`, the behaviour before)."""
    from vae_ood_monitor.offline import thinned

    bag = write_ros2_bag(tmp_path / "bag", synthetic_frames(40))
    flow = {"flow": OODDetector.from_path(tiny_bundle("flow_tiny", tmp_path, NEVER))}

    def scores(stamps: bool) -> np.ndarray:
        return np.concatenate(
            [
                r.scores["flow"]
                for _, r in score_bag(
                    bag, flow, select=lambda m: thinned(m, every=2), stamps=stamps
                )
            ]
        )

    with_stamps, per_frame = scores(True), scores(False)
    assert with_stamps.shape == per_frame.shape == (20,)
    assert np.isfinite(with_stamps).sum() > 10
    assert not np.allclose(with_stamps, per_frame, equal_nan=True)


def test_a_changed_frame_reaches_the_detectors_as_the_camera_sends_it(tmp_path):
    """With a frame variation the detectors still decode a JPEG as onboard (reduced scale), not
    the changed pixels at the camera's size: the replay measures what the robot runs."""
    from vae_ood_monitor.variations import exposure

    bag = write_ros2_bag(tmp_path / "bag", synthetic_frames(8, width=640, height=480))
    bvae = {"bvae": OODDetector.from_path(tiny_bundle("bvae_tiny", tmp_path, NEVER))}
    as_recorded = np.concatenate([r.scores["bvae"] for _, r in score_bag(bag, bvae)])
    assert bvae["bvae"].decode.scale > 1, "a reduced decode of the recorded JPEG"
    bvae["bvae"].decode.scale = 1
    darker = np.concatenate(
        [r.scores["bvae"] for _, r in score_bag(bag, bvae, transform=exposure(0.5))]
    )
    assert bvae["bvae"].decode.scale > 1, "a reduced decode of the changed frame's JPEG"
    assert darker.shape == as_recorded.shape and not np.allclose(darker, as_recorded)
