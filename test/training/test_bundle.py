"""Model bundles: export, verification at load, and ONNX Runtime agreeing with torch."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from training_support import FLOW_PREP, band_features, build_flow_bundle, build_image_bundle

from training.export import (
    BandMax,
    add_pooled_output,
    band_count,
    remove_pooled_output,
    write_bundle,
)
from vae_ood_monitor.backends import BackendError, make_encoder
from vae_ood_monitor.bundle import BundleError, load_bundle, write_sums
from vae_ood_monitor.decision import DecisionParams
from vae_ood_monitor.detector import OODDetector
from vae_ood_monitor.preprocessing import ImagePreprocessing
from vae_ood_monitor.scoring import LatentScore


def test_onnx_runtime_agrees_with_torch(tmp_path):
    model, bundle_dir = build_image_bundle(tmp_path)
    bundle = load_bundle(bundle_dir)
    encoder = make_encoder("onnxruntime", bundle.encoders["image"])
    batch = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    outputs = encoder(batch)
    mu, logvar = outputs["mu"], outputs["logvar"]
    with torch.no_grad():
        mu_t, logvar_t = model.encoder(torch.from_numpy(batch))
    np.testing.assert_allclose(mu, mu_t.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logvar, logvar_t.numpy(), atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # pooled: the spatial mean of every conv block's output, in order
        x, block_means = torch.from_numpy(batch), []
        for block in model.encoder.features[:-1]:  # the conv blocks, before the flatten
            x = block(x)
            block_means.append(x.mean(dim=(2, 3)))
    np.testing.assert_allclose(
        outputs["pooled"], torch.cat(block_means, dim=1).numpy(), atol=1e-4, rtol=1e-4
    )


def _strip_pooled_output(model_path: Path, out: Path) -> Path:
    """The encoder as exported before the `pooled` output existed (its nodes removed too)."""
    model = onnx.load(str(model_path))
    remove_pooled_output(model)
    onnx.save(model, str(out))
    return out


def test_adding_the_pooled_output_keeps_the_encoder_and_is_done_once(tmp_path):
    """Shipped encoders gain `pooled` at recalibration; their μ and logσ² must not move."""
    _, bundle_dir = build_image_bundle(tmp_path)
    with_pooled = bundle_dir / "image.onnx"
    before = _strip_pooled_output(with_pooled, tmp_path / "before.onnx")
    assert make_encoder("onnxruntime", before).outputs == ("mu", "logvar")
    added = add_pooled_output(Path(shutil.copy(before, tmp_path / "added.onnx")))
    batch = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    reference, again = (
        make_encoder("onnxruntime", with_pooled)(batch),
        make_encoder("onnxruntime", added)(batch),
    )
    for name in ("mu", "logvar", "pooled"):
        np.testing.assert_array_equal(again[name], reference[name])
    size = added.stat().st_size
    add_pooled_output(added)
    assert added.stat().st_size == size


def test_band_maxima_join_the_pooled_features_and_agree_with_torch(tmp_path):
    """`pooled` rebuilt with BandMax(0, 2, 4): the block means as before, then per channel the max
    of block 0's output over each of its top two of four horizontal bands; μ and logσ² do not
    move."""
    maxima, block, plain, banded = band_features(tmp_path, BandMax(0, 2, 4), count=3, seed=2)
    # block: (3, C, 16, 16), bands of 4 rows
    count, channels, height, width = block.shape
    expected = (
        block.reshape(count, channels, 4, height // 4, width)[:, :, :2]
        .max(axis=(3, 4))
        .reshape(count, -1)
    )
    np.testing.assert_allclose(maxima, expected, atol=1e-5)
    assert band_count(banded) == channels * 2 == maxima.shape[1], (
        "the score's band mixture reads this many"
    )
    assert band_count(plain) == 0


@pytest.mark.parametrize(
    ("bands", "message"),
    [
        (BandMax(2, 1, 2), "band max on conv block 2, but the encoder has 2"),
        (BandMax(0, 1, 3), "conv block 0 has 16 rows, which 3 equal bands do not divide"),
    ],
)
def test_band_maxima_the_encoder_cannot_give_are_refused_with_the_reason(tmp_path, bands, message):
    _, bundle_dir = build_image_bundle(tmp_path)
    with pytest.raises(ValueError, match=message):
        add_pooled_output(
            Path(shutil.copy(bundle_dir / "image.onnx", tmp_path / "banded.onnx")), bands
        )


@pytest.mark.parametrize("text", ["1/3", "a/b/c", "1/5/4", "-1/1/2"])
def test_a_bad_band_max_spec_says_what_it_should_be(text):
    with pytest.raises(ValueError, match="band max"):
        BandMax.parse(text)


def test_a_pooled_score_on_an_encoder_without_pooled_output_is_refused_at_load(tmp_path):
    _, bundle_dir = build_image_bundle(tmp_path)
    _strip_pooled_output(bundle_dir / "image.onnx", bundle_dir / "image.onnx")
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    meta["score"] = {
        "kind": "mahalanobis_pooled",
        "dims": {"image": [0]},
        "pooled": {"image": 16},
        "mean": [0.0] * 18,
        "precision": np.eye(18).tolist(),
    }
    (bundle_dir / "bundle.json").write_text(json.dumps(meta))
    write_sums(bundle_dir)
    with pytest.raises(
        BundleError,
        match="reads pooled features, but encoder image on onnxruntime has no 'pooled' output",
    ):
        OODDetector.from_path(str(bundle_dir))


def test_bundle_round_trips_its_metadata(tmp_path):
    _, bundle_dir = build_image_bundle(tmp_path)
    bundle = load_bundle(bundle_dir)
    assert bundle.detector == "bvae" and bundle.score == LatentScore("kl", {"image": [0, 2, 5]})
    assert bundle.decision == DecisionParams(window=4, threshold=7.0)
    assert bundle.preprocessing == ImagePreprocessing(32, 32)
    assert bundle.provenance["note"] == "test" and len(bundle.sha256) == 64
    np.testing.assert_allclose(bundle.calibration_scores, np.linspace(0.0, 5.0, 50), atol=1e-6)


def test_image_interpolation_travels_in_the_bundle_and_older_bundles_keep_area(tmp_path):
    _model, _ = build_image_bundle(tmp_path / "area")
    onnx = tmp_path / "area" / "work" / "image.onnx"
    nearest = ImagePreprocessing(32, 32, interpolation="nearest")
    write_bundle(
        tmp_path / "nearest",
        "bvae",
        nearest,
        {"image": onnx},
        LatentScore("kl", {"image": [0]}),
        np.linspace(0.0, 5.0, 50),
        DecisionParams(),
        {},
    )
    assert load_bundle(tmp_path / "nearest").preprocessing == nearest
    meta = json.loads((tmp_path / "area" / "bundle" / "bundle.json").read_text())
    del meta["preprocessing"]["interpolation"]  # as written before the option existed
    (tmp_path / "area" / "bundle" / "bundle.json").write_text(json.dumps(meta))
    write_sums(tmp_path / "area" / "bundle")
    assert load_bundle(tmp_path / "area" / "bundle").preprocessing == ImagePreprocessing(32, 32)


def test_detector_scores_frames_and_batches_alike(tmp_path, frames):
    _, bundle_dir = build_image_bundle(tmp_path)
    detector = OODDetector.from_path(bundle_dir)
    batched = detector.score_stream(frames)
    single = [detector.score_frame(rgb) for rgb in frames]
    np.testing.assert_allclose(batched, single, rtol=1e-4)
    assert np.all(batched > 0)


def test_flow_detector_needs_a_full_stack(tmp_path, frames):
    detector = OODDetector.from_path(build_flow_bundle(tmp_path))
    scores = detector.score_stream(frames)
    assert (
        np.isnan(scores[: FLOW_PREP.stack]).all() and np.isfinite(scores[FLOW_PREP.stack :]).all()
    )


def test_warm_up_leaves_a_fresh_stream(tmp_path, frames):
    warmed = OODDetector.from_path(build_flow_bundle(tmp_path))
    warmed.warm_up(runs=2)
    assert warmed.decider.cusum == 0.0
    scores = warmed.score_stream(frames, reset=False)
    fresh = OODDetector.from_path(build_flow_bundle(tmp_path / "fresh")).score_stream(frames)
    np.testing.assert_allclose(
        scores, fresh, rtol=1e-5
    )  # NaN where the stack is still filling, in both


def test_changed_encoder_fails_the_checksum(tmp_path):
    _, bundle_dir = build_image_bundle(tmp_path)
    onnx = bundle_dir / "image.onnx"
    data = bytearray(onnx.read_bytes())
    data[-10] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256 mismatch for image.onnx"):
        load_bundle(bundle_dir)


def test_corrupt_onnx_with_valid_sums_is_refused_by_the_backend(tmp_path):
    _, bundle_dir = build_image_bundle(tmp_path)
    (bundle_dir / "image.onnx").write_bytes(b"not an onnx model")
    write_sums(bundle_dir)
    with pytest.raises(BackendError, match="image.onnx: ONNX Runtime cannot load it"):
        OODDetector.from_path(bundle_dir)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: (b / "SHA256SUMS").unlink(), "no SHA256SUMS"),
        (lambda b: (b / "image.onnx").unlink(), "image.onnx is listed in SHA256SUMS but missing"),
        (lambda b: ((b / "bundle.json").write_text("{"), write_sums(b)), r"bundle.json: invalid"),
        (
            lambda b: (
                (b / "bundle.json").write_text(json.dumps({"format": "other"})),
                write_sums(b),
            ),
            "unsupported bundle format",
        ),
    ],
)
def test_damaged_bundles_are_refused_with_a_reason(tmp_path, damage, message):
    _, bundle_dir = build_image_bundle(tmp_path)
    damage(bundle_dir)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_a_flow_bundle_with_a_bad_farneback_window_is_refused_with_the_field(tmp_path):
    """The shipped flow_student bundle with its window edited to 1 pixel: refused at load, naming
    the field, not a failure inside OpenCV on the first frame."""
    bundle_dir = tmp_path / "flow_student"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "flow_student", bundle_dir)
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    assert meta["preprocessing"]["winsize"] == 11
    meta["preprocessing"]["winsize"] = 1
    (bundle_dir / "bundle.json").write_text(json.dumps(meta))
    write_sums(bundle_dir)
    with pytest.raises(
        BundleError,
        match="bundle.json: invalid .*winsize must be an integer of at least 3 pixels, got 1",
    ):
        load_bundle(bundle_dir)


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path / "nothing")


def test_tensorrt_backend_is_a_clear_error_without_tensorrt(tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        _, bundle_dir = build_image_bundle(tmp_path)
        with pytest.raises(BackendError, match="backend 'tensorrt' is unavailable here"):
            OODDetector.from_path(bundle_dir, backend="tensorrt")
    else:
        pytest.skip(
            "TensorRT is installed here; its engine path is exercised by the Jetson benchmark"
        )


def test_committed_tiny_bundles_are_what_the_builders_make(tmp_path):
    """test/runtime/data holds the runtime tests' bundles; the builders still make the same ones
    (same encoders' outputs, same bundle fields but the commit that wrote them)."""
    from support import DATA

    _, image = build_image_bundle(tmp_path / "image")
    built = {"bvae_tiny": image, "flow_tiny": build_flow_bundle(tmp_path / "flow")}
    for name, fresh_dir in built.items():
        committed, fresh = load_bundle(DATA / name), load_bundle(fresh_dir)
        for field in ("detector", "preprocessing", "score", "decision"):
            assert getattr(committed, field) == getattr(fresh, field), (name, field)
        shapes = {"bvae_tiny": (1, 3, 32, 32), "flow_tiny": (1, 3, 48, 64)}
        x = np.random.default_rng(0).random(shapes[name], np.float32)
        for encoder in committed.encoders:
            a = make_encoder("onnxruntime", committed.encoders[encoder])(x)
            b = make_encoder("onnxruntime", fresh.encoders[encoder])(x)
            for key, value in a.items():
                np.testing.assert_allclose(value, b[key], rtol=1e-5, atol=1e-6)
