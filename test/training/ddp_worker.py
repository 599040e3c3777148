"""Tiny trainings for test_distributed.py, run as they are under torchrun or in one process.

    torchrun --standalone --nproc_per_node=2 test/training/ddp_worker.py OUT
    python test/training/ddp_worker.py OUT      # (or `run(OUT)`: one process)

Trains a VAE for one epoch and resumes it to two from rank 0's checkpoint, distils a student and
fine-tunes another one quantization-aware, on the CPU; rank 0 saves weights and histories to
OUT/result.pt.
Batches of 15 from 50 rows split unevenly over two processes (8 + 7, then 3 + 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from training.compress.distill import distill, new_student
from training.compress.qat import qat_finetune
from training.device import setup, shutdown
from training.models import VAEConfig
from training.trainer import TrainConfig, train_vae

CONFIG = VAEConfig(height=16, width=16, conv_channels=(4, 4), dense=(16,), latent=4)
TRAIN = TrainConfig(epochs=2, batch_size=15, threads=1)


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).float().div_(255.0)


def run(out: Path) -> dict[str, object]:
    """The trainings on this process's Hardware; what rank 0 saves (every rank returns it)."""
    hardware = setup("cpu")
    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, (50, 3, 16, 16), dtype=np.uint8)
    targets = tuple(rng.normal(size=(50, 4)).astype(np.float32) for _ in range(2))
    checkpoint = out / "checkpoints" / "vae.pt"
    first = TrainConfig(epochs=1, batch_size=TRAIN.batch_size, threads=1)
    train_vae(CONFIG, data, to_tensor, first, checkpoint, hardware=hardware)
    vae, history = train_vae(CONFIG, data, to_tensor, TRAIN, checkpoint, hardware=hardware)
    student, distill_history = distill(
        new_student(CONFIG, 0), data, to_tensor, targets, TRAIN, hardware=hardware
    )
    qat, qat_history = qat_finetune(  # from an untrained student, the same on both sides
        new_student(CONFIG, 1), data, to_tensor, targets, TRAIN, hardware=hardware
    )
    result = {
        "vae": vae.state_dict(),
        "history": history,
        "student": student.state_dict(),
        "distill_history": distill_history,
        "qat": qat.state_dict(),
        "qat_history": qat_history,
        "world_size": hardware.world_size,
    }
    if hardware.is_main:
        torch.save(result, out / "result.pt")
    shutdown()
    return result


if __name__ == "__main__":
    run(Path(sys.argv[1]))
