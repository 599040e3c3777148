"""Band maxima per column window below the sky (training.export.BandMax COLUMNS/SKIP): the ONNX
graph addition, its feature count, the torch twin adapt trains with, and the spec text."""

import numpy as np
import pytest
import torch
from training_support import band_features, banded_encoder

from training.adapt.encoders import torch_features
from training.export import BandMax, band_count
from training.lane_bands import Variant, kept_windows
from vae_ood_monitor.backends import make_encoder

WINDOWED = BandMax(0, 2, 4, columns=3, skip=1)  # block 0 is (C, 16, 16): rows 4..12, 3 windows


def test_window_maxima_are_each_windows_band_maxima_below_the_skipped_bands(tmp_path):
    """Re-exported without retraining: μ, logσ² and the block means unchanged, then per column
    window (0:5, 5:11, 11:16) per channel the max over each of bands 1 and 2 of 4."""
    maxima, block, _, banded = band_features(tmp_path, WINDOWED, count=4, seed=3)
    count, channels = block.shape[:2]
    expected = np.concatenate(
        [
            block[:, :, 4:12, lo:hi].reshape(count, channels, 2, -1).max(axis=3).reshape(count, -1)
            for lo, hi in ((0, 5), (5, 11), (11, 16))
        ],
        axis=1,
    )
    np.testing.assert_allclose(maxima, expected, atol=1e-5)
    assert band_count(banded) == channels * 2 * 3 == maxima.shape[1]


@pytest.mark.parametrize("bands", [WINDOWED, BandMax(0, 2, 4)])
def test_adapts_torch_twin_computes_the_exported_features(tmp_path, bands):
    """training.adapt fine-tunes on torch_features: they must be the ONNX's, windowed or not."""
    model, _, banded = banded_encoder(tmp_path, bands)
    batch = np.random.default_rng(5).random((3, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        _, _, pooled = torch_features(model.encoder, torch.from_numpy(batch), bands)
    np.testing.assert_allclose(
        pooled.numpy(), make_encoder("onnxruntime", banded)(batch)["pooled"], atol=1e-5
    )


def test_a_blob_in_one_side_window_moves_only_that_windows_maxima(tmp_path):
    """Why the windows: a bright patch at the left edge (a house beside the road) raises the left
    window's maxima and leaves the centre and right windows' exactly as they were."""
    _, _, banded = banded_encoder(tmp_path, WINDOWED)
    encoder = make_encoder("onnxruntime", banded)
    frame = np.full((1, 3, 32, 32), 0.3, dtype=np.float32)
    house = frame.copy()
    house[:, :, 10:20, 0:4] = 1.0  # input columns 0-3: block-0 columns 0-1 (left window)
    base, moved = (encoder(x)["pooled"][0, -48:].reshape(3, -1) for x in (frame, house))
    assert not np.allclose(moved[0], base[0]), "the left window must see the patch"
    np.testing.assert_array_equal(moved[1:], base[1:])


def test_too_many_windows_for_the_block_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="16 columns, too few for 17 column windows"):
        banded_encoder(tmp_path, BandMax(0, 1, 4, columns=17))


@pytest.mark.parametrize(
    ("text", "bands"),
    [
        ("1/3/8", BandMax(1, 3, 8)),  # the shipped bundles' provenance reads as before
        ("1/3/8/3", BandMax(1, 3, 8, columns=3)),
        ("1/3/8/3/3", BandMax(1, 3, 8, columns=3, skip=3)),
    ],
)
def test_band_max_spec_round_trips(text, bands):
    assert BandMax.parse(text) == bands
    assert str(bands) == text


@pytest.mark.parametrize("text", ["1/3/8/0", "1/3/8/3/6", "1/3/8/1/-1", "1/3/8/3/3/1"])
def test_a_bad_window_spec_says_what_it_should_be(text):
    with pytest.raises(ValueError, match="band max"):
        BandMax.parse(text)


def test_the_experiment_keeps_the_asked_windows_band_maxima(tmp_path):
    """training.lane_bands --variant 0/2/4/3/1:1 scores the block means and the centre window's
    maxima only: the experiment's central third is the export's window 1."""
    model, _, banded = banded_encoder(tmp_path, WINDOWED)
    batch = np.random.default_rng(4).random((2, 3, 32, 32), dtype=np.float32)
    pooled = make_encoder("onnxruntime", banded)(batch)["pooled"]
    variant = Variant.parse("0/2/4/3/1:1")
    assert variant.bands == WINDOWED and str(variant) == "0/2/4/3/1:1"
    kept = kept_windows(pooled, band_count(banded), variant)
    with torch.no_grad():
        block = model.encoder.features[0](torch.from_numpy(batch)).numpy()
    centre = block[:, :, 4:12, 5:11].reshape(2, block.shape[1], 2, -1).max(axis=3).reshape(2, -1)
    np.testing.assert_allclose(kept[:, -centre.shape[1] :], centre, atol=1e-5)
    np.testing.assert_array_equal(kept[:, : -centre.shape[1]], pooled[:, : -3 * centre.shape[1]])
    with pytest.raises(ValueError, match="windows to keep are 0..2"):
        Variant.parse("0/2/4/3/1:3")
