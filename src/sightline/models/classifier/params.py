"""``classifier``: the params schema of ``models.classifier`` and its defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sightline.config import ImageDataConfig, ModelParams, Strict, TrainerConfig
from sightline.robust import AttackConfig


def stage_block_counts(blocks_per_stage: int | list[int], channels: list[int]) -> list[int]:
    """One block count per stage; ``ValueError`` when they do not fit ``channels``."""
    counts = (
        blocks_per_stage
        if isinstance(blocks_per_stage, list)
        else [blocks_per_stage] * len(channels)
    )
    if len(counts) != len(channels) or min(counts) < 1:
        raise ValueError(
            f"blocks_per_stage {blocks_per_stage!r} needs one count >= 1 per entry of channels {channels!r}"
        )
    return counts


class AdversarialConfig(Strict):
    """``models.classifier.model.adversarial``: train on adversarial images (Madry et al.).

    Each training batch is replaced by its L-infinity adversarial version within ``eps`` (in
    255ths of the pixel range): ``steps`` 1 is FGSM from a random start with step 1.25 eps
    ("fast adversarial training", Wong et al. 2020), more is PGD with step 2.5 eps / steps.
    """

    eps: float = Field(0.0, ge=0.0, le=255.0)  # 0: clean training
    steps: int = Field(1, ge=1)


class ClassifierConfig(Strict):
    """``models.classifier.model``: every key is a ``ClassifierModule`` argument."""

    channels: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    blocks_per_stage: int | list[int] = 2  # one count for all stages, or one per stage
    pool: Literal["gap", "flatten", "max"] = "gap"  # global average / flatten / global max
    hidden: int = Field(128, ge=0)  # 0: pooled features go straight to the output layer
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    negative_slope: float = Field(0.1, ge=0.0)
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    scheduler: Literal["onecycle", "triangle", "cosine", "none"] = "onecycle"
    channels_last: bool = True
    # Options for harder data (params/cifar10.yaml); each default keeps today's net and training.
    # whiten: a 2x2 patch-whitening conv set from the data; patch: the same conv, learned
    stem: Literal["conv", "whiten", "patch"] = "conv"
    whiten_images: int = Field(5000, gt=0)  # training images whose patches set the whitening
    downsample: Literal["stride", "maxpool"] = "stride"  # stride-2 conv, or conv then 2x2 max pool
    activation: Literal["leaky_relu", "gelu"] = "leaky_relu"
    init: Literal["default", "identity"] = "default"  # identity: convs start as identity maps
    bn_momentum: float = Field(0.1, gt=0.0, le=1.0)  # running-statistics update (PyTorch's sense)
    bn_weight: bool = True  # False: BatchNorm scales fixed at 1 (only biases learn)
    logit_scale: float = Field(1.0, gt=0.0)  # multiplies the logits
    # sgd: Nesterov momentum, coupled weight decay; muon: the same for all but the convolution
    # filters, which torch.optim.Muon trains (orthogonalised steps, norm held at sqrt(out))
    optimizer: Literal["adamw", "sgd", "muon"] = "adamw"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd and muon's SGD part
    muon_lr: float = Field(0.2, gt=0.0)  # muon: the filters' relative step at the peak
    muon_momentum: float = Field(0.6, ge=0.0, lt=1.0)
    bn_bias_lr_scale: float = Field(1.0, gt=0.0)  # BatchNorm biases: lr x this, weight decay / this
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)  # > 0: validate and export an EMA of the weights
    tta: Literal["none", "flip", "flip_shift"] = "none"  # test-time augmentation in eval mode
    adversarial: AdversarialConfig = AdversarialConfig()  # adversarial training (eps 0: none)

    @model_validator(mode="after")
    def _blocks_match_channels(self) -> ClassifierConfig:
        stage_block_counts(self.blocks_per_stage, self.channels)
        return self


class ClassifierParams(ModelParams):
    data: ImageDataConfig = ImageDataConfig()
    model: ClassifierConfig = ClassifierConfig()
    attack: AttackConfig = AttackConfig()  # the adversarial evaluation
    trainer: TrainerConfig = TrainerConfig()
