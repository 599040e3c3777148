"""Quantization-aware fine-tuning (QAT): teach an encoder weights that survive INT8.

Post-training INT8 rounds weights and activations the network never saw rounded; where that
costs AUROC, the encoder is fine-tuned with the rounding in the loop. BatchNorm is folded into
the convolutions first (as ONNX Runtime and TensorRT do at inference), then every conv and
linear layer sees fake-quantized INT8 inputs (per tensor, affine, range from a moving average of
what it observed) and INT8 weights (per output channel, symmetric) — the scheme of the static
QDQ quantizer in training.compress.quantize — while it is distilled to the teacher's latents
again (straight-through gradients). The result is a plain float encoder whose weights sit well
on the INT8 grid; it is exported and quantized by the same quantizer as every other candidate,
so QAT and post-training INT8 differ only in the weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from training.compress.distill import distill
from training.device import CPU, Hardware
from training.distributed import replace_modules
from training.models import Encoder
from training.trainer import TrainConfig

INT8_MIN, INT8_MAX = -128, 127


class FakeQuantized(nn.Module):
    """A conv or linear layer computing on INT8-rounded inputs and weights (training-time only)."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, momentum: float = 0.05) -> None:
        super().__init__()
        self.layer = layer
        self.momentum = momentum
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))

    def _observe(self, x: torch.Tensor) -> None:
        low, high = x.detach().min(), x.detach().max()
        if dist.is_initialized() and dist.get_world_size() > 1:  # the range of the global batch
            dist.all_reduce(low, op=dist.ReduceOp.MIN)
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not self.observed:
            self.low.copy_(low)
            self.high.copy_(high)
            self.observed.fill_(True)
        else:
            self.low.lerp_(low, self.momentum)
            self.high.lerp_(high, self.momentum)

    def _quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        low, high = (
            torch.clamp(self.low, max=0.0),
            torch.clamp(self.high, min=0.0),
        )  # zero stays exact
        scale = torch.clamp((high - low) / (INT8_MAX - INT8_MIN), min=1e-8)
        zero_point = torch.clamp(torch.round(INT8_MIN - low / scale), INT8_MIN, INT8_MAX).to(
            torch.int32
        )
        return torch.fake_quantize_per_tensor_affine(
            x, scale.reshape(1), zero_point.reshape(1), INT8_MIN, INT8_MAX
        )

    def _quantized_weight(self) -> torch.Tensor:
        weight = self.layer.weight
        reduce = tuple(range(1, weight.dim()))
        scale = torch.clamp(weight.detach().abs().amax(dim=reduce) / INT8_MAX, min=1e-8)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(
            weight, scale, zero_point, 0, INT8_MIN, INT8_MAX
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._observe(x)
        x = self._quantized_input(x)
        weight = self._quantized_weight()
        if isinstance(self.layer, nn.Conv2d):
            return F.conv2d(
                x,
                weight,
                self.layer.bias,
                self.layer.stride,
                self.layer.padding,
                self.layer.dilation,
                self.layer.groups,
            )
        return F.linear(x, weight, self.layer.bias)


def fold_batchnorm(encoder: Encoder) -> Encoder:
    """A copy with every BatchNorm folded into the convolution before it (same outputs in eval
    mode)."""
    folded = copy.deepcopy(encoder).eval()
    for block in folded.features:
        if (
            isinstance(block, nn.Sequential)
            and len(block) > 1
            and isinstance(block[0], nn.Conv2d)
            and isinstance(block[1], nn.BatchNorm2d)
        ):
            block[0] = fuse_conv_bn_eval(block[0], block[1])
            block[1] = nn.Identity()
    return folded


def quantization_aware(encoder: Encoder) -> Encoder:
    """A BatchNorm-folded copy whose conv and linear layers are FakeQuantized."""
    model = fold_batchnorm(encoder)
    replace_modules(
        model, lambda m: FakeQuantized(m) if isinstance(m, (nn.Conv2d, nn.Linear)) else None
    )
    return model


def strip_fake_quantization(encoder: Encoder) -> Encoder:
    """The plain float encoder inside a quantization-aware one (in place), ready for export."""
    replace_modules(encoder, lambda m: m.layer if isinstance(m, FakeQuantized) else None)
    return encoder.eval()


def qat_finetune(
    encoder: Encoder,
    inputs: np.ndarray,
    to_tensor: Callable[[np.ndarray], torch.Tensor],
    targets: tuple[np.ndarray, np.ndarray],
    train: TrainConfig,
    desc: str = "qat",
    hardware: Hardware = CPU,
) -> tuple[Encoder, list[float]]:
    """Distil a quantization-aware copy of `encoder` to the teacher's (μ, logσ²) `targets`; returns
    the float encoder (BatchNorm folded) with the fine-tuned weights and the per-epoch loss.
    Always in full precision: half-precision activations would blur the INT8 rounding it learns."""
    model, history = distill(
        quantization_aware(encoder),
        inputs,
        to_tensor,
        targets,
        train,
        desc=desc,
        hardware=replace(hardware, amp=None),
    )
    return strip_fake_quantization(model), history
