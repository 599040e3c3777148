"""Quantized encoders stay close to the FP32 encoder (post-training and quantization-aware);
latency is measured side by side; pruned students learn the teacher's latents."""

import numpy as np
import pytest
import torch
from training_support import IMAGE_VAE, build_image_bundle

from training.compress.distill import distill, parameter_count, prune_encoder, teacher_latents
from training.compress.latency import measure_latency, measure_preprocessing, peak_memory_mb
from training.compress.quantize import convert_fp16, quantize_int8
from training.export import export_encoder
from training.models import VAE
from training.trainer import TrainConfig
from vae_ood_monitor.backends import make_encoder


def test_int8_and_fp16_encoders_track_fp32(tmp_path):
    _, bundle = build_image_bundle(tmp_path)
    fp32 = bundle / "image.onnx"
    rng = np.random.default_rng(0)
    calibration = [rng.random((8, 3, 32, 32), dtype=np.float32) for _ in range(4)]
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", calibration)
    fp16 = convert_fp16(fp32, tmp_path / "fp16.onnx")
    batch = rng.random((16, 3, 32, 32), dtype=np.float32)
    reference = make_encoder("onnxruntime", fp32)(batch)["mu"]
    scale = np.abs(reference).max()
    for model, tolerance in ((int8, 0.1), (fp16, 0.01)):
        mu = make_encoder("onnxruntime", model)(batch)["mu"]
        assert np.abs(mu - reference).max() <= tolerance * scale, model.name
        assert np.corrcoef(mu.ravel(), reference.ravel())[0, 1] > 0.98
    assert int8.stat().st_size < fp32.stat().st_size


def test_latency_is_reported_relative_to_the_first_model(tmp_path):
    _, bundle = build_image_bundle(tmp_path)
    model = bundle / "image.onnx"
    results = measure_latency(
        {"baseline": (model, (3, 32, 32)), "same": (model, (3, 32, 32))}, runs=30, warmup=5
    )
    assert [r.name for r in results] == ["baseline", "same"]
    assert results[0].ratio == 1.0 and results[0].median_ms > 0
    assert 0.2 < results[1].ratio < 5.0


def test_preprocessing_is_timed_per_frame_and_optical_flow_costs_more_than_a_resize():
    from vae_ood_monitor.preprocessing import FlowPreprocessing, ImagePreprocessing

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(40)]
    timed = measure_preprocessing(
        {"image": ImagePreprocessing(64, 64), "flow": FlowPreprocessing()}, frames
    )
    assert set(timed) == {"image", "flow"} and all(t > 0 for t in timed.values())
    assert timed["flow"] > timed["image"]
    with pytest.raises(ValueError, match="more than 10 frames"):
        measure_preprocessing({"image": ImagePreprocessing(64, 64)}, frames[:5])


def test_pruned_student_is_smaller_and_learns_the_teachers_latents(tmp_path):
    teacher, bundle = build_image_bundle(tmp_path)
    inputs = np.random.default_rng(1).random((64, 3, 32, 32), dtype=np.float32)
    targets = teacher_latents(bundle / "image.onnx", inputs, lambda x: x)
    student = prune_encoder(teacher.encoder, (3, 32, 32), ratio=0.5)
    assert parameter_count(student) < 0.5 * parameter_count(teacher.encoder)
    with torch.no_grad():
        before = float(
            torch.nn.functional.mse_loss(
                student(torch.from_numpy(inputs))[0], torch.from_numpy(targets[0])
            )
        )
    student, history = distill(
        student,
        inputs,
        torch.from_numpy,
        targets,
        TrainConfig(epochs=30, batch_size=16, learning_rate=3e-3, threads=1),
    )
    assert history[-1] < 0.5 * history[0] and history[-1] < before
    onnx = export_encoder(student, (IMAGE_VAE.in_channels, 32, 32), tmp_path / "student.onnx")
    assert onnx.stat().st_size < (bundle / "image.onnx").stat().st_size


def test_tensorrt_engine_builds_or_says_why_not(tmp_path):
    from training.compress.tensorrt import TensorRTUnavailable, build_engine

    _, bundle = build_image_bundle(tmp_path)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(TensorRTUnavailable, match="build engines on the Jetson"):
            build_engine(bundle / "image.onnx", "fp16")
        return
    engine = build_engine(bundle / "image.onnx", "fp16")  # on a Jetson / GPU machine with TensorRT
    mu = make_encoder("tensorrt", bundle / "image.onnx")(np.zeros((1, 3, 32, 32), np.float32))["mu"]
    reference = make_encoder("onnxruntime", bundle / "image.onnx")(
        np.zeros((1, 3, 32, 32), np.float32)
    )["mu"]
    assert engine.exists() and np.allclose(mu, reference, atol=1e-2)


def test_peak_memory_is_the_runtime_s_not_the_trainer_s(tmp_path):
    """The child process loads only ONNX Runtime and the encoder: far below a torch process."""
    _, bundle = build_image_bundle(tmp_path)
    peak = peak_memory_mb({"image": bundle / "image.onnx"}, {"image": (3, 32, 32)})
    assert 10.0 < peak < 200.0


