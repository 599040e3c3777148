"""A resumable VAE training loop: fixed seeds, tqdm progress, a checkpoint after every epoch.

It runs on any device and data-parallel under torchrun (training.device, training.distributed);
on one CPU process it trains as it always has, bit for bit.

Checkpoints hold only tensors and plain Python values and are loaded with `weights_only=True`,
so nothing in them is unpickled as code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.device import CPU, Hardware
from training.distributed import (
    Batch,
    GlobalBatches,
    batch_loader,
    from_main,
    local,
    parallel,
    run_epoch,
)
from training.models import VAE, VAEConfig, vae_loss


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-3
    beta: float = 1.4
    seed: int = 0
    threads: int = 2


def set_seeds(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


class _Objective(nn.Module):
    """The VAE's loss as one module, so DistributedDataParallel sees the whole forward pass."""

    def __init__(self, vae: VAE, beta: float) -> None:
        super().__init__()
        self.vae, self.beta = vae, beta

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        terms = vae_loss(self.vae, x, self.beta, noise)
        return terms.total, terms.reconstruction, terms.kl


def train_vae(
    config: VAEConfig,
    inputs: np.ndarray,
    to_tensor: Callable[[np.ndarray], torch.Tensor],
    train: TrainConfig,
    checkpoint: Path,
    desc: str = "train",
    hardware: Hardware = CPU,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[VAE, list[dict[str, float]]]:
    """Train a VAE on `inputs` (N, C, H, W; converted batch-wise by `to_tensor`) on `hardware`.

    Resumes from `checkpoint` when it exists and matches `config` (under torchrun rank 0 reads it
    and sends it to the others, so it need not be on a shared disk); returns the model on the CPU
    in eval mode and the per-epoch history (mean loss, reconstruction and KL per sample).
    `on_epoch(epoch, seconds)` hears of every epoch trained (training.bench_device times them).
    """
    torch.set_num_threads(train.threads)
    set_seeds(train.seed)
    model = VAE(config)
    objective = parallel(_Objective(model, train.beta), hardware)
    optimiser = torch.optim.Adam(model.parameters(), lr=train.learning_rate)
    scaler = hardware.grad_scaler()
    history: list[dict[str, float]] = []
    state = None
    if hardware.is_main and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = from_main(state, hardware)
    if state is not None and state["config"] == config.to_dict():
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        history = state["history"]
        torch.set_rng_state(state["rng"])
        if hardware.cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], hardware.device)
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
    if hardware.is_main:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    sampler = GlobalBatches(len(inputs), train.batch_size, train.seed, hardware)
    loader = batch_loader(inputs, to_tensor, sampler, hardware)

    def loss_terms(batch: Batch) -> tuple[torch.Tensor, ...]:
        x = batch.inputs.to(hardware.device, non_blocking=True)
        # Noise for the whole global batch, from the same generator state on every process.
        noise = torch.randn((batch.total, config.latent), device=hardware.device)
        with hardware.autocast():
            return objective(x, noise[batch.start : batch.start + len(x)])

    for epoch in range(len(history), train.epochs):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        objective.train()
        means = run_epoch(
            loader,
            loss_terms,
            optimiser,
            scaler,
            hardware,
            f"{desc} epoch {epoch + 1}/{train.epochs}",
            ("loss", "reconstruction", "kl"),
        )
        history.append(dict(zip(("loss", "reconstruction", "kl"), means)))
        if hardware.cuda:
            torch.cuda.synchronize(hardware.device)
        seconds = time.perf_counter() - started
        if hardware.is_main:
            tqdm.write(
                f"{desc} epoch {epoch + 1}: "
                + ", ".join(f"{k} {v:.2f}" for k, v in history[-1].items())
                + f" ({seconds:.1f} s)"
            )
            _save(checkpoint, config, model, optimiser, scaler, history, hardware)
        if on_epoch is not None:
            on_epoch(epoch, seconds)
    return local(model), history


def _save(
    checkpoint: Path,
    config: VAEConfig,
    model: VAE,
    optimiser: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    history: list[dict[str, float]],
    hardware: Hardware,
) -> None:
    """Everything a resumed run needs, written whole or not at all (a rename)."""
    state = {
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimiser": optimiser.state_dict(),
        "history": history,
        "rng": torch.get_rng_state(),
    }
    if hardware.cuda:
        state["cuda_rng"] = torch.cuda.get_rng_state(hardware.device)
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    partial = checkpoint.with_name(checkpoint.name + ".partial")
    torch.save(state, partial)
    partial.replace(checkpoint)


@torch.no_grad()
def encode(
    model: VAE,
    inputs: np.ndarray,
    to_tensor: Callable[[np.ndarray], torch.Tensor],
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """(μ, logσ²) of every input row, with the model in eval mode."""
    model.eval()
    mus, logvars = [], []
    for start in range(0, len(inputs), batch_size):
        mu, logvar = model.encoder(to_tensor(inputs[start : start + batch_size]))
        mus.append(mu.numpy())
        logvars.append(logvar.numpy())
    return np.concatenate(mus), np.concatenate(logvars)
