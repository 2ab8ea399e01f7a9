"""``vae``: the LightningModule: training, validation and the checkpoint's hyperparameters."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.distributions import ContinuousBernoulli

from sightline.data.preprocess import ImagePreprocess
from sightline.models.generative import (
    check_count,
    draw_latents,
    samples_to_pil,
)
from sightline.models.vae.net import VAENet, kl_divergence, kl_per_dim


class VAEModule(L.LightningModule):
    """LightningModule for ``VAENet``; loss = reconstruction NLL + beta * KL, per image in nats.

    Two training-only KL schedules (the logged ``nelbo`` is always the true bound):
    ``kl_warmup_epochs`` ramps the KL weight from 0 to ``beta``; ``free_bits`` stops pushing a
    latent dimension's batch-mean KL below that many nats (Kingma et al., 2016).

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
        blocks: int = 0,
        kl_warmup_epochs: float = 0.0,
        free_bits: float = 0.0,
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
            blocks,
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

    def kl_weight(self, batch_idx: int) -> float:
        """``beta``, times the warm-up ramp while it lasts (training only)."""
        hp = self.hparams
        if hp.kl_warmup_epochs <= 0:
            return hp.beta
        epoch = self.current_epoch + batch_idx / max(1, self.trainer.num_training_batches)
        return hp.beta * min(1.0, epoch / hp.kl_warmup_epochs)

    def _common_step(self, batch, stage: str, batch_idx: int = 0) -> torch.Tensor:
        x, _ = batch
        logits, mu, logvar = self.net(x)
        mu, logvar = mu.float(), logvar.float()
        recon, kl = self.reconstruction_nll(logits, x), kl_divergence(mu, logvar)
        kl_term = kl
        if stage == "train" and self.hparams.free_bits > 0:  # per dimension, batch mean
            floored = kl_per_dim(mu, logvar).mean(0).clamp(min=self.hparams.free_bits)
            kl_term = floored.sum().expand_as(kl)
        weight = self.kl_weight(batch_idx) if stage == "train" else self.hparams.beta
        loss = (recon + weight * kl_term).mean()
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
        return self._common_step(batch, "train", batch_idx)

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
