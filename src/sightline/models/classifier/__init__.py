"""``classifier``: a CNN image classifier (Conv-BN-LeakyReLU blocks, stride-2 downsampling)."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from sightline.config import ImageDataConfig, ModelParams, Strict, TrainerConfig
from sightline.data.images import ImageDataModule
from sightline.data.preprocess import ImagePreprocess
from sightline.spec import ModelSpec


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


class ClassifierConfig(Strict):
    """``models.classifier.model``: every key is a ``ClassifierModule`` argument."""

    channels: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    blocks_per_stage: int | list[int] = 2  # one count for all stages, or one per stage
    pool: Literal["gap", "flatten"] = "gap"
    hidden: int = Field(128, gt=0)
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    negative_slope: float = Field(0.1, ge=0.0)
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    scheduler: Literal["onecycle", "cosine", "none"] = "onecycle"
    channels_last: bool = True

    @model_validator(mode="after")
    def _blocks_match_channels(self) -> ClassifierConfig:
        stage_block_counts(self.blocks_per_stage, self.channels)
        return self


class ClassifierParams(ModelParams):
    data: ImageDataConfig = ImageDataConfig()
    model: ClassifierConfig = ClassifierConfig()
    trainer: TrainerConfig = TrainerConfig()


def conv_block(c_in: int, c_out: int, stride: int, slope: float) -> nn.Sequential:
    """Conv3x3 -> BatchNorm -> LeakyReLU; ``stride=2`` halves H and W."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(slope, inplace=True),
    )


class ClassifierNet(nn.Module):
    """Stages of conv blocks (channels double, each stage after the first downsamples by 2),
    then global average pooling or flatten, Dense(hidden), dropout, Dense(num_classes).

    Input ``(B, C, H, W)``; output logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        in_channels: int,
        size: tuple[int, int],
        num_classes: int,
        channels: list[int],
        blocks_per_stage: int | list[int],
        pool: str,
        hidden: int,
        dropout: float,
        negative_slope: float,
    ) -> None:
        super().__init__()
        counts = stage_block_counts(blocks_per_stage, channels)
        stages, c, h, w = [], in_channels, *size
        for i, (c_out, n_blocks) in enumerate(zip(channels, counts, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = [conv_block(c, c_out, stride, negative_slope)]
            blocks += [conv_block(c_out, c_out, 1, negative_slope) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            c = c_out
            h, w = (h + 2 - 3) // stride + 1, (w + 2 - 3) // stride + 1
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "gap" else nn.Identity()
        features = c if pool == "gap" else c * h * w
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, hidden),
            nn.LeakyReLU(negative_slope, inplace=True),
            nn.Dropout(dropout),
        )
        self.out = nn.Linear(hidden, num_classes)

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.stages[0][0][0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, hidden)`` (used for FID/KID by the generative models)."""
        for stage in self.stages:
            x = stage(x)
        return self.head(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


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
        )
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.train_acc = MulticlassAccuracy(len(class_names), average="micro")
        self.val_acc = MulticlassAccuracy(len(class_names), average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, C, H, W)`` -> logits ``(B, K)``."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _common_step(self, batch, stage: str, metric) -> torch.Tensor:
        x, y = batch
        logits = self(x)
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
        return self(batch[0]).float().softmax(-1)

    @torch.no_grad()
    def postprocess(self, logits: torch.Tensor, top_k: int = 5) -> list[list[dict]]:
        """Logits ``(B, K)`` -> per image, the ``top_k`` ``{"label", "probability"}`` dicts."""
        probs = logits.float().softmax(-1)
        values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        names = self.hparams.class_names
        return [
            [
                {"label": names[i], "probability": round(float(p), 6)}
                for p, i in zip(v, ix, strict=True)
            ]
            for v, ix in zip(values.tolist(), indices.tolist(), strict=True)
        ]

    def build_optimizer(self, total_steps: int):
        """``(AdamW, per-step scheduler or None)`` for a run of ``total_steps`` steps."""
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "onecycle":
            return opt, torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=hp.lr, total_steps=total_steps
            )
        if hp.scheduler == "cosine":
            return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
        return opt, None

    def configure_optimizers(self):
        opt, sched = self.build_optimizer(int(self.trainer.estimated_stepping_batches))
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _datamodule(section: ClassifierParams, data_dir, seed: int) -> ImageDataModule:
    d = section.data
    return ImageDataModule(
        data_dir,
        d.batch_size,
        d.eval_batch_size,
        d.num_workers,
        d.augment.model_dump(),
        d.train_subset,
        seed,
    )


def _module_kwargs(section: ClassifierParams, dm: ImageDataModule) -> dict:
    return {
        **section.model.model_dump(),
        "class_names": dm.class_names,
        "preprocess": dm.preprocess.to_dict(),
    }


SPEC = ModelSpec(
    name="classifier",
    module=ClassifierModule,
    params=ClassifierParams,
    datamodule=_datamodule,
    module_kwargs=_module_kwargs,
    monitor="val/acc",
    mode="max",
)
