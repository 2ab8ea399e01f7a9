"""``classifier``: a CNN image classifier (Conv-BN-activation blocks, downsampling stages).

Today's defaults are a plain Conv-BN-LeakyReLU net trained with AdamW. The options after
``channels_last`` in ``ClassifierConfig`` build a faster-learning net for harder data (the
CIFAR-10 profile in ``params/cifar10.yaml``): a patch-whitening stem initialised from the
training images, max-pool downsampling, identity-initialised convolutions, GELU, global max
pooling straight into the output layer, SGD with a larger learning rate on BatchNorm biases,
an exponential moving average of the weights and flip/shift test-time augmentation. Each
defaults to today's behaviour.
"""

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
    pool: Literal["gap", "flatten", "max"] = "gap"  # global average / flatten / global max
    hidden: int = Field(128, ge=0)  # 0: pooled features go straight to the output layer
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    negative_slope: float = Field(0.1, ge=0.0)
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    scheduler: Literal["onecycle", "triangle", "cosine", "none"] = "onecycle"
    channels_last: bool = True
    # Options for harder data (params/cifar10.yaml); each default keeps today's net and training.
    # whiten: a 2x2 patch-whitening conv set from the data; patch: the same conv, learned
    stem: Literal["conv", "whiten", "patch"] = "conv"
    whiten_images: int = Field(5000, gt=0)  # training images whose patches set the whitening
    downsample: Literal["stride", "maxpool"] = "stride"  # stride-2 conv, or conv then 2x2 max pool
    activation: Literal["leaky_relu", "gelu"] = "leaky_relu"
    init: Literal["default", "identity"] = "default"  # identity: convs start as identity maps
    bn_momentum: float = Field(0.1, gt=0.0, le=1.0)  # running-statistics update (PyTorch's sense)
    bn_weight: bool = True  # False: BatchNorm scales fixed at 1 (only biases learn)
    logit_scale: float = Field(1.0, gt=0.0)  # multiplies the logits
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: Nesterov momentum, coupled weight decay
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd only
    bn_bias_lr_scale: float = Field(1.0, gt=0.0)  # BatchNorm biases: lr x this, weight decay / this
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)  # > 0: validate and export an EMA of the weights
    tta: Literal["none", "flip", "flip_shift"] = "none"  # test-time augmentation in eval mode

    @model_validator(mode="after")
    def _blocks_match_channels(self) -> ClassifierConfig:
        stage_block_counts(self.blocks_per_stage, self.channels)
        return self


class ClassifierParams(ModelParams):
    data: ImageDataConfig = ImageDataConfig()
    model: ClassifierConfig = ClassifierConfig()
    trainer: TrainerConfig = TrainerConfig()


def activation_layer(name: str, slope: float) -> nn.Module:
    return nn.GELU() if name == "gelu" else nn.LeakyReLU(slope, inplace=True)


def conv_block(
    c_in: int,
    c_out: int,
    stride: int,
    slope: float,
    downsample: str = "stride",
    activation: str = "leaky_relu",
    bn_momentum: float = 0.1,
) -> nn.Sequential:
    """Conv3x3 -> BatchNorm -> activation; ``stride=2`` halves H and W, by the convolution's
    stride or (``downsample="maxpool"``) by a 2x2 max pool after it."""
    pooled = stride == 2 and downsample == "maxpool"
    layers = [nn.Conv2d(c_in, c_out, 3, stride=1 if pooled else stride, padding=1, bias=False)]
    if pooled:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out, momentum=bn_momentum), activation_layer(activation, slope)]
    return nn.Sequential(*layers)


def out_size(side: int, stride: int, downsample: str) -> int:
    """A side after one block of ``conv_block``."""
    if stride == 1:
        return side
    return side // 2 if downsample == "maxpool" else (side + 2 - 3) // 2 + 1


class ScaledLinear(nn.Linear):
    """A dense layer whose output is multiplied by a fixed ``scale`` (a smaller effective
    learning rate for the output layer, and softer initial logits)."""

    def __init__(self, in_features: int, out_features: int, scale: float) -> None:
        super().__init__(in_features, out_features)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


