"""The batch loop every trainer shares, on one process or data-parallel under torchrun.

Each process holds the whole training array. Every epoch the batch order is drawn as one process
draws it (training.trainer's order: a seeded permutation, cut into batches of `batch_size`, each
sorted), and every global batch is split into contiguous shares, one per process. With
DistributedDataParallel averaging the gradients, BatchNorm statistics taken over the global batch
and the VAE's sampling noise drawn for the global batch on every process, N processes take the
same steps as one process with the same batch size — up to floating-point summation order
(test/training/test_distributed.py). A global batch smaller than the number of processes (the
last one of an epoch, at most) is skipped under torchrun: a process may not get an empty share.

torch's DistributedSampler is not used: it deals single samples round-robin from a torch
permutation and pads the last batch with repeated samples, so one process would no longer train
on today's order, and N processes would not take one process's steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from training.device import Hardware


@dataclass
class Batch:
    """This process's share of one global batch."""

    inputs: torch.Tensor
    indices: np.ndarray  # its rows of the training array
    start: int  # where the share begins within the global batch
    total: int  # size of the global batch

    def pin_memory(self) -> Batch:
        """Page-locked inputs, for an asynchronous copy to the GPU (DataLoader calls this)."""
        return replace(self, inputs=self.inputs.pin_memory())


class GlobalBatches(Sampler):
    """The shares of process `rank` in every global batch of an epoch (`set_epoch` first)."""

    def __init__(self, count: int, batch_size: int, seed: int, hardware: Hardware) -> None:
        self.count, self.batch_size, self.seed = count, batch_size, seed
        self.rank, self.world_size = hardware.rank, hardware.world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        generator = np.random.default_rng(self.seed)
        for _ in range(self.epoch + 1):  # one permutation per epoch, as one process draws them
            order = generator.permutation(self.count)
        batches = [
            np.sort(order[start : start + self.batch_size])
            for start in range(0, self.count, self.batch_size)
        ]
        return [b for b in batches if len(b) >= self.world_size]

    def __iter__(self) -> Iterator[tuple[np.ndarray, int, int]]:
        for batch in self._batches():
            size, extra = divmod(len(batch), self.world_size)
            start = self.rank * size + min(self.rank, extra)  # np.array_split's shares
            yield np.array_split(batch, self.world_size)[self.rank], start, len(batch)

    def __len__(self) -> int:
        return len(self._batches())


class _Rows(Dataset):
    def __init__(self, inputs: np.ndarray, to_tensor: Callable[[np.ndarray], torch.Tensor]):
        self.inputs, self.to_tensor = inputs, to_tensor

    def __getitem__(self, share: tuple[np.ndarray, int, int]) -> Batch:
        indices, start, total = share
        return Batch(self.to_tensor(self.inputs[indices]), indices, start, total)


def _as_is(batch: Batch) -> Batch:
    return batch


def batch_loader(
    inputs: np.ndarray,
    to_tensor: Callable[[np.ndarray], torch.Tensor],
    sampler: GlobalBatches,
    hardware: Hardware,
) -> DataLoader:
    """Batches of `inputs` in the sampler's order, converted by `to_tensor`; on the CPU in this
    process (as before), on CUDA in worker processes into pinned memory."""
    return DataLoader(
        _Rows(inputs, to_tensor),
        sampler=sampler,
        batch_size=None,
        collate_fn=_as_is,
        # Its own generator: DataLoader draws a worker seed on every epoch, which from torch's
        # global one would shift the VAE's sampling noise.
        generator=torch.Generator(),
        **hardware.loader_options(),
    )


