"""``vae``: the params schema of ``models.vae`` and its defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sightline.config import ImageDataConfig, ModelParams, ScoreConfig, Strict, TrainerConfig


class VAEConfig(Strict):
    """``models.vae.model``: every key is a ``VAEModule`` argument."""

    latent_dim: int = Field(16, ge=1, le=1024)
    beta: float = Field(1.0, gt=0.0, le=1000.0)  # weight of the KL term (1 = the true ELBO)
    likelihood: Literal["bernoulli", "continuous_bernoulli"] = "bernoulli"
    channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1, max_length=5)
    hidden: int = Field(256, gt=0)  # dense layer between the conv stack and the latent
    negative_slope: float = Field(0.2, ge=0.0)
    blocks: int = Field(0, ge=0, le=8)  # residual blocks per encoder stage / decoder resolution
    kl_warmup_epochs: float = Field(0.0, ge=0.0)  # the KL weight rises linearly from 0 to beta
    free_bits: float = Field(0.0, ge=0.0)  # nats per latent dimension the KL is not pushed below
    lr: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_samples: int = Field(256, ge=1, le=10000)  # the most images one sample() call may make


class IWAEConfig(Strict):
    """``models.vae.iwae``: the importance-weighted bound on the test negative log-likelihood.

    ``images`` test images (a seeded subset, the same number per class) get ``samples``
    posterior samples each; the cost is ``images x samples`` decoder passes.
    """

    samples: int = Field(1000, ge=1, le=100_000)  # k; Burda et al. publish k = 5,000
    images: int = Field(1000, ge=0)  # 0: no bound


class VAEParams(ModelParams):
    upstream: str = "models/classifier"  # the classifier whose features score the samples
    data: ImageDataConfig = ImageDataConfig()
    model: VAEConfig = VAEConfig()
    score: ScoreConfig = ScoreConfig()
    iwae: IWAEConfig = IWAEConfig()
    trainer: TrainerConfig = TrainerConfig()
