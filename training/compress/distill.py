"""Smaller encoders that reproduce the teacher's latent posterior: pruning and distillation.

The monitor only reads the encoder's posterior (μ, logσ²), so a compressed encoder is good when it
maps in-distribution inputs where the teacher does. Students — channel-pruned copies of the
teacher (torch-pruning, structured: whole channels and neurons go, so dense runtimes get faster)
or narrower / lower-resolution encoders trained from scratch — learn to match the teacher's μ and
logσ² (MSE) on the training frames. No decoder is needed, which keeps distillation cheap.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune
from tqdm import tqdm

from training.device import CPU, Hardware
from training.distributed import Batch, GlobalBatches, batch_loader, local, parallel, run_epoch
from training.models import Encoder, VAEConfig
from training.trainer import TrainConfig, set_seeds
from vae_ood_monitor.backends import make_encoder


def teacher_latents(
    onnx: Path,
    inputs: np.ndarray,
    to_float: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's (μ, logσ²) for every input row, from its exported ONNX (what ships)."""
    encoder = make_encoder("onnxruntime", onnx, threads=2)
    parts = [
        encoder(to_float(inputs[i : i + batch_size])) for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate([p["mu"] for p in parts]), np.concatenate([p["logvar"] for p in parts])


def new_student(config: VAEConfig, seed: int) -> Encoder:
    """A from-scratch student encoder, initialised from `seed`: torch seeds itself differently in
    every process, so an unseeded student (and the search's choice) would change from run to run."""
    set_seeds(seed)
    return Encoder(config)


def prune_encoder(
    encoder: Encoder,
    input_shape: tuple[int, int, int],
    ratio: float,
    layer_ratios: dict[str, float] | None = None,
) -> Encoder:
    """A structurally pruned copy: `ratio` of the channels / neurons of every conv and hidden dense
    layer removed by L2 magnitude (per-layer `layer_ratios` by module name override it); the
    output head keeps its 2·n outputs."""
    pruned = copy.deepcopy(encoder).eval()
    modules = dict(pruned.named_modules())
    per_layer = {modules[name]: value for name, value in (layer_ratios or {}).items()}
    pruner = tp.pruner.MetaPruner(
        pruned,
        torch.zeros(1, *input_shape),
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        pruning_ratio_dict=per_layer or None,
        ignored_layers=[pruned.head],
        output_transform=lambda outputs: outputs[0].sum() + outputs[1].sum(),
    )
    pruner.step()
    return pruned


def distill(
    student: Encoder,
    inputs: np.ndarray,
    to_tensor: Callable[[np.ndarray], torch.Tensor],
    targets: tuple[np.ndarray, np.ndarray],
    train: TrainConfig,
    desc: str = "distill",
    hardware: Hardware = CPU,
) -> tuple[Encoder, list[float]]:
    """Fit `student` to the teacher's (μ, logσ²) `targets` for `inputs` on `hardware`; returns it
    (on the CPU, in eval mode) and the per-epoch loss."""
    torch.set_num_threads(train.threads)
    set_seeds(train.seed)
    mu_t, logvar_t = (torch.from_numpy(t) for t in targets)
    net = parallel(student, hardware)
    optimiser = torch.optim.Adam(student.parameters(), lr=train.learning_rate)
    scaler = hardware.grad_scaler()
    sampler = GlobalBatches(len(inputs), train.batch_size, train.seed, hardware)
    loader = batch_loader(inputs, to_tensor, sampler, hardware)

    def loss_terms(batch: Batch) -> tuple[torch.Tensor]:
        x = batch.inputs.to(hardware.device, non_blocking=True)
        mu_ref, logvar_ref = (t[batch.indices].to(hardware.device) for t in (mu_t, logvar_t))
        with hardware.autocast():
            mu, logvar = net(x)
            return (F.mse_loss(mu, mu_ref) + F.mse_loss(logvar, logvar_ref),)

    history = []
    for epoch in range(train.epochs):
        net.train()
        sampler.set_epoch(epoch)
        (mse,) = run_epoch(
            loader,
            loss_terms,
            optimiser,
            scaler,
            hardware,
            f"{desc} epoch {epoch + 1}/{train.epochs}",
            ("mse",),
        )
        history.append(mse)
        if hardware.is_main:
            tqdm.write(f"{desc} epoch {epoch + 1}: latent MSE {history[-1]:.4f}")
    return local(student), history


def parameter_count(module: torch.nn.Module) -> int:
    """Non-zero parameters: what is left after structured *or* unstructured pruning."""
    return int(sum(int(torch.count_nonzero(p)) for p in module.parameters()))


def _prunable(encoder: Encoder) -> list[tuple[nn.Module, str]]:
    return [
        (m, "weight")
        for name, m in encoder.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not name.startswith("head")
    ]


def mask_encoder(encoder: Encoder, sparsity: float) -> Encoder:
    """A copy with global unstructured magnitude pruning: the `sparsity` share of smallest conv and
    hidden dense weights masked to zero. Shapes stay, so a dense runtime does the same work —
    the comparison point for structured pruning. Call `unmask` after fine-tuning."""
    masked = copy.deepcopy(encoder)
    prune.global_unstructured(
        _prunable(masked), pruning_method=prune.L1Unstructured, amount=sparsity
    )
    return masked


def unmask(encoder: Encoder) -> Encoder:
    """Make the masks permanent (zeros in the weights), ready for export."""
    for module, name in _prunable(encoder):
        if prune.is_pruned(module):
            prune.remove(module, name)
    return encoder