class _AllReduce(torch.autograd.Function):
    """A sum over all processes whose gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        summed = x.clone()
        dist.all_reduce(summed)
        return summed

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.clone()
        dist.all_reduce(summed)
        return summed


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the global batch for gloo on CPUs, where torch's SyncBatchNorm refuses to
    run: per-channel sums and sums of squares are all-reduced through autograd, so the gradient
    of the shared statistics reaches every process as in torch's GPU implementation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        channels, wide = x.shape[1], x.double()
        count = wide.new_full((1,), x.numel() // channels)
        stats = _AllReduce.apply(
            torch.cat([wide.sum((0, 2, 3)), (wide * wide).sum((0, 2, 3)), count])
        )
        count = stats[-1]
        mean = stats[:channels] / count
        var = stats[channels:-1] / count - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                self.running_mean.lerp_(mean.to(x.dtype), self.momentum)
                self.running_var.lerp_((var * count / (count - 1)).to(x.dtype), self.momentum)
        shape = (1, channels, 1, 1)
        scale = torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        out = (x - mean.to(x.dtype).view(shape)) * scale
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


def replace_modules(module: nn.Module, wrap: Callable[[nn.Module], nn.Module | None]) -> None:
    """Replace (in place) every submodule for which `wrap` returns a module; recurse elsewhere."""
    for name, child in module.named_children():
        replacement = wrap(child)
        if replacement is not None:
            setattr(module, name, replacement)
        else:
            replace_modules(child, wrap)


def _batchnorm_as(layer: nn.Module, kind: type[nn.Module]) -> nn.Module:
    """`layer` (a BatchNorm) as a `kind` BatchNorm sharing its parameters and statistics."""
    copy = kind(layer.num_features, layer.eps, layer.momentum, layer.affine)
    for name, tensor in [*layer.named_parameters(recurse=False), *layer.named_buffers()]:
        setattr(copy, name, tensor)
    return copy.train(layer.training)


def parallel(module: nn.Module, hardware: Hardware) -> nn.Module:
    """`module` moved to the device; with several processes, its BatchNorms synchronised over the
    global batch and the module wrapped in DistributedDataParallel (forward through the result)."""
    module.to(hardware.device)
    if not hardware.distributed:
        return module
    synced = nn.SyncBatchNorm if hardware.cuda else CPUSyncBatchNorm
    replace_modules(
        module,
        lambda m: _batchnorm_as(m, synced) if type(m) is nn.BatchNorm2d else None,
    )
    return DistributedDataParallel(module, device_ids=[hardware.device] if hardware.cuda else None)


def local(module: nn.Module) -> nn.Module:
    """A trained module back as one process uses it: plain BatchNorm, on the CPU, in eval mode."""
    replace_modules(
        module,
        lambda m: (
            _batchnorm_as(m, nn.BatchNorm2d)
            if isinstance(m, (nn.SyncBatchNorm, CPUSyncBatchNorm))
            else None
        ),
    )
    return module.cpu().eval()


def global_sums(values: list[float], hardware: Hardware) -> list[float]:
    """`values` summed over all processes (themselves on one)."""
    if not hardware.distributed:
        return values
    summed = torch.tensor(values, dtype=torch.float64, device=hardware.device)
    dist.all_reduce(summed)
    return summed.tolist()


def from_main(value: object, hardware: Hardware) -> object:
    """Rank 0's `value` on every process (e.g. a checkpoint only rank 0 can read)."""
    if not hardware.distributed:
        return value
    box = [value if hardware.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_epoch(
    loader: DataLoader,
    loss_terms: Callable[[Batch], tuple[torch.Tensor, ...]],
    optimiser: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    hardware: Hardware,
    desc: str,
    names: tuple[str, ...],
) -> list[float]:
    """One epoch of steps; `loss_terms` gives per-sample means over a share, the first one is
    minimised. Returns each term's mean per sample over the epoch, the same on every process."""
    sums, seen = [0.0] * len(names), 0
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=not hardware.is_main)
    for batch in bar:
        terms = loss_terms(batch)
        size = len(batch.indices)
        values = global_sums([term.item() * size for term in terms], hardware)
        if not math.isfinite(values[0]):
            raise FloatingPointError(f"{desc}: loss became {values[0] / batch.total}")
        share = size * hardware.world_size / batch.total  # 1 unless shares differ in size
        optimiser.zero_grad()
        scaler.scale(terms[0] if share == 1 else terms[0] * share).backward()
        scaler.step(optimiser)
        scaler.update()
        sums = [a + b for a, b in zip(sums, values)]
        seen += batch.total
        bar.set_postfix({n: f"{v / batch.total:.3g}" for n, v in zip(names, values)})
    return [value / seen for value in sums]
