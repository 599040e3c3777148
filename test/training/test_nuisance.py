"""The nuisance evaluation (training.nuisance): each row's transform does what it says, and the
evaluation runs end to end on real bags with the committed tiny bundles (ONNX Runtime)."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from support import tiny_bundle
from training_support import write_dataset

from training.dataset import episodes, iter_frames
from training.evaluate import main as evaluate_main
from training.nuisance import (
    AS_RECORDED,
    NORMAL_ROWS,
    ROWS_BY_NAME,
    SENSITIVITY,
    Row,
    main,
    replay,
    sensitivity,
)
from vae_ood_monitor.bags import read_camera_messages
from vae_ood_monitor.bundle import load_bundle
from vae_ood_monitor.decision import DecisionParams
from vae_ood_monitor.images import decode_message
from vae_ood_monitor.preprocessing import ImagePreprocessing, PhotometricRanges
from vae_ood_monitor.variations import (
    contrast,
    exposure,
    jpeg,
    noise,
    photometric,
    resolution,
    white_balance,
)

RNG = np.random.default_rng(0)
FRAME = RNG.integers(40, 200, (48, 64, 3), dtype=np.uint8)


def test_camera_rate_keeps_every_nth_frame_with_the_stamps_it_was_taken_at():
    indices, stamps = ROWS_BY_NAME["camera 15 Hz"].selection(60.0, 120, seed=1)
    assert indices.tolist() == list(range(0, 120, 4))
    np.testing.assert_allclose(stamps, indices / 60.0)  # honest: when the frame was taken
    indices, stamps = ROWS_BY_NAME["camera 10 Hz"].selection(30.0, 90, seed=1)
    assert indices.tolist() == list(range(0, 90, 3))
    np.testing.assert_allclose(np.diff(stamps), 0.1)
    indices, stamps = AS_RECORDED.selection(60.0, 10, seed=1)
    assert indices.tolist() == [0, 2, 4, 6, 8]


def test_lost_frames_drop_that_share_keep_the_first_and_the_stamps_of_the_rest():
    row = ROWS_BY_NAME["30 % frames lost"]
    full_indices, full_stamps = AS_RECORDED.selection(30.0, 301, seed=3)
    indices, stamps = row.selection(30.0, 301, seed=3)
    assert len(indices) == 301 - 90  # 30 % of the 300 frames after the first
    assert indices[0] == 0 and np.all(np.diff(indices) > 0)
    np.testing.assert_allclose(stamps, full_stamps[indices])  # a lost frame leaves a gap
    assert np.array_equal(indices, row.selection(30.0, 301, seed=3)[0])
    assert not np.array_equal(indices, row.selection(30.0, 301, seed=4)[0])
    assert len(full_indices) == 301


def test_half_speed_stamps_every_rendered_frame_at_the_camera_rate():
    row = ROWS_BY_NAME["half speed"]
    indices, stamps = row.selection(60.0, 120, seed=0)
    assert indices.tolist() == list(range(120))  # half the distance per second ...
    np.testing.assert_allclose(np.diff(stamps), 1 / 30)  # ... at 30 frames per second
    assert row.applies_to(60.0) and not row.applies_to(30.0)
    with pytest.raises(ValueError, match="half speed.*whole multiple of 60 Hz, got 30 Hz"):
        row.selection(30.0, 100, seed=0)


def test_exposure_scales_pixel_values_and_saturates():
    frame = np.array([[[100, 50, 200]]], np.uint8)
    assert exposure(0.7)(frame, RNG).tolist() == [[[70, 35, 140]]]
    assert exposure(1.4)(frame, RNG).tolist() == [[[140, 70, 255]]]


def test_contrast_scales_distances_from_the_mean():
    out = contrast(1.2)(FRAME, RNG).astype(float)
    mean = FRAME.mean()
    np.testing.assert_allclose(out - mean, 1.2 * (FRAME - mean), atol=0.51)
    assert contrast(0.8)(FRAME, RNG).std() == pytest.approx(0.8 * FRAME.std(), rel=0.01)


def test_white_balance_shifts_red_and_blue_the_opposite_ways():
    frame = np.full((2, 2, 3), 100, np.uint8)
    assert white_balance(0.1)(frame, RNG)[0, 0].tolist() == [110, 100, 90]
    assert white_balance(-0.1)(frame, RNG)[0, 0].tolist() == [90, 100, 110]


def test_a_camera_setting_applies_white_balance_exposure_then_contrast():
    setting = photometric(1.3, 0.8, 0.1)(FRAME, RNG)
    by_hand = contrast(0.8)(exposure(1.3)(white_balance(0.1)(FRAME, RNG), RNG), RNG)
    assert np.array_equal(setting, by_hand)
    assert np.array_equal(photometric()(FRAME, RNG), FRAME), "neutral: the frame as it was"


def test_jpeg_resolution_and_noise():
    smooth = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 48, 0).repeat(3, 2)
    textured = np.clip(smooth + RNG.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    error = np.abs(jpeg(30)(textured, RNG).astype(int) - textured).mean()
    assert 1.0 < error < 20.0  # lossy, but the same picture
    assert resolution(320, 240)(np.zeros((480, 640, 3), np.uint8), RNG).shape == (240, 320, 3)
    assert resolution(1280, 960)(np.zeros((480, 640, 3), np.uint8), RNG).shape == (960, 1280, 3)
    grey = np.full((200, 200, 3), 128, np.uint8)
    first, second = noise(4.0)(grey, RNG), noise(4.0)(grey, RNG)
    assert first.astype(float).std() == pytest.approx(4.0, rel=0.05)
    assert not np.array_equal(first, second)  # new noise in every frame


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nuisance")
    write_dataset(
        root / "plain",
        [("test_id_001", "id", 60.0, 150, None), ("test_black_onset_001", "black", 30.0, 75, 45)],
    )
    write_dataset(root / "decorated", [("test_id_001", "id", 60.0, 120, None)])
    return root


def test_replay_delivers_the_rows_frames_stamps_and_labels(tiny_data):
    onset = next(e for e in episodes(tiny_data / "plain", "test") if e.onset_frame)
    delivered = list(replay(onset, ROWS_BY_NAME["camera 15 Hz"]))
    assert len(delivered) == 38  # frames 0, 2, ..., 74
    assert [s for _, _, s, _ in delivered][:3] == pytest.approx([0.0, 2 / 30, 4 / 30])
    assert [label for *_, label in delivered] == [i >= 45 for i in range(0, 75, 2)]
    recorded = {m.index: m.msg.data for m in read_camera_messages(onset.path)}
    assert bytes(delivered[1][0].data) == bytes(recorded[2]), "the recorded JPEG, as it is"
    dark = list(replay(onset, Row("dark", transform=exposure(0.5))))
    assert dark[0][1].mean() == pytest.approx(0.5 * delivered[0][1].mean(), abs=1.0)
    # ... and a changed frame as the camera sends it: JPEG, decoding to the changed pixels
    sent = decode_message(dark[0][0]).astype(float)
    assert dark[0][0].format == "jpeg" and np.abs(sent - dark[0][1]).mean() < 2.0


@pytest.mark.parametrize(("threshold", "flagged"), [(-1e9, "100.0 %"), (1e12, "0.0 %")])
def test_evaluation_runs_end_to_end_and_writes_table_and_plot(
    tiny_data, tmp_path, threshold, flagged
):
    """Detectors that always / never flag give 100 % / 0 % on every row: the share is measured."""
    decision = DecisionParams(mode="threshold", threshold=threshold)
    bundles = [tiny_bundle(n, tmp_path, decision) for n in ("bvae_tiny", "flow_tiny")]
    rows = ["camera 10 Hz", "exposure x1.4", "half speed", "decorated town"]
    out = tmp_path / "report"
    argv = ["--data", str(tiny_data / "plain"), "--decorated", str(tiny_data / "decorated")]
    argv += ["--bvae", str(bundles[0]), "--flow", str(bundles[1]), "--out", str(out)]
    argv += ["--rows", *rows, "--workers", "1", "--frozen-s", "0"]
    # training.evaluate's `nuisance` runs the same evaluation
    assert (main(argv) if threshold < 0 else evaluate_main(["nuisance", *argv])) == 0
    for name in ("report.md", "rows.csv", "scenarios.csv", "drives.csv", "nuisance.png"):
        assert (out / name).stat().st_size > 0
    with (out / "rows.csv").open() as handle:
        table = {r["row"]: r for r in csv.DictReader(handle)}
    assert list(table) == [AS_RECORDED.name, *rows]
    # Past the first second: 60 Hz drives of 150 frames are 2.5 s, the decorated one 2 s.
    assert int(table[AS_RECORDED.name]["id_frames"]) == 45
    assert int(table["camera 10 Hz"]["id_frames"]) == 15
    assert int(table["half speed"]["id_frames"]) == 120
    assert int(table["decorated town"]["id_frames"]) == 30
    assert table["half speed"]["ood_set"] == "as recorded"  # the onsets are 30 Hz drives
    assert table["camera 10 Hz"]["ood_set"] == "this row"
    report = (out / "report.md").read_text()
    assert report.count(f"| {flagged} |") >= len(table)
    if threshold < 0:
        assert table["camera 10 Hz"]["onsets_within_bar"] == "1/1"
        assert table["camera 10 Hz"]["stopped_before_onset"] == "1/1"
    # One line per row and ID drive, naming where a row's flags come from
    with (out / "drives.csv").open() as handle:
        drives = list(csv.DictReader(handle))
    assert [(d["row"], d["drive"]) for d in drives] == [
        (row, f"{'decorated' if row == 'decorated town' else 'plain'}/test_id_001") for row in table
    ]
    assert {d["fused_flagged"] for d in drives} == {"1.0" if threshold < 0 else "0.0"}
    assert ("drives.csv: every drive" in report) == (threshold < 0)


def test_every_row_of_the_normal_table_has_a_unique_name():
    assert len(ROWS_BY_NAME) == len(NORMAL_ROWS)


RANGES = PhotometricRanges(
    brightness=(90.0, 130.0), red=(0.95, 1.05), blue=(0.95, 1.05), contrast=(20.0, 60.0)
)


def _scene() -> np.ndarray:
    """A frame inside every range of RANGES: mean ~110, neutral colour, grey spread ~35."""
    return np.clip(np.random.default_rng(5).normal(110, 35, (64, 64, 3)), 0, 255).astype(np.uint8)


def test_photometric_normalisation_leaves_normal_frames_alone_and_undoes_the_normal_table():
    scene = _scene()
    assert RANGES(scene) is scene  # inside every range: the very frame the bundle was calibrated on
    level = PhotometricRanges.statistics
    assert level(RANGES(exposure(0.7)(scene, RNG)))[0] == pytest.approx(90.0, abs=1.0)
    assert level(RANGES(exposure(1.4)(scene, RNG)))[0] == pytest.approx(130.0, abs=1.5)
    warm = RANGES(white_balance(0.1)(scene, RNG))
    assert level(warm)[1] == pytest.approx(1.05, abs=0.01)
    assert level(warm)[2] == pytest.approx(0.95, abs=0.01)
    flat = np.clip((scene - 110.0) * 0.5 + 110.0, 0, 255).astype(np.uint8)  # grey spread ~17
    assert level(RANGES(flat))[3] == pytest.approx(level(flat)[3] / 0.8, rel=0.02)


def test_photometric_normalisation_keeps_darkness_and_glare_out_of_the_normal_range():
    scene = _scene()
    darkness = exposure(0.3)(scene, RNG)  # far darker than any exposure change of the table
    level = PhotometricRanges.statistics(RANGES(darkness))[0]
    assert level == pytest.approx(PhotometricRanges.statistics(darkness)[0] / 0.7, rel=0.01)
    assert level < 0.7 * 90.0  # brightened by at most 1/0.7: still darker than a normal frame
    bright = RANGES(np.clip(scene * 2.4 + 25, 0, 255).astype(np.uint8))  # the glare's gain
    assert PhotometricRanges.statistics(bright)[0] > 130.0 * 1.2


def test_image_preprocessing_without_photometric_reads_and_writes_as_before():
    old = {"kind": "image", "width": 64, "height": 64, "interpolation": "nearest"}
    prep = ImagePreprocessing.from_dict(old)
    assert prep.photometric is None and prep.to_dict() == old
    on = replace(prep, photometric=RANGES)
    assert ImagePreprocessing.from_dict(json.loads(json.dumps(on.to_dict()))) == on
    with pytest.raises(ValueError, match="photometric range red"):
        PhotometricRanges(brightness=(1, 2), red=(2, 1), blue=(1, 2), contrast=(1, 2))


def test_photometric_bundle_is_fitted_on_id_drives_and_loads(tiny_data, tmp_path):
    bundle = tiny_bundle("bvae_tiny", tmp_path)
    out = tmp_path / "bvae_photometric"
    argv = ["photometric", "--data", str(tiny_data / "plain"), "--split", "test"]
    assert main([*argv, "--bvae", str(bundle), "--out", str(out)]) == 0
    loaded = load_bundle(out)
    ranges = loaded.preprocessing.photometric
    drive = next(e for e in episodes(tiny_data / "plain", "test") if e.scenario == "id")
    plain = replace(loaded.preprocessing, photometric=None)
    levels = [PhotometricRanges.statistics(plain.resize(f))[0] for f, _ in iter_frames(drive)]
    assert ranges.brightness[0] <= np.median(levels) <= ranges.brightness[1]
    assert ranges.brightness[0] == pytest.approx(np.quantile(levels, 0.005), abs=1e-3)
    assert loaded.provenance["photometric"]["frames"] == 150  # the ID drive only, not the onset
    assert load_bundle(bundle).preprocessing.photometric is None  # the source is untouched


def test_sensitivity_sweep_reports_every_change_against_the_unchanged_frames(tiny_data, tmp_path):
    bundle = tiny_bundle("bvae_tiny", tmp_path)
    drives = episodes(tiny_data / "plain", "test")
    results = sensitivity(bundle, drives, every=10)
    assert results[0][:2] == ("none", 1.0)
    assert {(name, value) for name, value, _ in results[1:]} == {
        (name, value) for name, _, values in SENSITIVITY for value in values
    }
    assert all(0.0 <= percentile <= 1.0 for _, _, percentile in results)
    argv = ["sensitivity", "--data", str(tiny_data / "plain"), "--bvae", str(bundle)]
    assert main(argv) == 0
