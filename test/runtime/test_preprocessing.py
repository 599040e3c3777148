"""Flow preprocessing variants: the cheap grey-first resize, DIS presets, old bundles' defaults."""

import cv2
import numpy as np
import pytest
from support import synthetic_frames

from vae_ood_monitor.preprocessing import (
    FlowPreprocessing,
    FlowStacker,
    ImagePreprocessing,
    _whole_factor_area,
)


def _camera_frames(count: int) -> list[np.ndarray]:
    """640x480 frames (a Duckiebot camera's size) with texture, so area averaging matters."""
    noise = np.random.default_rng(0).integers(0, 40, (480, 640, 3), dtype=np.uint8)
    return [
        cv2.resize(f, (640, 480), interpolation=cv2.INTER_NEAREST) + noise
        for f in synthetic_frames(count)
    ]


def test_whole_factor_step_takes_the_largest_exact_divisor():
    grey = np.zeros((480, 640), np.uint8)
    assert _whole_factor_area(grey, (96, 72)).shape == (
        96,
        128,
    )  # 640/96 = 6.7: 5 divides 640 and 480, 6 does not
    assert _whole_factor_area(grey, (160, 120)).shape == (120, 160)
    assert _whole_factor_area(grey, (600, 400)).shape == (
        480,
        640,
    )  # no whole factor fits: unchanged


@pytest.mark.parametrize("width, height", [(160, 120), (120, 90), (96, 72)])
def test_grey_stepped_resize_is_close_to_the_papers_order(width, height):
    """Same picture, rounding and area weights aside: a model must still be trained on the one it
    runs."""
    rgb = _camera_frames(1)[0]
    area = FlowStacker(
        FlowPreprocessing(width=width, height=height, crop=(0, 0, width, height), clahe=False)
    )._grey(rgb)
    stepped = FlowStacker(
        FlowPreprocessing(
            width=width,
            height=height,
            crop=(0, 0, width, height),
            clahe=False,
            resize="grey_stepped",
        )
    )._grey(rgb)
    assert area.shape == stepped.shape == (height, width)
    difference = np.abs(area.astype(int) - stepped.astype(int))
    assert difference.mean() < 3.0
    assert (width, height) == (160, 120) or difference.max() > 0, (
        "a fractional step is not bit-identical"
    )


@pytest.mark.parametrize(
    "method, preset, resize",
    [
        ("farneback", "ultrafast", "grey_stepped"),
        ("dis", "ultrafast", "grey_stepped"),
        ("dis", "fast", "grey_stepped"),
        ("dis", "medium", "grey_stepped"),
        ("farneback", "ultrafast", "area"),
    ],
)
def test_every_flow_variant_sees_the_square_move_right(method, preset, resize):
    prep = FlowPreprocessing(
        width=96,
        height=72,
        crop=(8, 4, 80, 64),
        stack=2,
        max_flow=4.8,
        method=method,
        dis_preset=preset,
        resize=resize,
    )
    stacker = FlowStacker(prep)
    outputs = [stacker.push(rgb) for rgb in _camera_frames(4)]
    assert outputs[:2] == [None, None]
    horizontal, vertical = outputs[-1]
    assert horizontal.shape == vertical.shape == (2, 64, 80)
    assert horizontal.max() > 0.2 and horizontal.max() > 2 * np.abs(vertical).max(), (
        "the square moves right, not up or down"
    )


@pytest.mark.parametrize(
    "field, value", [("method", "lucas"), ("dis_preset", "slow"), ("resize", "cubic")]
)
def test_unknown_flow_options_are_refused_with_the_choices(field, value):
    with pytest.raises(ValueError, match=f"got '{value}'"):
        FlowPreprocessing(**{field: value})


@pytest.mark.parametrize("winsize", [1, 2, 7.5, True])
def test_a_farneback_window_below_3_pixels_or_not_whole_is_refused(winsize):
    with pytest.raises(
        ValueError, match=f"winsize must be an integer of at least 3 pixels, got {winsize!r}"
    ):
        FlowPreprocessing(winsize=winsize)


def test_a_smaller_farneback_window_keeps_sensor_noise_in_the_flow():
    """Fresh per-pixel noise on every frame of a still scene: a 15-pixel window averages it into
    near-zero flow, a smaller one passes more of it on (why flow students may take a smaller
    window)."""
    rng = np.random.default_rng(0)
    scene = np.tile(np.linspace(0, 255, 640, dtype=np.float32), (480, 1))[..., None].repeat(
        3, axis=2
    )
    frames = [
        np.clip(scene + rng.normal(0, 96, scene.shape), 0, 255).astype(np.uint8) for _ in range(3)
    ]

    def flow_energy(winsize: int) -> float:
        stacker = FlowStacker(
            FlowPreprocessing(
                width=88,
                height=66,
                crop=(4, 1, 80, 64),
                stack=2,
                max_flow=4.4,
                resize="grey_stepped",
                winsize=winsize,
            )
        )
        horizontal, vertical = [stacker.push(rgb) for rgb in frames][-1]
        return float(np.abs(horizontal).mean() + np.abs(vertical).mean())

    assert flow_energy(5) > 1.5 * flow_energy(15)


def test_bundles_written_before_the_options_keep_their_behaviour():
    old = {
        "kind": "flow",
        "width": 120,
        "height": 90,
        "crop": [4, 5, 112, 80],
        "stack": 6,
        "method": "farneback",
        "max_flow": 6.0,
        "clahe": True,
    }
    prep = FlowPreprocessing.from_dict(old)
    assert prep.resize == "area" and prep.dis_preset == "ultrafast" and prep.winsize == 15
    assert FlowPreprocessing.from_dict(prep.to_dict()) == prep


def test_nearest_image_input_keeps_sensor_noise_that_area_averages_away():
    """Per-pixel noise on a flat grey camera frame: the area resize averages ~100 camera pixels into
    each input pixel, nearest sampling passes single pixels through at full strength."""
    rng = np.random.default_rng(0)
    noisy = np.clip(128 + rng.normal(0, 64, (480, 640, 3)), 0, 255).astype(np.uint8)
    area, nearest = (
        ImagePreprocessing(64, 64)(noisy),
        ImagePreprocessing(64, 64, interpolation="nearest")(noisy),
    )
    assert area.shape == nearest.shape == (3, 64, 64)
    assert nearest.std() > 0.2
    assert area.std() < 0.05


def test_unknown_image_interpolation_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="one of \\('area', 'nearest'\\), got 'cubic'"):
        ImagePreprocessing(64, 64, interpolation="cubic")
