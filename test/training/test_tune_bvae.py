"""training.tune_bvae: the augmentation draws from the normal table's ranges, tuning makes the
encoder's features invariant to them while the bundle keeps its score and decision, and scenery
pairs are matched drive for drive and frame for frame."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from support import synthetic_frames, tiny_bundle
from training_support import build_image_bundle, write_dataset

from training.adapt.encoders import run_onnx
from training.dataset import DatasetError, episodes
from training.device import setup
from training.invariance import write_tuned_bundle
from training.tune_bvae import PhotometricRanges, TuningFrames, _pairs, augment, tune, tuning_frames
from vae_ood_monitor.bundle import BUNDLE_FILE, load_bundle

RNG_SEED = 3


def test_augment_draws_gain_within_the_normal_range_and_can_leave_frames_alone():
    grey = np.full((400, 3, 8, 8), 100, np.uint8)
    only_gain = PhotometricRanges(white_balance=0.0, noise_sigma=0.0, unchanged_share=0.0)
    means = augment(grey, np.random.default_rng(RNG_SEED), only_gain).mean(axis=(1, 2, 3)) * 255
    assert means.min() >= 70 - 0.5 and means.max() <= 140 + 0.5
    assert means.min() < 75 and means.max() > 135  # the whole range is drawn
    untouched = augment(grey, np.random.default_rng(0), PhotometricRanges(unchanged_share=1.0))
    assert np.array_equal(untouched, grey / np.float32(255.0))


def test_augment_changes_red_and_blue_the_opposite_ways():
    grey = np.full((200, 3, 4, 4), 100, np.uint8)
    ranges = PhotometricRanges(gain=(1.0, 1.0), contrast=(1.0, 1.0), noise_sigma=0.0)
    ranges = PhotometricRanges(**{**ranges.__dict__, "unchanged_share": 0.0})
    out = augment(grey, np.random.default_rng(RNG_SEED), ranges)[:, :, 0, 0] * 255
    red, green, blue = out.T
    assert np.allclose(green, 100)
    assert np.allclose(red - 100, 100 - blue, atol=1.0)  # rounding
    assert np.abs(red - 100).max() <= 10.5


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("photometric")
    _, source = build_image_bundle(root / "source")
    frames = [cv2.resize(f, (32, 32)) for f in synthetic_frames(96)]
    images = np.stack(frames).transpose(0, 3, 1, 2).copy()
    encoder, history = tune(
        load_bundle(source),
        TuningFrames(images, images),
        root / "work" / "image.onnx",
        40,
        PhotometricRanges(),
        setup("cpu"),
        learning_rate=3e-3,
    )
    bundle = write_tuned_bundle(
        source, {"image": encoder}, root / "tuned", "normal_tuning", {"frames": len(images)}
    )
    return source, bundle, images, history


def _deviation(encoder, images: np.ndarray, gain: float, reference: dict) -> float:
    """Mean |feature change| under an exposure gain, per feature in units of its spread over
    the clean frames (as the tuning's loss measures it)."""
    changed = np.clip(images.astype(np.float32) * gain, 0, 255).round() / 255
    out = run_onnx(encoder, changed.astype(np.float32), 1)
    spreads = {k: v.std(axis=0) + 0.1 * np.median(v.std(axis=0)) for k, v in reference.items()}
    return float(np.mean([(np.abs(out[k] - v) / spreads[k]).mean() for k, v in reference.items()]))


def test_tuning_learns_features_that_exposure_changes_move_less(tuned):
    source, bundle, images, history = tuned
    assert history[-1] < history[0]
    clean = images.astype(np.float32) / 255
    reference = run_onnx(load_bundle(source).encoders["image"], clean, 1)
    for gain in (0.7, 1.4):
        before = _deviation(load_bundle(source).encoders["image"], images, gain, reference)
        after = _deviation(load_bundle(bundle).encoders["image"], images, gain, reference)
        assert after < 0.5 * before, (gain, before, after)


def test_tuned_bundle_keeps_score_calibration_and_decision_and_records_its_tuning(tuned):
    source, bundle, _, _ = tuned
    old = json.loads((source / BUNDLE_FILE).read_text())
    new = json.loads((bundle / BUNDLE_FILE).read_text())
    for key in ("score", "calibration_scores", "decision", "preprocessing"):
        assert new[key] == old[key]
    assert new["provenance"]["normal_tuning"] == {"frames": 96}
    assert (bundle / "image.onnx").read_bytes() != (source / "image.onnx").read_bytes()
    load_bundle(bundle)  # checksums verified


def test_scenery_pairs_match_by_drive_and_frame_and_a_mismatch_is_refused(tmp_path):
    specs = [("train_id_001", "id", 30.0, 20, None), ("train_id_002", "id", 30.0, 30, None)]
    decorated = write_dataset(tmp_path / "decorated", specs)
    plain = write_dataset(tmp_path / "plain", specs)
    prep = load_bundle(tiny_bundle("bvae_tiny", tmp_path)).preprocessing
    pairs = _pairs(decorated, plain)
    assert [(a.name, b.name) for a, b in pairs] == [("train_id_001",) * 2, ("train_id_002",) * 2]
    plain_drives = episodes(plain, "train")[:1]
    frames = tuning_frames(plain_drives, pairs, prep, workers=1)
    assert len(frames.changed) == len(frames.unchanged) == 20 + 50
    # the plain drive against itself, each decorated frame against its twin (here: equal frames)
    assert np.array_equal(frames.changed, frames.unchanged)
    shorter = write_dataset(tmp_path / "short", [specs[0], ("train_id_002", "id", 30.0, 25, None)])
    with pytest.raises(DatasetError, match="not a pair rendered from the same drive"):
        tuning_frames([], _pairs(decorated, shorter), prep, workers=1)
    other = write_dataset(tmp_path / "other", specs[:1])
    with pytest.raises(DatasetError, match="do not pair by name"):
        _pairs(decorated, other)
