"""A resumable VAE training loop: fixed seeds, tqdm progress, a checkpoint after every epoch.

Checkpoints hold only tensors and plain Python values and are loaded with `weights_only=True`,
so nothing in them is unpickled as code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

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


def train_vae(
    config: VAEConfig,
    inputs: np.ndarray,
    to_tensor: Callable[[np.ndarray], torch.Tensor],
    train: TrainConfig,
    checkpoint: Path,
    desc: str = "train",
) -> tuple[VAE, list[dict[str, float]]]:
    """Train a VAE on `inputs` (N, C, H, W; converted batch-wise by `to_tensor`).

    Resumes from `checkpoint` when it exists and matches `config`; returns the model in eval mode
    and the per-epoch history (mean loss, reconstruction and KL per sample).
    """
    torch.set_num_threads(train.threads)
    set_seeds(train.seed)
    model = VAE(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=train.learning_rate)
    history: list[dict[str, float]] = []
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        if state["config"] == config.to_dict():
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            history = state["history"]
            torch.set_rng_state(state["rng"])
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(train.seed)
    for epoch in range(train.epochs):
        order = generator.permutation(len(inputs))  # drawn every epoch, so resumed runs match
        if epoch < len(history):
            continue
        model.train()
        sums = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0}
        batches = range(0, len(order), train.batch_size)
        bar = tqdm(
            batches, desc=f"{desc} epoch {epoch + 1}/{train.epochs}", unit="batch", leave=False
        )
        for start in bar:
            batch = to_tensor(inputs[np.sort(order[start : start + train.batch_size])])
            terms = vae_loss(model, batch, train.beta)
            if not math.isfinite(terms.total.item()):
                raise FloatingPointError(
                    f"{desc}: loss became {terms.total.item()} in epoch {epoch + 1}"
                )
            optimiser.zero_grad()
            terms.total.backward()
            optimiser.step()
            size = len(batch)
            sums["loss"] += terms.total.item() * size
            sums["reconstruction"] += terms.reconstruction.item() * size
            sums["kl"] += terms.kl.item() * size
            bar.set_postfix(loss=f"{terms.total.item():.1f}", kl=f"{terms.kl.item():.1f}")
        history.append({k: v / len(order) for k, v in sums.items()})
        tqdm.write(
            f"{desc} epoch {epoch + 1}: "
            + ", ".join(f"{k} {v:.2f}" for k, v in history[-1].items())
        )
        torch.save(
            {
                "config": config.to_dict(),
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "history": history,
                "rng": torch.get_rng_state(),
            },
            checkpoint,
        )
    model.eval()
    return model, history


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
