"""Where training runs: the device, mixed precision, data loading and the torchrun process group.

One `Hardware` value carries these settings to every training loop (VAE training, distillation,
QAT, adaptation). Its default is today's single CPU process, which trains exactly as before:
full precision, batches converted in the main process, no process group.

    --device auto|cpu|cuda|cuda:N  auto: CUDA when present, else the CPU
    --amp / --no-amp               mixed precision (default on with CUDA: bf16 where the GPU has
                                   it, else fp16 with a gradient scaler; always off on the CPU)
    --loader-workers N             batch-loading processes (default 4 per GPU process, 0 on CPU)

Under `torchrun` (WORLD_SIZE > 1) `setup` joins the process group — nccl on GPUs, gloo on CPUs —
and each process takes `cuda:LOCAL_RANK`; training.distributed shards the batches.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

DEVICE_CHOICES = "auto|cpu|cuda|cuda:N"
# Processes other than rank 0 wait in a collective while rank 0 alone calibrates, exports and
# bundles (minutes on the CPU), so the process group waits far longer than torch's default.
PROCESS_GROUP_TIMEOUT = timedelta(hours=3)
CUDA_LOADER_WORKERS = 4


class DeviceError(ValueError):
    """A device request that cannot be met; the message says why and what to pass instead."""


@dataclass(frozen=True)
class Hardware:
    """Settings of one training process."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: torch.dtype | None = None  # autocast dtype; None: full precision
    loader_workers: int = 0  # DataLoader worker processes; 0: batches built in this process
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs, progress bars and bundles."""
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision around a forward pass, or nothing (CPU, --no-amp)."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (its gradients underflow without it); a pass-through otherwise."""
        return torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)

    def loader_options(self) -> dict[str, object]:
        """DataLoader keywords: worker processes and pinned memory on CUDA, none on the CPU."""
        workers = self.loader_workers
        return {
            "num_workers": workers,
            "pin_memory": self.cuda,
            "persistent_workers": workers > 0,
            "prefetch_factor": 4 if workers > 0 else None,
        }

    def describe(self) -> dict[str, object]:
        """What a bundle's provenance records about where it was trained."""
        return {
            "device": str(self.device),
            "amp": str(self.amp).removeprefix("torch.") if self.amp else None,
            "world_size": self.world_size,
        }


CPU = Hardware()


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    """`spec` (auto|cpu|cuda|cuda:N) as a torch device; under torchrun, cuda is cuda:LOCAL_RANK."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    kind, _, index = spec.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise DeviceError(f"--device must be {DEVICE_CHOICES}, got '{spec}'")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {spec}: torch {torch.__version__} sees no CUDA GPU here "
            "(a CPU build of torch, or no driver); pass --device cpu or auto"
        )
    if index and local_rank is not None:
        raise DeviceError(
            f"--device {spec}: under torchrun every process takes cuda:LOCAL_RANK; "
            "pass --device cuda and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    number = int(index) if index else (local_rank or 0)
    if number >= torch.cuda.device_count():
        raise DeviceError(
            f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
            f"numbered 0..{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", number)


def amp_dtype(device: torch.device, enabled: bool | None = None) -> torch.dtype | None:
    """bf16 where the GPU computes in it, else fp16; None on the CPU or when `enabled` is False."""
    if device.type != "cuda" or enabled is False:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _torchrun() -> tuple[int, int, int | None]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, None) without it."""
    if "LOCAL_RANK" not in os.environ:
        return 0, 1, None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])


def setup(
    device: str = "auto", amp: bool | None = None, loader_workers: int | None = None
) -> Hardware:
    """The Hardware of this process; joins the torchrun process group when there is more than one.

    Call once per process, at the start of an entry point, and `shutdown` at its end.
    """
    rank, world_size, local_rank = _torchrun()
    resolved = resolve_device(device, local_rank)
    if amp and resolved.type != "cuda":
        raise DeviceError(f"--amp needs a CUDA device, got {resolved}")
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if resolved.type == "cuda" else "gloo",
            timeout=PROCESS_GROUP_TIMEOUT,
            device_id=resolved if resolved.type == "cuda" else None,
        )
    if loader_workers is None:
        per_process = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        loader_workers = min(CUDA_LOADER_WORKERS, per_process) if resolved.type == "cuda" else 0
    return Hardware(resolved, amp_dtype(resolved, amp), loader_workers, rank, world_size)


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --amp/--no-amp and --loader-workers on a training entry point."""
    group = parser.add_argument_group("hardware (docs/gpu.md; torchrun for several GPUs/machines)")
    group.add_argument(
        "--device",
        default="auto",
        metavar=DEVICE_CHOICES,
        help="where to train: auto picks CUDA when present (default auto)",
    )
    group.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        help="mixed precision on CUDA: bf16 where supported, else fp16 with loss scaling "
        "(default: on with CUDA, off on the CPU)",
    )
    group.add_argument(
        "--loader-workers",
        type=int,
        metavar="N",
        help=f"batch-loading processes per training process "
        f"(default {CUDA_LOADER_WORKERS} on CUDA, 0 on the CPU)",
    )


def from_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Hardware:
    """`setup` from parsed arguments; a bad request ends the program with a one-line error."""
    if args.loader_workers is not None and args.loader_workers < 0:
        parser.error(f"--loader-workers must be >= 0, got {args.loader_workers}")
    try:
        return setup(args.device, args.amp, args.loader_workers)
    except DeviceError as err:
        parser.error(str(err))


@contextlib.contextmanager
def session(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Iterator[Hardware]:
    """An entry point's Hardware from its arguments, for the length of its run: other ranks kept
    quiet, the process group left at the end."""
    hardware = from_arguments(args, parser)
    try:
        with quiet_unless_main(hardware):
            yield hardware
    finally:
        shutdown()


@contextlib.contextmanager
def quiet_unless_main(hardware: Hardware) -> Iterator[None]:
    """Silence the prints and progress bars of every process but rank 0 (errors still show)."""
    if hardware.is_main:
        yield
        return
    with (
        open(os.devnull, "w") as null,
        contextlib.redirect_stdout(null),
        contextlib.redirect_stderr(null),
    ):
        yield
