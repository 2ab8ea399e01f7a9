"""``gan``: the networks (plain ``nn.Module``s, no Lightning)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Generator(nn.Module):
    """z ``(B, D)`` -> dense -> reshape -> ConvTranspose-BN-ReLU stages -> tanh ``(B, C, H, W)``."""

    def __init__(
        self, latent_dim: int, out_channels: int, size: tuple[int, int], channels: list[int]
    ) -> None:
        super().__init__()
        n = len(channels)
        self.grid = (channels[0], size[0] // 2**n, size[1] // 2**n)
        self.project = nn.Sequential(
            nn.Linear(latent_dim, int(np.prod(self.grid)), bias=False),
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

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.project(z))


class Discriminator(nn.Module):
    """``(B, C, H, W)`` in [-1, 1] -> stride-2 Conv-(BN)-LeakyReLU stages (no BN on the first,
    no pooling) -> flatten -> dense -> one logit ``(B,)``.

    With ``norm="spectral"`` no layer has BatchNorm: every convolution and the dense layer is
    spectrally normalised (PyTorch's ``spectral_norm`` parametrization: its weight divided by
    its largest singular value, estimated by one power iteration per training step).
    """

    def __init__(
        self,
        in_channels: int,
        size: tuple[int, int],
        channels: list[int],
        slope: float,
        norm: str = "batch",
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
