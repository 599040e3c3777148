"""Training on other hardware: two CPU processes under torchrun (gloo) take the steps of one
process; CUDA and mixed precision where a GPU is present; --device on the training entry points."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_worker import CONFIG, TRAIN, run, to_tensor
from torch import nn

from training.device import CPU, DeviceError, Hardware, amp_dtype, resolve_device, setup
from training.models import VAE, vae_loss
from training.trainer import TrainConfig, set_seeds, train_vae

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=f"no CUDA GPU here (torch {torch.__version__}): the CUDA/AMP path is not exercised",
)


def _feeding_batchnorm(model: nn.Module) -> set[str]:
    """Biases of convolutions followed by BatchNorm, and that BatchNorm's running mean: BatchNorm
    subtracts the bias again, so its gradient is zero in exact arithmetic and Adam turns rounding
    noise into steps of up to ±lr either way — they may differ by 2·lr per step."""
    names = set()
    for name, module in model.named_modules():
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in itertools.pairwise(children):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                prefix = f"{name}." if name else ""
                names |= {f"{prefix}{conv_name}.bias", f"{prefix}{bn_name}.running_mean"}
    return names


def test_ddp_two_gloo_processes_under_torchrun_take_the_steps_of_one_process(tmp_path):
    """VAE (resumed from rank 0's checkpoint after one epoch), distillation and QAT: losses equal
    to 1e-6 relative, weights to 1e-5 (floating-point summation order differs), conv biases that
    feed BatchNorm to 2·lr per step; rank 1 prints nothing."""
    logs = tmp_path / "logs"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        f"--log-dir={logs}",
        "--redirects=3",
        str(WORKER),
        str(tmp_path / "two"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    (tmp_path / "two").mkdir()
    done = subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one = run(tmp_path / "one")
    two = torch.load(tmp_path / "two" / "result.pt", weights_only=True)
    assert (one["world_size"], two["world_size"]) == (1, 2)

    for a, b in zip(one["history"], two["history"], strict=True):
        np.testing.assert_allclose(list(b.values()), list(a.values()), rtol=1e-6)
    for key in ("distill_history", "qat_history"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-6)

    steps = TRAIN.epochs * -(-50 // TRAIN.batch_size)
    gauge = _feeding_batchnorm(VAE(CONFIG)) | _feeding_batchnorm(VAE(CONFIG).encoder)
    for key in ("vae", "student", "qat"):
        for name, weight in one[key].items():
            if weight.is_floating_point():
                limit = 2 * TRAIN.learning_rate * steps if name in gauge else 1e-5
                difference = (weight - two[key][name]).abs().max().item()
                assert difference <= limit, f"{key} {name}: {difference} > {limit}"

    # torchrun's per-rank logs: <log-dir>/<run>/attempt_0/<rank>/{stdout,stderr}.log
    rank0 = "".join(p.read_text() for p in logs.rglob("0/*.log"))
    rank1 = "".join(p.read_text() for p in logs.rglob("1/*.log"))
    assert "train epoch 2: loss" in rank0 and "distill epoch 2/2" in rank0  # log and bar
    assert "epoch" not in rank1  # no log lines or progress bars from rank 1
    assert [p.name for p in (tmp_path / "two" / "checkpoints").iterdir()] == ["vae.pt"]


def _plain_loop(data: np.ndarray, train: TrainConfig) -> tuple[VAE, list[float]]:
    """The training loop as it was before devices and torchrun: one process, no DataLoader."""
    torch.set_num_threads(train.threads)
    set_seeds(train.seed)
    model = VAE(CONFIG)
    optimiser = torch.optim.Adam(model.parameters(), lr=train.learning_rate)
    generator = np.random.default_rng(train.seed)
    losses = []
    for _ in range(train.epochs):
        order = generator.permutation(len(data))
        model.train()
        total = 0.0
        for start in range(0, len(order), train.batch_size):
            batch = to_tensor(data[np.sort(order[start : start + train.batch_size])])
            terms = vae_loss(model, batch, train.beta)
            optimiser.zero_grad()
            terms.total.backward()
            optimiser.step()
            total += terms.total.item() * len(batch)
        losses.append(total / len(order))
    return model.eval(), losses


def test_one_cpu_process_trains_bit_for_bit_as_the_plain_loop(tmp_path):
    data = np.random.default_rng(5).integers(0, 255, (40, 3, 16, 16), dtype=np.uint8)
    expected, losses = _plain_loop(data, TRAIN)
    model, history = train_vae(CONFIG, data, to_tensor, TRAIN, tmp_path / "vae.pt")
    assert [h["loss"] for h in history] == losses
    for name, weight in expected.state_dict().items():
        assert torch.equal(weight, model.state_dict()[name]), name


def test_devices_resolve_and_the_cpu_keeps_todays_settings():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    for bad in ("gpu", "cuda:x", "cpu:0"):
        with pytest.raises(DeviceError, match="--device must be"):
            resolve_device(bad)
    with pytest.raises(DeviceError, match="--amp needs a CUDA device"):
        setup("cpu", amp=True)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="sees no CUDA GPU"):
            resolve_device("cuda:0")
    cpu = setup("cpu")
    assert cpu == CPU and amp_dtype(cpu.device) is None
    assert cpu.loader_options()["num_workers"] == 0 and not cpu.loader_options()["pin_memory"]
    assert not cpu.grad_scaler().is_enabled() and not cpu.distributed and cpu.is_main


@pytest.mark.parametrize("module", ["training.pipeline", "training.compress.search"])
def test_training_entry_points_take_a_device(module, capsys):
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--device" in text and "--amp" in text and "auto|cpu|cuda|cuda:N" in text


def _tiny_training(tmp_path: Path, hardware: Hardware, name: str) -> list[dict[str, float]]:
    data = np.random.default_rng(0).integers(0, 255, (64, 3, 16, 16), dtype=np.uint8)
    train = TrainConfig(epochs=3, batch_size=16, learning_rate=3e-3, threads=1)
    model, history = train_vae(
        CONFIG, data, to_tensor, train, tmp_path / f"{name}.pt", hardware=hardware
    )
    assert next(model.parameters()).device.type == "cpu" and not model.training
    return history


@needs_cuda
def test_cuda_training_learns_and_returns_a_cpu_model(tmp_path):
    history = _tiny_training(tmp_path, setup("cuda", amp=False), "fp32")
    assert history[-1]["loss"] < history[0]["loss"]
    assert "cuda_rng" in torch.load(tmp_path / "fp32.pt", weights_only=True)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_trains_like_full_precision(tmp_path, dtype):
    """bf16, and fp16 with loss scaling (its scaler state is checkpointed): the loss falls and
    stays within 5 % of the full-precision run's."""
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    device = resolve_device("cuda")
    full = _tiny_training(tmp_path, Hardware(device), "fp32")
    mixed = _tiny_training(tmp_path, Hardware(device, dtype), "amp")
    assert mixed[-1]["loss"] < mixed[0]["loss"]
    assert abs(mixed[-1]["loss"] - full[-1]["loss"]) <= 0.05 * full[-1]["loss"]
    state = torch.load(tmp_path / "amp.pt", weights_only=True)
    assert ("scaler" in state) == (dtype == torch.float16)