class WhiteningStem(nn.Module):
    """A 2x2 convolution whose filters whiten image patches, then the activation.

    Its filters are the eigenvectors of the patch covariance of training images, each scaled
    by ``1 / sqrt(eigenvalue + eps)`` and used with both signs (``2 * C * 4`` channels); they
    are set by ``init_from`` and stay fixed (only the bias learns). With ``learned=True`` the
    same convolution is an ordinary trained layer (the ablation of the whitening). Output
    side: input - 1.
    """

    def __init__(
        self, in_channels: int, activation: nn.Module, kernel: int = 2, learned: bool = False
    ) -> None:
        super().__init__()
        width = 2 * in_channels * kernel * kernel
        self.conv = nn.Conv2d(in_channels, width, kernel, padding=0, bias=True)
        self.conv.weight.requires_grad_(learned)
        self.act = activation

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    @torch.no_grad()
    def init_from(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the filters from normalised images ``(N, C, H, W)``; the bias starts at 0."""
        c, (kh, kw) = images.shape[1], self.conv.kernel_size
        patches = images.float().unfold(2, kh, 1).unfold(3, kw, 1)  # (N, C, H', W', kh, kw)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        order = eigenvalues.flip(0), eigenvectors.T.flip(0)
        filters = (order[1] / torch.sqrt(order[0] + eps)[:, None]).reshape(-1, c, kh, kw)
        self.conv.weight.copy_(torch.cat([filters, -filters]).to(self.conv.weight))
        self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class ClassifierNet(nn.Module):
    """Stages of conv blocks (each stage after the first downsamples by 2; after a whitening
    stem, every stage does), then global average pooling, flatten or global max pooling,
    Dense(hidden) and dropout (unless ``hidden`` is 0), Dense(num_classes) x ``logit_scale``.

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
        stem: str = "conv",
        downsample: str = "stride",
        activation: str = "leaky_relu",
        init: str = "default",
        bn_momentum: float = 0.1,
        bn_weight: bool = True,
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        counts = stage_block_counts(blocks_per_stage, channels)
        c, h, w = in_channels, *size
        self.stem: nn.Module = nn.Identity()
        if stem in ("whiten", "patch"):
            act = activation_layer(activation, negative_slope)
            self.stem = WhiteningStem(c, act, learned=stem == "patch")
            c, h, w = self.stem.out_channels, h - 1, w - 1
        stages = []
        for i, (c_out, n_blocks) in enumerate(zip(channels, counts, strict=True)):
            stride = 1 if i == 0 and stem == "conv" else 2
            block = (negative_slope, downsample, activation, bn_momentum)
            blocks = [conv_block(c, c_out, stride, *block)]
            blocks += [conv_block(c_out, c_out, 1, *block) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            c = c_out
            h, w = out_size(h, stride, downsample), out_size(w, stride, downsample)
        self.stages = nn.ModuleList(stages)
        self.pool = {"gap": nn.AdaptiveAvgPool2d(1), "max": nn.AdaptiveMaxPool2d(1)}.get(
            pool, nn.Identity()
        )
        features = c * h * w if pool == "flatten" else c
        head: list[nn.Module] = [nn.Flatten()]
        if hidden > 0:
            head += [nn.Linear(features, hidden), activation_layer(activation, negative_slope)]
            features = hidden
        self.head = nn.Sequential(*head, nn.Dropout(dropout))
        self.out = (
            nn.Linear(features, num_classes)
            if logit_scale == 1.0
            else ScaledLinear(features, num_classes, logit_scale)
        )
        for m in self.stages.modules():
            if isinstance(m, nn.Conv2d) and init == "identity":
                with torch.no_grad():  # the first in_channels filters pass their input through
                    nn.init.dirac_(m.weight[: min(m.in_channels, m.out_channels)])
            if isinstance(m, nn.BatchNorm2d) and not bn_weight:
                m.weight.requires_grad_(False)

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.stages[0][0][0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, D)`` (used for FID/KID by the generative models)."""
        x = self.stem(x)
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


def _callbacks(section: ClassifierParams, dm: ImageDataModule, seed: int) -> list:
    """With ``ema_decay``: Lightning's EMA of the weights (and BatchNorm statistics), which
    validation scores, the checkpoints hold and training ends with."""
    decay = section.model.ema_decay
    if decay == 0.0:
        return []
    from lightning.pytorch.callbacks import EMAWeightAveraging

    return [EMAWeightAveraging(decay=decay)]


SPEC = ModelSpec(
    name="classifier",
    module=ClassifierModule,
    params=ClassifierParams,
    datamodule=_datamodule,
    module_kwargs=_module_kwargs,
    monitor="val/acc",
    mode="max",
    callbacks=_callbacks,
)
