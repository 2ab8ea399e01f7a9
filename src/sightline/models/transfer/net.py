"""``transfer``: the backbone's input preprocessing, the head, and backbone + head as one net."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sightline.data.preprocess import ImagePreprocess
from sightline.models.backbone import empty_backbone, layer_index, tap, tap_dim


@dataclass(frozen=True)
class BackbonePreprocess(ImagePreprocess):
    """The dataset's images (``to_uint8``: its channels and size, as in training) fed to the
    backbone as its ImageNet training did: upscaled to ``input_size`` (``interpolation``) and
    normalised with ``input_mean``/``input_std``. The features stage, training and serving all call
    ``normalize``; ``mean``/``std`` stay the dataset's (for pictures)."""

    input_size: tuple[int, int] = (224, 224)
    input_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    input_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"

    @classmethod
    def from_dict(cls, d: dict) -> BackbonePreprocess:
        return cls(
            int(d["channels"]),
            tuple(d["size"]),
            tuple(d["mean"]),
            tuple(d["std"]),
            tuple(d["input_size"]),
            tuple(d["input_mean"]),
            tuple(d["input_std"]),
            d["interpolation"],
        )

    def to_dict(self) -> dict:
        return {
            **super().to_dict(),
            "input_size": list(self.input_size),
            "input_mean": list(self.input_mean),
            "input_std": list(self.input_std),
            "interpolation": self.interpolation,
        }

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, h, w)`` (or floats in [0, 1]) -> the backbone's float input
        ``(B, 3, H, W)`` on ``x``'s device; grey images are repeated to three channels."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        return self.normalize_unit(x)

    def normalize_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] ``(B, C, h, w)`` -> the backbone's input (differentiable: the
        attacks and activation maximisation work in [0, 1] pixels)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode=self.interpolation, align_corners=False)
            x = x.clamp(0.0, 1.0)
        mean = torch.tensor(self.input_mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.input_std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def make_head(features: int, classes: int, head: str, hidden: int, dropout: float) -> nn.Module:
    """A linear layer, or a one-hidden-layer MLP (GELU), after dropout on the features."""
    if head == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(features, classes))
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, classes)
    )


class TransferNet(nn.Module):
    """Backbone (pooled features) + head.

    Args:
        backbone: a ``BACKBONES`` name; its weights are loaded apart (``TransferModule``).
        classes: output classes.
        head, hidden, dropout: see ``make_head``.
        trainable_blocks: the backbone's last blocks (of all its blocks up to the deepest
            tapped layer, counted from there, with its head conv when ``head`` is tapped) that
            train; the rest is frozen, BatchNorm statistics included.
        layers: the tapped layers whose pooled outputs the head reads (``backbone.tap``).
    """

    def __init__(
        self,
        backbone: str,
        classes: int,
        head: str = "linear",
        hidden: int = 512,
        dropout: float = 0.0,
        trainable_blocks: int = 0,
        layers: Sequence[str] = ("head",),
    ) -> None:
        super().__init__()
        self.backbone = empty_backbone(backbone)
        self.layers = tuple(layers)
        dim = tap_dim(self.backbone, self.layers)
        self.head = make_head(dim, classes, head, hidden, dropout)
        self.trainable_blocks = trainable_blocks
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        for module in self.trainable():
            for p in module.parameters():
                p.requires_grad_(True)
        self.train()  # a new nn.Module is in train mode throughout; the backbone must not be

    def trainable(self) -> list[nn.Module]:
        """The backbone's parts that train: the last ``trainable_blocks`` blocks the tapped
        layers depend on, and the head conv (with its BatchNorm) when it is tapped; none when
        ``trainable_blocks`` is 0."""
        if not self.trainable_blocks:
            return []
        deepest = max(layer_index(self.backbone, layer) for layer in self.layers)
        stages = self.backbone.blocks[:deepest]  # index N + 1 is the output of stage N
        blocks = [b for stage in stages for b in stage][-self.trainable_blocks :]
        if "head" in self.layers:
            blocks += [self.backbone.conv_head, self.backbone.bn2]
        return blocks

    def train(self, mode: bool = True) -> TransferNet:
        """The backbone stays in eval mode, its fine-tuned blocks included: BatchNorm keeps its
        ImageNet statistics (a small fine-tuning set's batch statistics would shift every
        feature the head was fitted on), while the unfrozen blocks' weights, BatchNorm scales
        and shifts included, still train."""
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's input ``(B, 3, H, W)`` -> pooled features ``(B, F)`` of the tapped
        layers (``backbone.tap``, as the features stage computes them)."""
        return tap(self.backbone, x, self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's input ``(B, 3, H, W)`` -> logits ``(B, K)``."""
        return self.head(self.features(x))
