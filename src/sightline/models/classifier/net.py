"""``classifier``: the networks (plain ``nn.Module``s, no Lightning)."""

from __future__ import annotations

import torch
from torch import nn

from sightline.models.classifier.params import (
    stage_block_counts,
)


def activation_layer(name: str, slope: float) -> nn.Module:
    return nn.GELU() if name == "gelu" else nn.LeakyReLU(slope, inplace=True)


def conv_block(
    c_in: int,
    c_out: int,
    stride: int,
    slope: float,
    downsample: str = "stride",
    activation: str = "leaky_relu",
    bn_momentum: float = 0.1,
) -> nn.Sequential:
    """Conv3x3 -> BatchNorm -> activation; ``stride=2`` halves H and W, by the convolution's
    stride or (``downsample="maxpool"``) by a 2x2 max pool after it."""
    pooled = stride == 2 and downsample == "maxpool"
    layers = [nn.Conv2d(c_in, c_out, 3, stride=1 if pooled else stride, padding=1, bias=False)]
    if pooled:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out, momentum=bn_momentum), activation_layer(activation, slope)]
    return nn.Sequential(*layers)


def out_size(side: int, stride: int, downsample: str) -> int:
    """A side after one block of ``conv_block``."""
    if stride == 1:
        return side
    return side // 2 if downsample == "maxpool" else (side + 2 - 3) // 2 + 1


class ScaledLinear(nn.Linear):
    """A dense layer whose output is multiplied by a fixed ``scale`` (a smaller effective
    learning rate for the output layer, and softer initial logits)."""

    def __init__(self, in_features: int, out_features: int, scale: float) -> None:
        super().__init__(in_features, out_features)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


class WhiteningStem(nn.Module):
    """A 2x2 convolution whose filters whiten image patches, then the activation.

    Its filters are the eigenvectors of the patch covariance of training images, each scaled
    by ``1 / sqrt(eigenvalue + eps)`` and used with both signs (``2 * C * 4`` channels); they
    are set by ``init_from`` and stay fixed (only the bias learns). With ``learned=True`` the
    same convolution is an ordinary trained layer (the ablation of the whitening). Output
    side: input - 1.
    """

    def __init__(
        self, in_channels: int, activation: nn.Module, kernel: int = 2, learned: bool = False
    ) -> None:
        super().__init__()
        width = 2 * in_channels * kernel * kernel
        self.conv = nn.Conv2d(in_channels, width, kernel, padding=0, bias=True)
        self.conv.weight.requires_grad_(learned)
        self.act = activation

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    @torch.no_grad()
    def init_from(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the filters from normalised images ``(N, C, H, W)``; the bias starts at 0."""
        c, (kh, kw) = images.shape[1], self.conv.kernel_size
        patches = images.float().unfold(2, kh, 1).unfold(3, kw, 1)  # (N, C, H', W', kh, kw)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        order = eigenvalues.flip(0), eigenvectors.T.flip(0)
        filters = (order[1] / torch.sqrt(order[0] + eps)[:, None]).reshape(-1, c, kh, kw)
        self.conv.weight.copy_(torch.cat([filters, -filters]).to(self.conv.weight))
        self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class ClassifierNet(nn.Module):
    """Stages of conv blocks (each stage after the first downsamples by 2; after a whitening
    stem, every stage does), then global average pooling, flatten or global max pooling,
    Dense(hidden) and dropout (unless ``hidden`` is 0), Dense(num_classes) x ``logit_scale``.

    Input ``(B, C, H, W)``; output logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        in_channels: int,
        size: tuple[int, int],
        num_classes: int,
        channels: list[int],
        blocks_per_stage: int | list[int],
        pool: str,
        hidden: int,
        dropout: float,
        negative_slope: float,
        stem: str = "conv",
        downsample: str = "stride",
        activation: str = "leaky_relu",
        init: str = "default",
        bn_momentum: float = 0.1,
        bn_weight: bool = True,
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        counts = stage_block_counts(blocks_per_stage, channels)
        c, h, w = in_channels, *size
        self.stem: nn.Module = nn.Identity()
        if stem in ("whiten", "patch"):
            act = activation_layer(activation, negative_slope)
            self.stem = WhiteningStem(c, act, learned=stem == "patch")
            c, h, w = self.stem.out_channels, h - 1, w - 1
        stages = []
        for i, (c_out, n_blocks) in enumerate(zip(channels, counts, strict=True)):
            stride = 1 if i == 0 and stem == "conv" else 2
            block = (negative_slope, downsample, activation, bn_momentum)
            blocks = [conv_block(c, c_out, stride, *block)]
            blocks += [conv_block(c_out, c_out, 1, *block) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            c = c_out
            h, w = out_size(h, stride, downsample), out_size(w, stride, downsample)
        self.stages = nn.ModuleList(stages)
        self.pool = {"gap": nn.AdaptiveAvgPool2d(1), "max": nn.AdaptiveMaxPool2d(1)}.get(
            pool, nn.Identity()
        )
        features = c * h * w if pool == "flatten" else c
        head: list[nn.Module] = [nn.Flatten()]
        if hidden > 0:
            head += [nn.Linear(features, hidden), activation_layer(activation, negative_slope)]
            features = hidden
        self.head = nn.Sequential(*head, nn.Dropout(dropout))
        self.out = (
            nn.Linear(features, num_classes)
            if logit_scale == 1.0
            else ScaledLinear(features, num_classes, logit_scale)
        )
        for m in self.stages.modules():
            if isinstance(m, nn.Conv2d) and init == "identity":
                with torch.no_grad():  # the first in_channels filters pass their input through
                    nn.init.dirac_(m.weight[: min(m.in_channels, m.out_channels)])
            if isinstance(m, nn.BatchNorm2d) and not bn_weight:
                m.weight.requires_grad_(False)

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.stages[0][0][0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, D)`` (used for FID/KID by the generative models)."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))
