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
        muon_lr: float = 0.2,
        muon_momentum: float = 0.6,
        bn_bias_lr_scale: float = 1.0,
        ema_decay: float = 0.0,
        tta: str = "none",
        adversarial: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # muon: two optimizers, stepped in training_step (Lightning's manual optimization)
        self.automatic_optimization = optimizer != "muon"
        self._filters: list[tuple[nn.Parameter, nn.Parameter]] = []  # (matrix view, filters)
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
        loss = self._common_step(batch, "train", self.train_acc)
        if not self.automatic_optimization:
            self._muon_step(loss)
        return loss

    def _muon_step(self, loss: torch.Tensor) -> None:
        """One step of both optimizers and their schedules. Muon sees each filter bank as an
        ``(out, in x kh x kw)`` matrix that shares its storage; BatchNorm follows every filter
        bank, so only its direction matters, and its norm is held at sqrt(out) (as airbench's
        Muon does): ``muon_lr`` is then the relative size of a step."""
        opts = self.optimizers()
        self.net.zero_grad(set_to_none=True)
        for opt in opts:
            opt.zero_grad()
        self.manual_backward(loss)
        self.muon_update(opts)
        scheds = self.lr_schedulers()
        for sched in scheds if isinstance(scheds, list) else [scheds] if scheds else []:
            sched.step()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._common_step(batch, "val", self.val_acc)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).float().softmax(-1)

    def postprocess(self, logits: torch.Tensor, top_k: int = 5) -> list[list[dict]]:
        """Logits ``(B, K)`` -> per image, the ``top_k`` ``{"label", "probability"}`` dicts."""
        return top_labels(logits, self.hparams.class_names, top_k)

    def muon_update(self, opts) -> None:
        """After the backward pass: Muon's matrices take their filters' gradients, every
        optimizer in ``opts`` steps, then each filter bank's norm is set back to sqrt(out)."""
        for matrix, filters in self._filters:
            matrix.grad = _as_matrix(filters.grad, filters)
        for opt in opts:
            opt.step()
        with torch.no_grad():
            for matrix, _ in self._filters:
                matrix.mul_(len(matrix) ** 0.5 / matrix.norm())

    def conv_filters(self) -> list[nn.Parameter]:
        """The trainable convolution weights ``(out, in, kh, kw)`` (what ``muon`` trains)."""
        return [
            m.weight
            for m in self.net.modules()
            if isinstance(m, nn.Conv2d) and m.weight.requires_grad
        ]

    def param_groups(self) -> list[dict] | list[nn.Parameter]:
        """The trainable parameters (without the filters with ``muon``); with
        ``bn_bias_lr_scale`` != 1, BatchNorm biases apart with ``lr`` x scale and
        ``weight_decay`` / scale (the same decay per step)."""
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "muon":
            filters = {id(p) for p in self.conv_filters()}
            params = [p for p in params if id(p) not in filters]
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
        if hp.optimizer in ("sgd", "muon"):
            opt = torch.optim.SGD(
                groups, lr=hp.lr, momentum=hp.momentum, nesterov=True, weight_decay=hp.weight_decay
            )
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        return opt, self.schedule(opt, total_steps)

    def schedule(self, opt: torch.optim.Optimizer, total_steps: int):
        """``scheduler`` for ``opt`` over ``total_steps`` steps (peaking at each group's lr),
        or ``None``."""
        hp = self.hparams
        max_lr = [g["lr"] for g in opt.param_groups]
        if hp.scheduler == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total_steps)
        if hp.scheduler == "triangle":  # linear: 0.2 lr -> lr at 23% of the run -> 0.07 lr
            return torch.optim.lr_scheduler.OneCycleLR(
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
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
        return None

    def build_muon(self, total_steps: int):
        """``(torch.optim.Muon over matrix views of the filters, its schedule or None)``; the
        views are made here, after the module is on its device."""
        hp = self.hparams
        self._filters = []
        for filters in self.conv_filters():
            matrix = nn.Parameter(_as_matrix(filters.data, filters))
            if matrix.data_ptr() != filters.data_ptr():  # a copy would train nothing
                raise RuntimeError("a convolution's filters are not viewable as a matrix")
            self._filters.append((matrix, filters))
        opt = torch.optim.Muon(
            [m for m, _ in self._filters],
            lr=hp.muon_lr,
            momentum=hp.muon_momentum,
            nesterov=True,
            weight_decay=0.0,  # the norm is held fixed instead
        )
        return opt, self.schedule(opt, total_steps)

    def configure_optimizers(self):
        steps = int(self.trainer.estimated_stepping_batches)
        opt, sched = self.build_optimizer(steps)
        if self.hparams.optimizer == "muon":
            muon, muon_sched = self.build_muon(steps)
            return [opt, muon], [s for s in (sched, muon_sched) if s is not None]
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _as_matrix(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Filters ``(O, I, kh, kw)`` as an ``(O, I * kh * kw)`` matrix, columns in ``like``'s memory
    order (so a view of ``like`` itself; channels-last filters are ``(O, kh, kw, I)`` in memory).
    Orthogonalising a matrix does not depend on the order of its columns."""
    if like.is_contiguous():
        return t.reshape(len(t), -1)
    return t.permute(0, 2, 3, 1).reshape(len(t), -1)
