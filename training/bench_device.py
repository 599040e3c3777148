"""Time one training epoch of the β-VAE on the CPU and on CUDA, with and without mixed precision.

    python -m training.bench_device                        # CPU, CUDA fp32, CUDA AMP
    python -m training.bench_device --frames 2048 --repeats 5 --config paper224

The model and batch size are the training config's (`--config`, default: the shipped β-VAE at
112×112, batch 32); the frames are synthetic (seeded random uint8 images of its input size), so
no dataset is needed and every machine times the same work. Each variant trains one untimed
warm-up epoch (CUDA context, cuDNN's algorithm search), then `--repeats` timed epochs; the table
gives their median, frames per second and the speed-up over the CPU. CUDA rows are skipped, with
the reason, where torch sees no GPU. One process: it times a device, not torchrun's scaling.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from training.device import Hardware, amp_dtype, resolve_device, setup, shutdown
from training.pipeline import CONFIGS, _image_tensor
from training.trainer import train_vae


def variants(loader_workers: int | None) -> list[tuple[str, Hardware | str]]:
    """(name, Hardware) to time, or (name, why it is skipped)."""
    rows: list[tuple[str, Hardware | str]] = [("cpu fp32", setup("cpu"))]
    if not torch.cuda.is_available():
        reason = f"skipped: torch {torch.__version__} sees no CUDA GPU"
        return [*rows, ("cuda fp32", reason), ("cuda amp", reason)]
    cuda = setup("cuda", amp=False, loader_workers=loader_workers)
    rows.append(("cuda fp32", cuda))
    dtype = amp_dtype(resolve_device("cuda"))
    rows.append((f"cuda amp ({str(dtype).removeprefix('torch.')})", replace(cuda, amp=dtype)))
    return rows


def time_epochs(hardware: Hardware, config: str, frames: int, repeats: int) -> list[float]:
    """Seconds of each timed epoch (after one warm-up epoch)."""
    detector = CONFIGS[config]["bvae"]
    vae = detector.vae
    inputs = np.random.default_rng(0).integers(
        0, 256, (frames, vae.in_channels, vae.height, vae.width), dtype=np.uint8
    )
    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as work:
        train_vae(
            vae,
            inputs,
            _image_tensor,
            replace(detector.train, epochs=1 + repeats),
            Path(work) / "bench.pt",
            desc=f"bench {hardware.device}",
            hardware=hardware,
            on_epoch=lambda epoch, s: seconds.append(s) if epoch > 0 else None,
        )
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default")
    parser.add_argument("--frames", type=int, default=512, help="frames per epoch (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per variant")
    parser.add_argument("--loader-workers", type=int, metavar="N", help="as in training")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.repeats < 1:
        parser.error("--frames and --repeats must be >= 1")
    detector = CONFIGS[args.config]["bvae"]
    print(
        f"β-VAE {args.config}: {detector.vae.width}x{detector.vae.height}, batch "
        f"{detector.train.batch_size}, {args.frames} frames/epoch, median of {args.repeats} "
        f"epochs after 1 warm-up; CPU threads {detector.train.threads}"
    )
    rows, cpu_median = [], None
    for name, hardware in variants(args.loader_workers):
        if isinstance(hardware, str):
            rows.append(f"| {name} | {hardware} | | |")
            continue
        median = statistics.median(time_epochs(hardware, args.config, args.frames, args.repeats))
        cpu_median = cpu_median or median
        rows.append(
            f"| {name} | {median:.2f} | {args.frames / median:.1f} | {cpu_median / median:.1f}× |"
        )
    print("\n| variant | s per epoch | frames/s | speed-up over CPU |\n|---|---|---|---|")
    print("\n".join(rows))
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
