"""``gan``: the networks (plain ``nn.Module``s, no Lightning)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Generator(nn.Module):
    """z ``(B, D)`` -> dense -> reshape -> ConvTranspose-BN-ReLU stages -> tanh ``(B, C, H, W)``.

    With ``num_classes > 0`` it is class-conditional (cGAN): a learned ``D``-dimensional
    embedding of the label ``(B,)`` is concatenated to z before the dense layer.
    """

    def __init__(
        self,
        latent_dim: int,
        out_channels: int,
        size: tuple[int, int],
        channels: list[int],
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        n = len(channels)
        self.grid = (channels[0], size[0] // 2**n, size[1] // 2**n)
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        inputs = latent_dim * (2 if num_classes else 1)
        self.project = nn.Sequential(
            nn.Linear(inputs, int(np.prod(self.grid)), bias=False),
            nn.Unflatten(1, self.grid),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        )
        blocks = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):  # each doubles H, W
            blocks += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.blocks = nn.Sequential(
            *blocks, nn.ConvTranspose2d(channels[-1], out_channels, 4, 2, 1), nn.Tanh()
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)  # (B, 2D)
        return self.blocks(self.project(z))


class Discriminator(nn.Module):
    """``(B, C, H, W)`` in [-1, 1] -> stride-2 Conv-(BN)-LeakyReLU stages (no BN on the first,
    no pooling) -> flatten -> dense -> one logit ``(B,)``.

    With ``norm="spectral"`` no layer has BatchNorm: every convolution and the dense layer is
    spectrally normalised (PyTorch's ``spectral_norm`` parametrization: its weight divided by
    its largest singular value, estimated by one power iteration per training step).

    With ``num_classes > 0`` it is a projection discriminator (Miyato & Koyama 2018): the logit
    adds the inner product of the flattened features with a learned embedding of the label.
    """

    def __init__(
        self,
        in_channels: int,
        size: tuple[int, int],
        channels: list[int],
        slope: float,
        norm: str = "batch",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        spectral = norm == "spectral"
        wrap = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)
        layers, c = [], in_channels
        for i, c_out in enumerate(channels):
            layers.append(wrap(nn.Conv2d(c, c_out, 4, 2, 1, bias=i == 0 or spectral)))
            if i > 0 and not spectral:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(slope, inplace=True))
            c = c_out
        n = len(channels)
        flat = channels[-1] * (size[0] // 2**n) * (size[1] // 2**n)
        self.net = nn.Sequential(*layers, nn.Flatten(), wrap(nn.Linear(flat, 1)))
        self.embed = None
        if num_classes:  # small, as DCGAN's weights: N(0, 1) rows would swamp the real/fake logit
            embed = nn.Embedding(num_classes, flat)
            nn.init.normal_(embed.weight, std=0.02)
            self.embed = wrap(embed)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is None:
            return self.net(x).squeeze(-1)
        h = self.net[:-1](x)  # (B, F)
        return self.net[-1](h).squeeze(-1) + (self.embed(labels) * h).sum(-1)
