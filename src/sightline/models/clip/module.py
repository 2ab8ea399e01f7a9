"""``clip``: the LightningModule: training, validation and the checkpoint's hyperparameters."""

from __future__ import annotations

import hashlib
import logging

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from sightline.data.decode import on_white, resize_centre_crop
from sightline.errors import ConfigError, InputError
from sightline.models.clip.net import (
    MAX_LOGIT_SCALE,
    TOKENIZER_CACHE,
    BoundedCache,
    _NoRandomInitWarning,
    image_tower_input,
    load_image_tower,
    lock_image_tower,
    open_clip_module,
)
from sightline.schedules import warmup_cosine


def recall_at_k(sim: torch.Tensor, ks=(1, 5, 10)) -> dict[int, float]:
    """Row ``i``'s match is column ``i``: the fraction of rows whose match ranks in the top k.

    Args:
        sim: ``(N, N)`` similarities, queries as rows.
    """
    target = sim.diagonal().unsqueeze(1)
    rank = (sim > target).sum(1)  # how many candidates beat the true match (ties favour it)
    return {k: float((rank < k).float().mean()) for k in ks}


def zero_shot(
    module, image_feats: torch.Tensor, labels: np.ndarray, names: list[str], templates: list[str]
) -> float:
    """Accuracy of ``argmax_label cos(image, mean prompt embedding of label)``."""
    classes = module.class_embeddings(names, templates)
    pred = (image_feats @ classes.T).argmax(-1).numpy()
    return float((pred == labels).mean())