def test_batchnorm_folding_keeps_the_encoders_outputs():
    from training.compress.qat import fold_batchnorm

    torch.manual_seed(0)
    encoder = VAE(IMAGE_VAE).encoder.eval()
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics to fold
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.rand(4, 3, 32, 32)
    folded = fold_batchnorm(encoder)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert torch.allclose(folded(x)[0], encoder(x)[0], atol=1e-5)


def test_quantization_aware_finetuning_learns_on_the_int8_grid_and_exports_a_plain_encoder(
    tmp_path,
):
    from training.compress.qat import FakeQuantized, qat_finetune, quantization_aware

    torch.manual_seed(0)
    teacher = VAE(IMAGE_VAE).encoder.eval()
    inputs = np.random.default_rng(2).random((64, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        targets = tuple(t.numpy() for t in teacher(torch.from_numpy(inputs)))
    aware = quantization_aware(teacher).train()
    aware(torch.from_numpy(inputs))  # observe activation ranges
    aware.eval()
    with torch.no_grad():
        rounded = aware(torch.from_numpy(inputs))[0]
    float_mu = torch.from_numpy(targets[0])
    assert 0 < float(torch.abs(rounded - float_mu).max()) < 0.1 * float(float_mu.abs().max()), (
        "INT8 rounding: close, not equal"
    )

    student, history = qat_finetune(
        teacher,
        inputs,
        torch.from_numpy,
        targets,
        TrainConfig(epochs=5, batch_size=16, learning_rate=1e-3, threads=1),
    )
    assert history[-1] < history[0]
    assert not any(isinstance(m, FakeQuantized) for m in student.modules())
    onnx = export_encoder(student, (3, 32, 32), tmp_path / "qat.onnx")
    int8 = quantize_int8(
        onnx, tmp_path / "qat_int8.onnx", [inputs[i : i + 16] for i in range(0, 64, 16)]
    )
    mu = make_encoder("onnxruntime", int8)(inputs)["mu"]
    assert np.corrcoef(mu.ravel(), targets[0].ravel())[0, 1] > 0.98


def test_perturbed_copies_are_the_same_image_at_the_teachers_and_the_students_size():
    """The targets stay exact only if perturbing then resizing (what the student learns from)
    equals resizing then perturbing (what the teacher was run on)."""
    from training.compress.perturb import UNIFORM_COLOUR, Perturbations
    from vae_ood_monitor.preprocessing import ImagePreprocessing

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (6, 96, 128, 3), dtype=np.uint8)
    perturbations = Perturbations.draw(len(frames), copies_per_frame=3, seed=0)
    assert (
        len(perturbations.source) == 18
        and (perturbations.partner == UNIFORM_COLOUR).any()
        and (perturbations.partner >= 0).any()
    )
    assert (perturbations.partner != perturbations.source).all(), (
        "a frame is never mixed with itself"
    )

    def rows(images, prep):
        return np.stack([prep.resize(image).transpose(2, 0, 1) for image in images])

    full = perturbations.apply(frames.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    for prep in (ImagePreprocessing(64, 48), ImagePreprocessing(32, 24)):
        resized_then_perturbed = perturbations.apply(rows(frames, prep)).astype(int)
        perturbed_then_resized = rows(np.ascontiguousarray(full), prep).astype(int)
        assert np.abs(resized_then_perturbed - perturbed_then_resized).max() <= 1, "rounding only"
    uniform = perturbations.partner == UNIFORM_COLOUR
    assert (
        np.abs(
            full[uniform].astype(float).std(axis=(1, 2))
            - frames[perturbations.source[uniform]].astype(float).std(axis=(1, 2))
            * perturbations.weight[uniform, None]
        ).max()
        < 1.0
    )
    flows = rng.uniform(-1, 1, (6, 6, 16, 16)).astype(
        np.float16
    )  # normalised flow stacks: blends stay in [-1, 1]
    perturbed_flows = perturbations.apply(flows)
    assert perturbed_flows.dtype == np.float16 and np.abs(perturbed_flows).max() <= 1.0
    with pytest.raises(ValueError, match="channels, H, W"):
        perturbations.apply(np.zeros((6, 8, 8), dtype=np.float16))
    with pytest.raises(ValueError, match="more frames"):
        perturbations.apply(np.zeros((2, 3, 8, 8), dtype=np.uint8))


def test_a_new_student_starts_from_its_seed_whatever_ran_before():
    """torch seeds itself differently in every process: without the seed the search's students,
    and the candidate it ships, would change from run to run."""
    from training.compress.distill import new_student
    from training.models import VAEConfig

    config = VAEConfig(
        in_channels=3, height=32, width=32, conv_channels=(8, 8, 4, 4), dense=(32,), latent=4
    )
    first = new_student(config, seed=3)
    torch.rand(100)  # whatever else drew random numbers in between
    second, other = new_student(config, seed=3), new_student(config, seed=4)
    for a, b, _ in zip(
        first.state_dict().values(), second.state_dict().values(), other.state_dict().values()
    ):
        assert torch.equal(a, b)
    assert any(
        not torch.equal(a, c)
        for a, c in zip(first.state_dict().values(), other.state_dict().values())
    )


def test_a_search_space_without_the_detector_is_refused_by_name(capsys):
    from training.compress.search import main as search_main

    with pytest.raises(SystemExit):
        search_main(["--detector", "flow", "--space", "students_nearest"])
    assert (
        "search space 'students_nearest' has no flow detector (it has: bvae)"
        in capsys.readouterr().err
    )
