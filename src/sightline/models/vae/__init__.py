"""``vae``: a convolutional variational autoencoder (beta-VAE) over pixels in [0, 1]."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.distributions import ContinuousBernoulli

from sightline.config import ImageDataConfig, ModelParams, ScoreConfig, Strict, TrainerConfig
from sightline.data.images import ImageDataModule
from sightline.data.preprocess import ImagePreprocess
from sightline.models.generative import (
    check_count,
    check_downsampling,
    draw_latents,
    image_datamodule,
    samples_to_pil,
)
from sightline.spec import ModelSpec


class VAEConfig(Strict):
    """``models.vae.model``: every key is a ``VAEModule`` argument."""

    latent_dim: int = Field(16, ge=1, le=1024)
    beta: float = Field(1.0, gt=0.0, le=1000.0)  # weight of the KL term (1 = the true ELBO)
    likelihood: Literal["bernoulli", "continuous_bernoulli"] = "bernoulli"
    channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1, max_length=5)
    hidden: int = Field(256, gt=0)  # dense layer between the conv stack and the latent
    negative_slope: float = Field(0.2, ge=0.0)
    lr: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_samples: int = Field(256, ge=1, le=10000)  # the most images one sample() call may make


class VAEParams(ModelParams):
    upstream: str = "models/classifier"  # the classifier whose features score the samples
    data: ImageDataConfig = ImageDataConfig()
    model: VAEConfig = VAEConfig()
    score: ScoreConfig = ScoreConfig()
    trainer: TrainerConfig = TrainerConfig()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per row, in nats: ``(B, D) -> (B,)``."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I); differentiable in mu and logvar."""
    return mu + (0.5 * logvar).exp() * torch.randn_like(mu)


class VAENet(nn.Module):
    """Encoder: stride-2 Conv-BN-LeakyReLU stages -> flatten -> dense -> (mu, logvar).
    Decoder: dense -> reshape -> ConvTranspose-BN-LeakyReLU stages -> pixel logits.

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
    ) -> None:
        super().__init__()
        h, w = size[0] // 2 ** len(channels), size[1] // 2 ** len(channels)
        self.grid = (channels[-1], h, w)
        act = nn.LeakyReLU(negative_slope, inplace=True)
        enc, c = [], in_channels
        for c_out in channels:  # each stage halves H and W
            enc += [nn.Conv2d(c, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), act]
            c = c_out
        flat = channels[-1] * h * w
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(flat, hidden), act)
        self.to_stats = nn.Linear(hidden, 2 * latent_dim)
        self.from_latent = nn.Sequential(
            nn.Linear(latent_dim, hidden), act, nn.Linear(hidden, flat), act
        )
        dec, c = [], channels[-1]
        for c_out in reversed(channels[:-1]):  # coarse shape -> texture -> edges
            dec += [nn.ConvTranspose2d(c, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), act]
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


class VAEModule(L.LightningModule):
    """LightningModule for ``VAENet``; loss = reconstruction NLL + beta * KL, per image in nats.

    Args:
        class_names: label names of the training data (for pictures and scoring).
        preprocess: ``ImagePreprocess.to_dict()``; maps pixels to [0, 1] (mean 0, std 1).
        The rest: see ``VAEConfig``.
    """

    def __init__(
        self,
        class_names: list[str],
        preprocess: dict,
        latent_dim: int = 16,
        beta: float = 1.0,
        likelihood: str = "bernoulli",
        channels: list[int] = (32, 64),
        hidden: int = 256,
        negative_slope: float = 0.2,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        max_samples: int = 256,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.preprocess = ImagePreprocess.from_dict(preprocess)
        self.net = VAENet(
            self.preprocess.channels,
            self.preprocess.size,
            latent_dim,
            list(channels),
            hidden,
            negative_slope,
        )

    def reconstruction_nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) summed over pixels, per image ``(B,)``, in nats."""
        logits = logits.float()
        if self.hparams.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            nll = -ContinuousBernoulli(logits=logits, validate_args=False).log_prob(x)
        return nll.flatten(1).sum(-1)

    def mean_image(self, logits: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean in [0, 1] (for the continuous Bernoulli this is not sigmoid)."""
        logits = logits.float()
        if self.hparams.likelihood == "bernoulli":
            return logits.sigmoid()
        return ContinuousBernoulli(logits=logits, validate_args=False).mean

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(recon, kl, mu)`` per image for a batch in [0, 1] (one posterior sample)."""
        logits, mu, logvar = self.net(x)
        return self.reconstruction_nll(logits, x), kl_divergence(mu.float(), logvar.float()), mu

    def _common_step(self, batch, stage: str) -> torch.Tensor:
        x, _ = batch
        recon, kl, _ = self.terms(x)
        loss = (recon + self.hparams.beta * kl).mean()
        on_step = stage == "train"
        for key, value in (
            ("loss", loss),
            ("nelbo", (recon + kl).mean()),
            ("recon", recon.mean()),
            ("kl", kl.mean()),
        ):
            self.log(
                f"{stage}/{key}",
                value,
                on_step=on_step,
                on_epoch=True,
                sync_dist=True,
                prog_bar=key == "nelbo",
            )
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._common_step(batch, "val")

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, check: bool = True
    ) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in [0, 1] decoded from z ~ N(0, I).

        Args:
            n: how many; 1..``max_samples`` (``InputError`` otherwise) unless ``check=False``.
            generator: a CPU ``torch.Generator``; the same seed gives the same images.
        """
        z = draw_latents(self, n, generator, check)
        return self.mean_image(self.net.decode(z))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior means ``(B, D)`` of images in [0, 1]."""
        return self.net.encode(x.to(self.device))[0]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> reconstructions decoded from the posterior mean."""
        return self.mean_image(self.net.decode(self.encode(x)))

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int = 10) -> torch.Tensor:
        """Decode ``steps`` points on the line between the latent means of ``a`` and ``b``
        (each ``(C, H, W)`` in [0, 1]); ``(steps, C, H, W)``, endpoints included."""
        check_count(steps, self.hparams.max_samples, "interpolation steps")
        mu = self.encode(torch.stack([a, b]))
        t = torch.linspace(0, 1, steps, device=mu.device)[:, None]
        return self.mean_image(self.net.decode((1 - t) * mu[0] + t * mu[1]))

    @torch.no_grad()
    def postprocess(self, images: torch.Tensor) -> list:
        """Images in [0, 1] ``(B, C, H, W)`` -> PIL images."""
        return samples_to_pil(images)


def _datamodule(section: VAEParams, data_dir, seed: int) -> ImageDataModule:
    return image_datamodule(section.data, data_dir, seed, pixel_range=(0.0, 1.0))


def _module_kwargs(section: VAEParams, dm: ImageDataModule) -> dict:
    m = section.model
    check_downsampling(
        dm.preprocess.size, len(m.channels), "models.vae.model.channels", section.data.dataset
    )
    return {**m.model_dump(), "class_names": dm.class_names, "preprocess": dm.preprocess.to_dict()}


SPEC = ModelSpec(
    name="vae",
    module=VAEModule,
    params=VAEParams,
    datamodule=_datamodule,
    module_kwargs=_module_kwargs,
    monitor="val/nelbo",
    mode="min",
)
