"""``gan``: the LightningModule: training, validation and the checkpoint's hyperparameters."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from sightline.artifacts import artifacts_dir
from sightline.data.preprocess import ImagePreprocess
from sightline.errors import InputError
from sightline.models.gan.net import Discriminator, Generator
from sightline.models.gan.params import PROGRESS
from sightline.models.generative import (
    SampleScorer,
    check_count,
    draw_latents,
    generate_uint8,
    load_classifier,
    quantize,
    samples_to_pil,
    subset,
)


class GANModule(L.LightningModule):
    """DCGAN with the non-saturating (or hinge) loss, trained by manual optimisation (one D
    step, then one G step per batch). With ``conditional`` both networks see the label: the
    generator makes the batch's real labels, and ``sample`` takes the classes to draw.

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
        conditional: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.preprocess = ImagePreprocess.from_dict(preprocess)
        c, size = self.preprocess.channels, self.preprocess.size
        self.num_classes = len(class_names) if conditional else 0
        self.generator = Generator(latent_dim, c, size, list(generator_channels), self.num_classes)
        self.discriminator = Discriminator(
            c, size, list(discriminator_channels), negative_slope, discriminator_norm,
            self.num_classes,
        )  # fmt: skip

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Noise ``(B, D)`` (and, when conditional, labels ``(B,)``) -> images ``(B, C, H, W)``
        in [-1, 1]."""
        return self.generator(z, labels)

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
        real, y = batch
        y = y if self.num_classes else None  # conditional: fakes of the real batch's classes
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], self.hparams.latent_dim, device=self.device)
        fake = self.generator(z, y)

        # Discriminator: real -> 1, fake -> 0 (the generator is frozen by the toggle).
        self.toggle_optimizer(opt_d)
        d_real, d_fake = self.discriminator(real, y), self.discriminator(fake.detach(), y)
        d_loss = self.d_loss(d_real, d_fake)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        # Generator: with bce, non-saturating (maximise log D(G(z)), not minimise log(1 - D(G(z)))).
        self.toggle_optimizer(opt_g)
        g_loss = self.g_loss(self.discriminator(fake, y))
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
        real, y = batch  # how sure D is about held-out real images (FID is the selection metric)
        d_real = self.discriminator(real, y if self.num_classes else None)
        self.log("val/d_real", d_real.float().sigmoid().mean(), sync_dist=True)

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
        self,
        n: int,
        generator: torch.Generator | None = None,
        check: bool = True,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in [0, 1] from z ~ N(0, I).

        Args:
            n: how many; 1..``max_samples`` (``InputError`` otherwise) unless ``check=False``.
            generator: a CPU ``torch.Generator``; the same seed gives the same images.
            labels: conditional only: the class index of each image ``(n,)``; by default drawn
                uniformly from ``generator`` after z.
        """
        z = draw_latents(self, n, generator, check)
        return (self.generator(z, self._labels(n, generator, labels)).float() + 1) / 2

    def _labels(self, n: int, generator, labels) -> torch.Tensor | None:
        if not self.num_classes:
            if labels is not None:
                raise InputError("this gan is not class-conditional: it takes no labels")
            return None
        if labels is None:
            labels = torch.randint(self.num_classes, (n,), generator=generator)
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if labels.numel() != n or labels.min() < 0 or labels.max() >= self.num_classes:
            raise InputError(f"labels: {n} class indices in 0..{self.num_classes - 1} expected")
        return labels.to(self.device)

    @torch.no_grad()
    def interpolate_noise(
        self, steps: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images along the straight line between two random noise vectors ``(steps, C, H, W)``."""
        check_count(steps, self.hparams.max_samples, "interpolation steps")
        a, b = torch.randn(2, self.hparams.latent_dim, generator=generator).to(self.device)
        t = torch.linspace(0, 1, steps, device=self.device)[:, None]
        label = self._labels(1, generator, None)  # conditional: one class along the line
        labels = None if label is None else label.expand(steps)
        return (self.generator((1 - t) * a + t * b, labels).float() + 1) / 2

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
