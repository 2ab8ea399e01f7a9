"""``clip``: the params schema of ``models.clip`` and its defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sightline.config import ModelParams, Strict, TrainerConfig


class ClipDataConfig(Strict):
    """``models.clip.data``: emoji pairs, plus Fashion-MNIST pairs from ``upstream``."""

    dataset: Literal["emoji"] = "emoji"
    fashion_pairs: int = Field(2000, ge=0)  # Fashion-MNIST pairs drawn per epoch; 0 = emoji only
    batch_size: int = Field(128, gt=1)
    eval_batch_size: int = Field(512, gt=0)
    num_workers: int = Field(0, ge=0)


class ClipConfig(Strict):
    """``models.clip.model``: every key is a ``ClipModule`` argument."""

    arch: str = "sightline-ViT-T-4-32"  # an open_clip model config name
    context_length: int = Field(24, ge=4, le=77)
    pretrained: str | None = None  # a local open_clip checkpoint to fine-tune from
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.1, ge=0.0)
    warmup_steps: int = Field(30, ge=0)
    max_texts: int = Field(256, ge=1)  # the most captions or labels one request may embed
    image_tower: str | None = None  # an ImageNet backbone for the image tower, locked (LiT)


class ClipParams(ModelParams):
    upstream: str = "data/prepared/fashion_mnist"  # Fashion-MNIST pairs and zero-shot test
    data: ClipDataConfig = ClipDataConfig()
    model: ClipConfig = ClipConfig()
    trainer: TrainerConfig = TrainerConfig()