class ClipModule(L.LightningModule):
    """An open_clip ``CLIP`` trained with ``ClipLoss``; rebuilt from its hyperparameters alone.

    Args:
        arch: open_clip model config name.
        context_length: tokens per caption (longer captions are truncated, never an error).
        pretrained: local checkpoint loaded when fitting starts (not when rebuilding for
            serving, where the trained weights replace it anyway).
        lr, weight_decay, warmup_steps: AdamW with linear warmup then cosine decay; no weight
            decay on gains, biases, embeddings' positions or the logit scale (as open_clip).
        max_texts: request limit for ``embed_texts``.
        image_tower: an ImageNet backbone (``efficientnet_lite0/1/2``) that starts the
            config's timm image tower and stays locked, only its projection learning (LiT,
            Zhai et al. 2022): its weights are loaded when fitting starts, its BatchNorm
            statistics frozen, and images are normalised as its ImageNet training did.
    """

    def __init__(
        self,
        arch: str = "sightline-ViT-T-4-32",
        context_length: int = 24,
        pretrained: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 30,
        max_texts: int = 256,
        image_tower: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        oc = open_clip_module()
        norm = image_tower_input(arch, image_tower)
        quiet, root = _NoRandomInitWarning(), logging.getLogger()  # open_clip logs to the root
        root.addFilter(quiet)
        try:
            self.model, _, self.preprocess_one = oc.create_model_and_transforms(
                arch, pretrained=None, force_context_length=context_length, **norm
            )
        finally:
            root.removeFilter(quiet)
        if image_tower is not None:  # frozen BatchNorm from the start: the same keys to rebuild
            lock_image_tower(self.model)
        self.tokenizer = oc.get_tokenizer(arch, context_length=context_length)
        if isinstance(getattr(self.tokenizer, "cache", None), dict):
            self.tokenizer.cache = BoundedCache(self.tokenizer.cache, TOKENIZER_CACHE)
        self.loss = oc.ClipLoss()

    def preprocess(self, images) -> torch.Tensor:
        """PIL images (any mode or size) -> the normalised batch ``(B, 3, S, S)``: transparency
        onto white (as ``prepare@emoji`` does for training), then open_clip's eval transform
        (resize, centre crop, RGB, normalise); training uses the same."""
        if not images:
            raise InputError("no images given")
        side, resample = self._resize
        # a very long image is cut to the kept square first (then the transform's own resize
        # and crop leave it as it is), so the work stays bounded whatever the aspect ratio
        return torch.stack(
            [self.preprocess_one(resize_centre_crop(on_white(im), side, resample)) for im in images]
        )

    @property
    def _resize(self) -> tuple[int, int]:
        """``(side, PIL filter)`` of open_clip's eval transform: ``Resize(side)`` followed by
        ``CenterCrop(side)``, the only kind it builds for these configs."""
        from torchvision.transforms import CenterCrop, InterpolationMode, Resize
        from torchvision.transforms.functional import pil_modes_mapping

        steps = list(self.preprocess_one.transforms)
        kinds = [type(t) for t in steps[:2]]
        if kinds != [Resize, CenterCrop] or not isinstance(steps[0].size, int | list | tuple):
            raise ConfigError(f"unexpected open_clip eval transform: {self.preprocess_one}")
        size = steps[0].size
        side = size if isinstance(size, int) else size[0]
        if (isinstance(size, list | tuple) and len(size) != 1) or steps[0].max_size is not None:
            raise ConfigError(f"unexpected open_clip eval transform: {self.preprocess_one}")
        if list(steps[1].size) != [side, side]:
            raise ConfigError(f"unexpected open_clip eval transform: {self.preprocess_one}")
        return side, pil_modes_mapping[InterpolationMode(steps[0].interpolation)]

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Captions -> token ids ``(B, context_length)``; over-long captions are truncated."""
        if isinstance(texts, str) or not texts:
            raise InputError("expected a non-empty list of captions")
        if len(texts) > self.hparams.max_texts:
            raise InputError(
                f"at most {self.hparams.max_texts} captions per request, got {len(texts)}"
            )
        return self.tokenizer([str(t) for t in texts])

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.image_tower is not None:
            load_image_tower(self.model, self.hparams.image_tower)
        if stage == "fit" and self.hparams.pretrained:
            open_clip_module().load_checkpoint(
                self.model, self.hparams.pretrained, weights_only=True
            )
        world = self.trainer.world_size
        if world > 1:  # gather features across processes: every pair sees every negative
            self.loss = open_clip_module().ClipLoss(
                gather_with_grad=True, rank=self.global_rank, world_size=world
            )

    def on_fit_start(self) -> None:
        # a locked tower's output depends on the pixels alone, and an epoch shows the same
        # emoji and Fashion-MNIST images again: each distinct input runs through it once
        self._tower_cache = {} if self.hparams.image_tower is not None else None

    def on_fit_end(self) -> None:
        self._tower_cache = None

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, 3, S, S)`` -> unit-norm embeddings ``(B, D)``; while fitting, a
        locked tower's outputs come from the cache (served models never cache: no memory grows
        with what clients send)."""
        cache = getattr(self, "_tower_cache", None)
        if cache is None:
            return self.model.encode_image(images, normalize=True)
        keys = [hashlib.blake2b(x.cpu().numpy().tobytes(), digest_size=16).digest() for x in images]
        first: dict[bytes, int] = {}  # each input not yet seen, once
        for i, key in enumerate(keys):
            if key not in cache:
                first.setdefault(key, i)
        if first:
            with torch.no_grad():
                out = self.model.visual.trunk(images[list(first.values())])  # (M, F)
            cache.update(zip(first, out, strict=True))
        pooled = torch.stack([cache[k] for k in keys])  # (B, F)
        return F.normalize(self.model.visual.head(pooled), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        """``(image_features (B, D), text_features (B, D), logit_scale.exp())``, unit norm."""
        img = self.encode_images(images)
        txt = self.model.encode_text(tokens, normalize=True)
        return img, txt, self.model.logit_scale.exp()

    def _common_step(self, batch, stage: str):
        images, tokens = batch
        img, txt, scale = self(images, tokens)
        img, txt = img.float(), txt.float()
        loss = self.loss(img, txt, scale.float())
        on_step = stage == "train"
        self.log(
            f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True
        )
        if on_step:
            self.log("train/logit_scale", scale, on_step=True, on_epoch=False)
        return loss, img, txt

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "train")[0]

    def on_validation_epoch_start(self) -> None:
        self._val_features: list[tuple[torch.Tensor, torch.Tensor]] = []

    def validation_step(self, batch, batch_idx: int) -> None:
        _, img, txt = self._common_step(batch, "val")
        self._val_features.append((img, txt))

    def on_validation_epoch_end(self) -> None:
        """Log what the model is for, on held-out data, every epoch: emoji text->image recall@5
        over the whole validation split, Fashion-MNIST zero-shot accuracy on validation images,
        and ``val/score``, their mean, which selects the checkpoint. (The contrastive loss keeps
        rising on emoji while retrieval and zero-shot still improve: it punishes confidence.)"""
        features, self._val_features = self._val_features, []
        if self.trainer.sanity_checking or not features:
            return
        img, txt = (torch.cat(f) for f in zip(*features, strict=True))
        if self.trainer.world_size > 1:  # every rank scores the full split
            img, txt = (self.all_gather(t).flatten(0, 1) for t in (img, txt))
        t2i = recall_at_k(txt @ img.T, ks=(5,))[5]
        scores = {"val/t2i_recall@5": t2i, "val/i2t_recall@5": recall_at_k(img @ txt.T, ks=(5,))[5]}
        dm = self.trainer.datamodule
        if hasattr(dm, "fashion_val"):
            x, y, names, templates = dm.fashion_val()
            feats = torch.cat([self.embed_images(x[i : i + 512]) for i in range(0, len(x), 512)])
            scores["val/fashion_zero_shot"] = zero_shot(self, feats, y, names, templates)
        scores["val/score"] = sum(v for k, v in scores.items() if k != "val/i2t_recall@5") / (
            len(scores) - 1
        )
        self.log_dict(scores, prog_bar=False)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        with torch.no_grad():  # as open_clip's training loop: temperature <= 100
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def configure_optimizers(self):
        hp = self.hparams
        named = list(self.model.named_parameters())
        no_decay = [
            p
            for n, p in named
            if p.ndim < 2
            or "logit_scale" in n
            or "positional_embedding" in n
            or n.endswith(".bias")
        ]
        ids = {id(p) for p in no_decay}
        decay = [p for _, p in named if id(p) not in ids]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": hp.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=hp.lr,
            betas=(0.9, 0.98),
            eps=1e-6,
        )
        steps = self.trainer.estimated_stepping_batches
        return {"optimizer": opt, "lr_scheduler": warmup_cosine(opt, hp.warmup_steps, steps)}

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        """PIL images -> unit-norm embeddings ``(B, D)`` (float32, on the CPU)."""
        x = self.preprocess(images).to(self.device)
        return self.encode_images(x).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Captions -> unit-norm embeddings ``(B, D)`` (float32, on the CPU)."""
        return (
            self.model.encode_text(self.tokenize(texts).to(self.device), normalize=True)
            .float()
            .cpu()
        )

    @torch.no_grad()
    def class_embeddings(self, labels: list[str], templates: list[str]) -> torch.Tensor:
        """One unit-norm text embedding per label: the mean over prompt templates."""
        if not labels:
            raise InputError("expected a non-empty list of labels")
        rows = [self.embed_texts([t.format(label) for t in templates]).mean(0) for label in labels]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    @torch.no_grad()
    def postprocess(
        self, logits: torch.Tensor, labels: list[str], top_k: int = 5
    ) -> list[list[dict]]:
        """Image-label logits ``(B, K)`` -> per image the ``top_k`` ``{"label", "probability"}``."""
        probs = (logits.float() * self.model.logit_scale.exp().float().cpu()).softmax(-1)
        values, idx = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return [
            [
                {"label": labels[i], "probability": round(float(p), 6)}
                for p, i in zip(v, ix, strict=True)
            ]
            for v, ix in zip(values.tolist(), idx.tolist(), strict=True)
        ]
