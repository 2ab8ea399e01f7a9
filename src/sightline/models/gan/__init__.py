"""``gan``: a DCGAN trained with Lightning manual optimisation; best checkpoint by validation FID.

Today's defaults are the DCGAN of Radford et al. (BatchNorm in both networks, the
non-saturating loss). Three options are there for a steadier game on harder data: a
spectrally normalised discriminator instead of BatchNorm (``discriminator_norm: spectral``,
SNGAN), the hinge loss, and an exponential moving average of the weights that validation,
checkpoints and sampling use (``ema_decay``). Each default keeps today's networks and training;
the README says what they did to the CIFAR-10 profile's 10-epoch run (they slowed it down).
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from sightline.artifacts import artifacts_dir
from sightline.config import ImageDataConfig, ModelParams, ScoreConfig, Strict, TrainerConfig
from sightline.data.images import ImageDataModule
from sightline.data.preprocess import ImagePreprocess
from sightline.models.generative import (
    SampleScorer,
    check_count,
    check_downsampling,
    draw_latents,
    generate_uint8,
    image_datamodule,
    load_classifier,
    quantize,
    samples_to_pil,
    subset,
)
from sightline.spec import ModelSpec

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


class GANParams(ModelParams):
    upstream: str = "models/classifier"  # the classifier whose features give FID
    data: ImageDataConfig = ImageDataConfig()
    model: GANConfig = GANConfig()
    score: ScoreConfig = ScoreConfig()
    trainer: TrainerConfig = TrainerConfig()


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


class GANModule(L.LightningModule):
    """DCGAN with the non-saturating (or hinge) loss, trained by manual optimisation (one D
    step, then one G step per batch).

    Args:
        class_names: label names of the training data (for scoring).
        preprocess: ``ImagePreprocess.to_dict()``; maps pixels to [-1, 1].
        The rest: see ``GANConfig``.
    """

    def __init__(
        self,
        class_names: list[str],
        preprocess: dict,
        latent_dim: int = 64,
        generator_channels: list[int] = (128, 64),
        discriminator_channels: list[int] = (64, 128),
        negative_slope: float = 0.2,
        lr_generator: float = 2e-4,
        lr_discriminator: float = 2e-4,
        beta1: float = 0.5,
        beta2: float = 0.999,
        fixed_samples: int = 64,
        max_samples: int = 256,
        discriminator_norm: str = "batch",
        loss: str = "bce",
        ema_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.preprocess = ImagePreprocess.from_dict(preprocess)
        c, size = self.preprocess.channels, self.preprocess.size
        self.generator = Generator(latent_dim, c, size, list(generator_channels))
        self.discriminator = Discriminator(
            c, size, list(discriminator_channels), negative_slope, discriminator_norm
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Noise ``(B, D)`` -> images ``(B, C, H, W)`` in [-1, 1]."""
        return self.generator(z)

    def _bce(self, logits: torch.Tensor, target: float) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            logits.float(), torch.full_like(logits.float(), target)
        )

    def d_loss(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        """The discriminator's loss on real and fake logits: real -> 1, fake -> 0 (``bce``), or
        ``mean(relu(1 - real)) + mean(relu(1 + fake))`` (``hinge``)."""
        if self.hparams.loss == "hinge":
            return F.relu(1 - d_real.float()).mean() + F.relu(1 + d_fake.float()).mean()
        return self._bce(d_real, 1.0) + self._bce(d_fake, 0.0)

    def g_loss(self, d_fake: torch.Tensor) -> torch.Tensor:
        """The generator's loss on fake logits: non-saturating ``-log D(G(z))`` (``bce``), or
        ``-mean(D(G(z)))`` (``hinge``)."""
        if self.hparams.loss == "hinge":
            return -d_fake.float().mean()
        return self._bce(d_fake, 1.0)

    def training_step(self, batch, batch_idx: int) -> None:
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], self.hparams.latent_dim, device=self.device)
        fake = self.generator(z)

        # Discriminator: real -> 1, fake -> 0 (the generator is frozen by the toggle).
        self.toggle_optimizer(opt_d)
        d_real, d_fake = self.discriminator(real), self.discriminator(fake.detach())
        d_loss = self.d_loss(d_real, d_fake)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        # Generator: with bce, non-saturating (maximise log D(G(z)), not minimise log(1 - D(G(z)))).
        self.toggle_optimizer(opt_g)
        g_loss = self.g_loss(self.discriminator(fake))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.log_dict(
            {
                "train/d_loss": d_loss,
                "train/g_loss": g_loss,
                "train/d_real": d_real.float().sigmoid().mean(),
                "train/d_fake": d_fake.float().sigmoid().mean(),
            },
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
        )

    def validation_step(self, batch, batch_idx: int) -> None:
        real, _ = batch  # how sure D is about held-out real images (FID is the selection metric)
        self.log("val/d_real", self.discriminator(real).float().sigmoid().mean(), sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        betas = (hp.beta1, hp.beta2)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.lr_generator, betas=betas)
        opt_d = torch.optim.Adam(
            self.discriminator.parameters(), lr=hp.lr_discriminator, betas=betas
        )
        return [opt_g, opt_d]

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, check: bool = True
    ) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in [0, 1] from z ~ N(0, I).

        Args:
            n: how many; 1..``max_samples`` (``InputError`` otherwise) unless ``check=False``.
            generator: a CPU ``torch.Generator``; the same seed gives the same images.
        """
        z = draw_latents(self, n, generator, check)
        return (self.generator(z).float() + 1) / 2

    @torch.no_grad()
    def interpolate_noise(
        self, steps: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images along the straight line between two random noise vectors ``(steps, C, H, W)``."""
        check_count(steps, self.hparams.max_samples, "interpolation steps")
        a, b = torch.randn(2, self.hparams.latent_dim, generator=generator).to(self.device)
        t = torch.linspace(0, 1, steps, device=self.device)[:, None]
        return (self.generator((1 - t) * a + t * b).float() + 1) / 2

    @torch.no_grad()
    def postprocess(self, images: torch.Tensor) -> list:
        """Images in [0, 1] ``(B, C, H, W)`` -> PIL images."""
        return samples_to_pil(images)


