"""``gan``: the params schema of ``models.gan`` and its defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sightline.config import ImageDataConfig, ModelParams, ScoreConfig, Strict, TrainerConfig

PROGRESS = "progress"  # artifacts/progress/epoch_XXX.npy: the fixed noise's samples per epoch


class GANConfig(Strict):
    """``models.gan.model``: every key is a ``GANModule`` argument."""

    latent_dim: int = Field(64, ge=1, le=1024)
    generator_channels: list[int] = Field(
        default_factory=lambda: [128, 64], min_length=1, max_length=5
    )
    discriminator_channels: list[int] = Field(
        default_factory=lambda: [64, 128], min_length=1, max_length=5
    )
    negative_slope: float = Field(0.2, ge=0.0)  # discriminator LeakyReLU
    lr_generator: float = Field(2e-4, gt=0.0)
    lr_discriminator: float = Field(2e-4, gt=0.0)
    beta1: float = Field(0.5, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    fixed_samples: int = Field(64, ge=1, le=1024)  # the fixed noise batch shown every epoch
    max_samples: int = Field(256, ge=1, le=10000)  # the most images one sample() call may make
    # Options for harder data (params/cifar10.yaml); each default keeps today's DCGAN.
    discriminator_norm: Literal["batch", "spectral"] = "batch"  # spectral: SNGAN, no BatchNorm
    loss: Literal["bce", "hinge"] = "bce"  # bce: non-saturating; hinge: SNGAN's
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)  # > 0: validate, export and sample an EMA
    conditional: bool = False  # both networks see the label (cGAN, projection discriminator)


class GANParams(ModelParams):
    upstream: str = "models/classifier"  # the classifier whose features give FID
    data: ImageDataConfig = ImageDataConfig()
    model: GANConfig = GANConfig()
    score: ScoreConfig = ScoreConfig()
    trainer: TrainerConfig = TrainerConfig()
