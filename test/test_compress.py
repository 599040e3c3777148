"""Quantized encoders stay close to the FP32 encoder; latency is measured side by side."""

import numpy as np
from conftest import build_image_bundle

from training.compress.latency import measure_latency
from training.compress.quantize import convert_fp16, quantize_int8
from vae_ood_monitor.backends import make_encoder


def test_int8_and_fp16_encoders_track_fp32(tmp_path):
    _, bundle = build_image_bundle(tmp_path)
    fp32 = bundle / "image.onnx"
    rng = np.random.default_rng(0)
    calibration = [rng.random((8, 3, 32, 32), dtype=np.float32) for _ in range(4)]
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", calibration)
    fp16 = convert_fp16(fp32, tmp_path / "fp16.onnx")
    batch = rng.random((16, 3, 32, 32), dtype=np.float32)
    reference, _ = make_encoder("onnxruntime", fp32)(batch)
    scale = np.abs(reference).max()
    for model, tolerance in ((int8, 0.1), (fp16, 0.01)):
        mu, _ = make_encoder("onnxruntime", model)(batch)
        assert np.abs(mu - reference).max() <= tolerance * scale, model.name
        assert np.corrcoef(mu.ravel(), reference.ravel())[0, 1] > 0.98
    assert int8.stat().st_size < fp32.stat().st_size


def test_latency_is_reported_relative_to_the_first_model(tmp_path):
    _, bundle = build_image_bundle(tmp_path)
    model = bundle / "image.onnx"
    results = measure_latency({"baseline": (model, (3, 32, 32)), "same": (model, (3, 32, 32))}, runs=30, warmup=5)
    assert [r.name for r in results] == ["baseline", "same"]
    assert results[0].ratio == 1.0 and results[0].median_ms > 0
    assert 0.2 < results[1].ratio < 5.0
