"""``vae``: the networks (plain ``nn.Module``s, no Lightning)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each latent dimension, in nats: ``(B, D) -> (B, D)``."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per row, in nats: ``(B, D) -> (B,)``."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I); differentiable in mu and logvar."""
    return mu + (0.5 * logvar).exp() * torch.randn_like(mu)


class VAENet(nn.Module):
    """Encoder: stride-2 Conv-BN-LeakyReLU stages -> flatten -> dense -> (mu, logvar).
    Decoder: dense -> reshape -> ConvTranspose-BN-LeakyReLU stages -> pixel logits.
    ``blocks`` > 0 adds that many residual blocks (torchvision's ``BasicBlock``: two 3x3
    convolutions and a skip) after every encoder stage and at every decoder resolution.

    ``(B, C, H, W)`` in [0, 1] -> logits ``(B, C, H, W)``, ``mu`` and ``logvar`` ``(B, D)``.
    """

    def __init__(
        self,
        in_channels: int,
        size: tuple[int, int],
        latent_dim: int,
        channels: list[int],
        hidden: int,
        negative_slope: float,
        blocks: int = 0,
    ) -> None:
        super().__init__()
        h, w = size[0] // 2 ** len(channels), size[1] // 2 ** len(channels)
        self.grid = (channels[-1], h, w)
        act = nn.LeakyReLU(negative_slope, inplace=True)
        enc, c = [], in_channels
        for c_out in channels:  # each stage halves H and W
            enc += [nn.Conv2d(c, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), act]
            enc += [BasicBlock(c_out, c_out) for _ in range(blocks)]
            c = c_out
        flat = channels[-1] * h * w
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(flat, hidden), act)
        self.to_stats = nn.Linear(hidden, 2 * latent_dim)
        self.from_latent = nn.Sequential(
            nn.Linear(latent_dim, hidden), act, nn.Linear(hidden, flat), act
        )
        dec, c = [BasicBlock(channels[-1], channels[-1]) for _ in range(blocks)], channels[-1]
        for c_out in reversed(channels[:-1]):  # coarse shape -> texture -> edges
            dec += [nn.ConvTranspose2d(c, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), act]
            dec += [BasicBlock(c_out, c_out) for _ in range(blocks)]
            c = c_out
        self.decoder = nn.Sequential(*dec, nn.ConvTranspose2d(c, in_channels, 4, 2, 1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=-1)
        return mu, logvar.clamp(-30.0, 20.0)  # keeps exp() finite early in training

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(z).view(-1, *self.grid))

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar)), mu, logvar
