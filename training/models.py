"""Torch VAEs of the two detectors. Only their encoders are exported and run onboard.

β-VAE (RTCSA 2024 baseline): conv 128/64/32/16 (k3, BatchNorm, LeakyReLU 0.1, max-pool 2) +
dense 2048/1000/250 → μ, logσ² (n=30); the decoder mirrors it with upsampling.
Flow VAE (RTCSA 2022): one per flow component, a stack of flows in, n=12.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import pairwise

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of one VAE; stored in checkpoints and bundles to rebuild it."""

    in_channels: int = 3
    height: int = 224
    width: int = 224
    conv_channels: tuple[int, ...] = (128, 64, 32, 16)
    dense: tuple[int, ...] = (2048, 1000, 250)
    latent: int = 30
    output: str = "sigmoid"  # "sigmoid" (images in [0,1], BCE) or "tanh" (flows in [-1,1], MSE)

    def __post_init__(self) -> None:
        factor = 2 ** len(self.conv_channels)
        if self.height % factor or self.width % factor:
            raise ValueError(
                f"input {self.width}x{self.height} must be divisible by {factor} "
                f"({len(self.conv_channels)} poolings)"
            )

    @property
    def bottleneck(self) -> tuple[int, int, int]:
        factor = 2 ** len(self.conv_channels)
        return self.conv_channels[-1], self.height // factor, self.width // factor

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> VAEConfig:
        data = dict(data)
        data["conv_channels"] = tuple(data["conv_channels"])  # type: ignore[arg-type]
        data["dense"] = tuple(data["dense"])  # type: ignore[arg-type]
        return cls(**data)  # type: ignore[arg-type]


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1), nn.MaxPool2d(2)
    )


def _deconv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2),
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.1),
    )


def _mlp(sizes: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for cin, cout in pairwise(sizes):
        layers += [nn.Linear(cin, cout), nn.LeakyReLU(0.1)]
    return layers


class Encoder(nn.Module):
    """x → (μ, logσ²). The part that ships: exported to ONNX with outputs `mu` and `logvar`."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        channels = [config.in_channels, *config.conv_channels]
        c, h, w = config.bottleneck
        self.features = nn.Sequential(
            *[_conv_block(a, b) for a, b in pairwise(channels)], nn.Flatten()
        )
        self.dense = nn.Sequential(*_mlp([c * h * w, *config.dense]))
        self.head = nn.Linear(config.dense[-1], 2 * config.latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.dense(self.features(x))).chunk(2, dim=1)
        return mu, logvar


class Decoder(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c, h, w = config.bottleneck
        self.dense = nn.Sequential(*_mlp([config.latent, *reversed(config.dense), c * h * w]))
        self.unflatten = nn.Unflatten(1, (c, h, w))
        channels = list(reversed(config.conv_channels))
        self.features = nn.Sequential(*[_deconv_block(a, b) for a, b in pairwise(channels)])
        self.out = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(channels[-1], config.in_channels, 3, padding=1)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (sigmoid output) or pre-activations (tanh output) of the reconstruction."""
        return self.out(self.features(self.unflatten(self.dense(z))))


class VAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`noise`: the training sample's N(0, 1) draw (drawn here when None)."""
        mu, logvar = self.encoder(x)
        if noise is None and self.training:
            noise = torch.randn_like(mu)
        z = mu + noise * torch.exp(0.5 * logvar) if self.training else mu
        return self.decoder(z), mu, logvar


@dataclass(frozen=True)
class LossTerms:
    total: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def vae_loss(
    model: VAE, x: torch.Tensor, beta: float, noise: torch.Tensor | None = None
) -> LossTerms:
    """Per-sample reconstruction + β·KL (summed over pixels and latent dims,
    averaged over the batch); `noise` as in VAE.forward."""
    recon, mu, logvar = model(x, noise)
    batch = x.shape[0]
    if model.config.output == "sigmoid":
        reconstruction = F.binary_cross_entropy_with_logits(recon, x, reduction="sum") / batch
    else:
        reconstruction = F.mse_loss(torch.tanh(recon), x, reduction="sum") / batch
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch
    return LossTerms(reconstruction + beta * kl, reconstruction, kl)
