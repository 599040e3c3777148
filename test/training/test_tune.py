"""training.tune_flow and training.tune_bvae end to end: real bags, the committed tiny bundles
rebuilt in torch, tuned, exported to ONNX, written as verified bundles and validated on the normal
table's rows."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from support import tiny_bundle
from training_support import write_dataset

from training import nuisance, tune_bvae, tune_flow
from training.dataset import episodes, iter_frames
from vae_ood_monitor.bundle import BUNDLE_FILE, load_bundle
from vae_ood_monitor.preprocessing import FlowStacker


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    specs = [
        ("train_id_001", "id", 30.0, 45, None),
        ("train_id_002", "id", 30.0, 45, None),
        ("calibration_id_001", "id", 30.0, 60, None),
        ("calibration_id_002", "id", 30.0, 60, None),
        ("validation_id_001", "id", 30.0, 60, None),
        ("validation_black_onset_001", "black", 30.0, 60, 40),
    ]
    return write_dataset(tmp_path_factory.mktemp("rate"), specs)


def test_every_rate_rows_stack_is_paired_with_the_30_hz_stack_of_its_own_frame(tiny_data):
    episode = episodes(tiny_data, "train")[0]
    prep = load_bundle(tiny_bundle("flow_tiny", tiny_data.parent)).preprocessing
    unchanged, changed, targets = tune_flow.episode_pairs((episode, prep))
    assert len(unchanged) == 45 - prep.stack  # a stack from the (stack + 1)-th frame on
    assert len(changed) == len(targets) > 0
    # Each 15 Hz frame fills two slots (its flow per 30 Hz interval), so the 15 Hz camera's first
    # stack is full at frame 2 * ceil(stack / 2); the 30 Hz stack ending there is that minus stack.
    assert targets[0] == 2 * -(-prep.stack // 2) - prep.stack
    assert targets.max() < len(unchanged)
    # A 30 Hz replay through a fresh stacker gives the same unchanged stacks.
    stacker = FlowStacker(prep)
    frames = [rgb for rgb, _ in iter_frames(episode)]
    stacks = [stacker.push(rgb, round(i / 30 * 1e9)) for i, rgb in enumerate(frames)]
    first = [s for s in stacks if s is not None]
    assert np.allclose(np.stack(first[0]), unchanged[0].astype(np.float32), atol=1e-2)


@pytest.mark.parametrize(
    ("module", "bundle", "flag", "key"),
    [
        (tune_flow, "flow_tiny", "--flow", "normal_tuning"),
        (tune_bvae, "bvae_tiny", "--bvae", "normal_tuning"),
    ],
)
def test_tuning_writes_a_verified_bundle_and_a_validation_report(
    tiny_data, tmp_path, module, bundle, flag, key
):
    source = tiny_bundle(bundle, tmp_path)
    out = tmp_path / "out"
    argv = ["--data", str(tiny_data), "--epochs", "2", "--workers", "1", "--device", "cpu"]
    argv += ["--validation", str(tiny_data), "--compare"]
    assert module.main([*argv, flag, str(source), "--out", str(out)]) == 0
    tuned = load_bundle(out / "bundle")  # checksums verified
    meta = json.loads((out / "bundle" / BUNDLE_FILE).read_text())
    old = json.loads((source / BUNDLE_FILE).read_text())
    assert meta["score"] == old["score"] and meta["decision"] == old["decision"]
    assert meta["provenance"][key]["epochs"] == 2
    assert all(p.exists() for p in tuned.encoders.values())
    with (out / "rows.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["bundle"] for r in rows} == {"source", "tuned"}
    assert all(r["worst_scenario"] == "black" for r in rows)
    for name in ("report.md", "validation.png"):
        assert (out / name).stat().st_size > 0
    # An existing --out is refused unless --force.
    assert module.main([*argv, flag, str(source), "--out", str(out)]) == 1


def test_a_bundle_of_the_other_detector_is_refused_in_one_line(tiny_data, tmp_path, capsys):
    source = tiny_bundle("bvae_tiny", tmp_path)
    argv = ["--data", str(tiny_data), "--flow", str(source), "--out", str(tmp_path / "o")]
    assert tune_flow.main(argv) == 1
    assert "camera-rate tuning is for flow bundles" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("module", "bundle", "flag"),
    [(tune_flow, "flow_tiny", "--flow"), (tune_bvae, "bvae_tiny", "--bvae")],
)
def test_with_calibration_the_score_and_decision_are_fitted_again_on_the_varied_drives(
    tiny_data, tmp_path, module, bundle, flag
):
    source = tiny_bundle(bundle, tmp_path)
    out = tmp_path / "out"
    argv = ["--data", str(tiny_data), "--epochs", "1", "--workers", "1", "--device", "cpu"]
    argv += [flag, str(source), "--calibration", str(tiny_data), "--out", str(out)]
    assert module.main(argv) == 0
    meta = json.loads((out / "bundle" / BUNDLE_FILE).read_text())
    assert meta["provenance"]["recalibrated_from"]["bundle"].endswith("bundle.encoders")
    assert meta["provenance"]["normal_tuning"]["epochs"] == 1
    assert (
        meta["calibration_scores"]
        != json.loads((source / BUNDLE_FILE).read_text())["calibration_scores"]
    )
    assert not (out / "bundle.encoders").exists()
    load_bundle(out / "bundle")


def test_normal_variants_are_drawn_per_drive_within_the_table(tiny_data):
    drive = episodes(tiny_data, "calibration")[0]
    assert nuisance.normal_variant("flow", drive) in nuisance.RATE_ROWS
    variant = nuisance.normal_variant("bvae", drive)
    assert variant == nuisance.normal_variant("bvae", drive)  # seeded by the drive's name
    rgb = np.full((4, 4, 3), 100, np.uint8)
    assert 100 * 0.7 * 0.9 - 1 <= variant.transform(rgb, None).mean() <= 100 * 1.4 * 1.1 + 1