class ValidationFID(L.Callback):
    """Logs ``val/fid`` after each validation epoch: ``samples`` images from a fixed noise seed
    against as many validation images, on the project classifier's features."""

    def __init__(self, classifier_dir: str, samples: int, batch_size: int, seed: int) -> None:
        self.classifier_dir, self.samples, self.batch_size, self.seed = (
            classifier_dir,
            samples,
            batch_size,
            seed,
        )
        self.scorer: SampleScorer | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: GANModule) -> None:
        dm = trainer.datamodule
        clf = load_classifier(self.classifier_dir, dm.class_names, dm.preprocess, pl_module.device)
        self.scorer = SampleScorer(clf, full=False)
        val = subset(dm.split("val").tensors[0], self.samples, self.seed)
        self.samples = len(val)
        for batch in val.split(self.batch_size):
            self.scorer.update(batch, real=True)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: GANModule) -> None:
        if trainer.sanity_checking:
            return
        self.scorer.reset_fake()
        fake = generate_uint8(pl_module, self.samples, self.batch_size, self.seed + 1)
        for batch in fake.split(self.batch_size):
            self.scorer.update(batch, real=False)
        pl_module.log("val/fid", self.scorer.compute()["fid"], prog_bar=True)


class FixedNoiseProgress(L.Callback):
    """Saves the samples of one fixed noise batch (drawn once from the seed) after every
    validation epoch to ``artifacts/progress/epoch_XXX.npy`` (uint8 ``(N, C, H, W)``)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: GANModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        images = quantize(
            pl_module.sample(self.n, torch.Generator().manual_seed(self.seed), check=False)
        )
        out = artifacts_dir(trainer) / PROGRESS
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / f"epoch_{trainer.current_epoch:03d}.npy", images.cpu().numpy())


def _datamodule(section: GANParams, data_dir, seed: int) -> ImageDataModule:
    return image_datamodule(section.data, data_dir, seed, pixel_range=(-1.0, 1.0))


def _module_kwargs(section: GANParams, dm: ImageDataModule) -> dict:
    m, size, dataset = section.model, dm.preprocess.size, section.data.dataset
    check_downsampling(
        size, len(m.generator_channels), "models.gan.model.generator_channels", dataset
    )
    check_downsampling(
        size, len(m.discriminator_channels), "models.gan.model.discriminator_channels", dataset
    )
    return {**m.model_dump(), "class_names": dm.class_names, "preprocess": dm.preprocess.to_dict()}


def _callbacks(section: GANParams, dm: ImageDataModule, seed: int) -> list:
    """Validation FID and the fixed noise's samples; with ``ema_decay``, Lightning's EMA of the
    weights (and BatchNorm statistics) last, so that both callbacks see the average (it is
    swapped in before validation and back after every other callback's epoch end), the
    checkpoints hold it and training ends with it."""
    s = section.score
    callbacks: list[L.Callback] = [
        ValidationFID(section.upstream, s.val_samples, s.batch_size, seed),
        FixedNoiseProgress(section.model.fixed_samples, seed),
    ]
    if section.model.ema_decay > 0.0:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        callbacks.append(EMAWeightAveraging(decay=section.model.ema_decay))
    return callbacks


SPEC = ModelSpec(
    name="gan",
    module=GANModule,
    params=GANParams,
    datamodule=_datamodule,
    module_kwargs=_module_kwargs,
    monitor="val/fid",
    mode="min",
    callbacks=_callbacks,
)
