"""``classifier``: the LightningModule: training, validation and the checkpoint's hyperparameters."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from sightline.data.preprocess import ImagePreprocess
from sightline.models import top_labels
from sightline.models.classifier.net import (
    ClassifierNet,
)


class ClassifierModule(L.LightningModule):
    """LightningModule for ``ClassifierNet``; rebuilt from its saved hyperparameters alone.

    Args:
        class_names: label names, index = class id.
        preprocess: ``ImagePreprocess.to_dict()`` of the training data.
        The rest: see ``ClassifierConfig``.
    """

    def __init__(
        self,
        class_names: list[str],
        preprocess: dict,
        channels: list[int] = (32, 64, 128),
        blocks_per_stage: int | list[int] = 2,
        pool: str = "gap",
        hidden: int = 128,
        dropout: float = 0.3,
        negative_slope: float = 0.1,
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        label_smoothing: float = 0.0,
        scheduler: str = "onecycle",
        channels_last: bool = True,
        stem: str = "conv",
        whiten_images: int = 5000,
        downsample: str = "stride",
        activation: str = "leaky_relu",
        init: str = "default",
        bn_momentum: float = 0.1,
        bn_weight: bool = True,
        logit_scale: float = 1.0,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        bn_bias_lr_scale: float = 1.0,
        ema_decay: float = 0.0,
        tta: str = "none",
        adversarial: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.preprocess = ImagePreprocess.from_dict(preprocess)
        self.net = ClassifierNet(
            self.preprocess.channels,
            self.preprocess.size,
            len(class_names),
            list(channels),
            blocks_per_stage,
            pool,
            hidden,
            dropout,
            negative_slope,
            stem,
            downsample,
            activation,
            init,
            bn_momentum,
            bn_weight,
            logit_scale,
        )
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.train_acc = MulticlassAccuracy(len(class_names), average="micro")
        self.val_acc = MulticlassAccuracy(len(class_names), average="micro")

    def setup(self, stage: str) -> None:
        """Before fitting (and before a resumed run's weights are loaded over them): set a
        whitening stem from the first ``whiten_images`` training images, the same on every rank."""
        if stage != "fit" or self.hparams.stem != "whiten":
            return
        train = self.trainer.datamodule.split("train").tensors[0][: self.hparams.whiten_images]
        self.net.stem.init_from(self.preprocess.normalize(train.to(self.device)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, C, H, W)`` -> logits ``(B, K)``; in eval mode, averaged over
        the ``tta`` views (the image and its mirror; with ``flip_shift`` also both shifted by
        one pixel diagonally, edges reflected)."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.training or self.hparams.tta == "none":
            return self.net(x)
        logits = (self.net(x) + self.net(x.flip(-1))) / 2
        if self.hparams.tta == "flip_shift":
            h, w = x.shape[-2:]
            padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
            shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
            views = [self.net(v) + self.net(v.flip(-1)) for v in shifted]
            logits = (logits + (views[0] + views[1]) / 4) / 2
        return logits

    def _common_step(self, batch, stage: str, metric) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        metric(logits, y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def adversarial_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A normalised batch -> its adversarial version (``adversarial``), crafted with
        captum's PGD on the pixels in [0, 1] against the current weights."""
        from captum.robust import PGD

        cfg = self.hparams.adversarial
        eps, steps = cfg["eps"] / 255.0, cfg["steps"]
        mean = torch.tensor(self.preprocess.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.preprocess.std, device=x.device).view(1, -1, 1, 1)
        pgd = PGD(lambda v: self((v - mean) / std), lower_bound=0.0, upper_bound=1.0)
        step = 1.25 * eps if steps == 1 else 2.5 * eps / steps
        unit = (x.float() * std + mean).clamp(0, 1)
        adv = pgd.perturb(unit, eps, step, steps, y, random_start=True, norm="Linf").detach()
        return ((adv - mean) / std).to(x.dtype)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if (self.hparams.adversarial or {}).get("eps", 0.0) > 0:
            x, y = batch
            batch = (self.adversarial_batch(x, y), y)
        return self._common_step(batch, "train", self.train_acc)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._common_step(batch, "val", self.val_acc)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).float().softmax(-1)

    def postprocess(self, logits: torch.Tensor, top_k: int = 5) -> list[list[dict]]:
        """Logits ``(B, K)`` -> per image, the ``top_k`` ``{"label", "probability"}`` dicts."""
        return top_labels(logits, self.hparams.class_names, top_k)

    def param_groups(self) -> list[dict] | list[nn.Parameter]:
        """The trainable parameters; with ``bn_bias_lr_scale`` != 1, BatchNorm biases apart
        with ``lr`` x scale and ``weight_decay`` / scale (the same decay per step)."""
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.bn_bias_lr_scale == 1.0:
            return params
        biases = {id(m.bias) for m in self.net.modules() if isinstance(m, nn.BatchNorm2d)}
        scale = hp.bn_bias_lr_scale
        return [
            {"params": [p for p in params if id(p) not in biases]},
            {
                "params": [p for p in params if id(p) in biases],
                "lr": hp.lr * scale,
                "weight_decay": hp.weight_decay / scale,
            },
        ]

    def build_optimizer(self, total_steps: int):
        """``(optimizer, per-step scheduler or None)`` for a run of ``total_steps`` steps."""
        hp = self.hparams
        groups = self.param_groups()
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                groups, lr=hp.lr, momentum=hp.momentum, nesterov=True, weight_decay=hp.weight_decay
            )
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        max_lr = [g["lr"] for g in opt.param_groups]
        if hp.scheduler == "onecycle":
            return opt, torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=max_lr, total_steps=total_steps
            )
        if hp.scheduler == "triangle":  # linear: 0.2 lr -> lr at 23% of the run -> 0.07 lr
            return opt, torch.optim.lr_scheduler.OneCycleLR(
                opt,
                max_lr=max_lr,
                total_steps=total_steps,
                pct_start=0.23,
                anneal_strategy="linear",
                div_factor=5.0,
                final_div_factor=1 / 0.35,
                cycle_momentum=False,
            )
        if hp.scheduler == "cosine":
            return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
        return opt, None

    def configure_optimizers(self):
        opt, sched = self.build_optimizer(int(self.trainer.estimated_stepping_batches))
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
