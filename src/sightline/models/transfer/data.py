"""``transfer``: the features stage's work, the DataModule of cached features (or, to fine-tune,
of the images), and the constructor arguments a params section gives."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from sightline.data.augment import augment_batch
from sightline.data.splits import load_meta, load_prepared
from sightline.errors import DataError
from sightline.hardware import resolve_precision
from sightline.io import atomic_dir, write_json
from sightline.models.backbone import input_config, load_backbone, tap, tap_dim
from sightline.models.transfer.net import BackbonePreprocess
from sightline.models.transfer.params import FeaturesConfig, TransferParams
from sightline.progress import Progress

SPLITS = ("train", "val", "test")


class BatchedTensors(TensorDataset):
    """A ``TensorDataset`` a ``DataLoader`` reads one batch at a time: one indexing per tensor,
    no Python per item and no collation. The head's steps are so cheap that per-item loading
    was most of their time."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices)
        return tuple(t[index] for t in self.tensors)


def _as_is(batch):
    return batch


def per_class_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices of ``labels`` ordered so that the first ``n`` of each class, for any ``n``, are a
    seeded random, stratified subset, and a smaller subset lies inside every larger one."""
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    rank = np.empty(len(labels), dtype=np.int64)
    for perm in perms:
        rank[perm] = np.arange(len(perm))
    return np.lexsort((labels, rank))  # by rank within the class, then by class


def first_per_class(labels: np.ndarray, order: np.ndarray, n: int | None) -> np.ndarray:
    """Positions in ``order`` of the first ``n`` examples of every class (``None``: all)."""
    if n is None:
        return np.arange(len(order))
    seen: dict[int, int] = {}
    keep = []
    for pos, i in enumerate(order):
        c = int(labels[i])
        if seen.get(c, 0) < n:
            seen[c] = seen.get(c, 0) + 1
            keep.append(pos)
    return np.asarray(keep, dtype=np.int64)


def backbone_preprocess(meta: dict, cfg: FeaturesConfig) -> BackbonePreprocess:
    """The preprocessing of a prepared dataset (``meta``) into ``cfg.backbone``: its ImageNet
    normalisation, at ``cfg.resolution`` (or its own input size), upscaled by
    ``cfg.interpolation``."""
    inp = input_config(cfg.backbone)
    side = cfg.resolution
    return BackbonePreprocess(
        channels=meta["shape"][0],
        size=tuple(meta["shape"][1:]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        input_size=(side, side) if side else tuple(inp["size"]),
        input_mean=tuple(inp["mean"]),
        input_std=tuple(inp["std"]),
        interpolation=cfg.interpolation,
    )


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``bf16-mixed`` (on the CPU too: AMX/AVX-512 run it natively)."""
    if precision != "bf16-mixed":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.inference_mode()
def backbone_features(
    net: torch.nn.Module,
    prep: BackbonePreprocess,
    x: np.ndarray | torch.Tensor,
    batch_size: int,
    precision: str,
    bar: Progress | None = None,
    layers: Sequence[str] = ("head",),
) -> torch.Tensor:
    """Pooled features ``(N, F)`` float32 of uint8 images ``(N, C, h, w)``, batch by batch:
    ``tap`` of ``layers``, as ``TransferNet.features`` computes them."""
    device = next(net.parameters()).device
    out = []
    x = torch.as_tensor(x)
    for i in range(0, len(x), batch_size):
        inp = prep.normalize(x[i : i + batch_size].to(device))
        with autocast(device, precision):
            feats = tap(net, inp.contiguous(memory_format=torch.channels_last), layers)
        out.append(feats.float().cpu())
        if bar is not None:
            bar.update(len(inp))
    return torch.cat(out) if out else torch.zeros((0, tap_dim(net, layers)))


def extract_features(
    prepared: Path, out: Path, cfg: FeaturesConfig, seed: int, device: torch.device
) -> dict:
    """Run the frozen backbone over a prepared dataset once and write its features.

    Writes ``{split}_f.npy`` (float16 ``(N, F)``) and ``{split}_y.npy`` for every split,
    ``train_index.npy`` (the prepared training images the rows are, in ``per_class_order``:
    the first ``n`` of a class are its ``n``-image subset) and ``meta.json``; atomically.

    Returns:
        the meta dict (backbone, dimension, counts, images/s).
    """
    import time

    meta = load_meta(prepared)
    net = load_backbone(cfg.backbone, cfg.weights).to(device)
    net = net.to(memory_format=torch.channels_last)
    dim = tap_dim(net, cfg.layers)  # a layer the backbone lacks fails here, before any work
    prep = backbone_preprocess(meta, cfg)
    data = {s: load_prepared(prepared, s) for s in SPLITS}
    order = per_class_order(data["train"][1], seed)
    order = order[first_per_class(data["train"][1], order, cfg.train_per_class)]
    data["train"] = (data["train"][0][order], data["train"][1][order])
    total = sum(len(y) for _, y in data.values())
    precision = resolve_precision(cfg.precision, device)  # what the served model will use too
    start = time.monotonic()
    with atomic_dir(out) as tmp:
        with Progress(f"features@{meta['dataset']}: {cfg.backbone}", total, "images") as bar:
            for split, (x, y) in data.items():
                f = backbone_features(net, prep, x, cfg.batch_size, precision, bar, cfg.layers)
                np.save(tmp / f"{split}_f.npy", f.numpy().astype(np.float16))
                np.save(tmp / f"{split}_y.npy", y)
        np.save(tmp / "train_index.npy", order)
        info = {
            "dataset": meta["dataset"],
            "classes": meta["classes"],
            "backbone": cfg.backbone,
            "weights": cfg.weights,
            "layers": list(cfg.layers),
            "dim": dim,
            "precision": precision,
            "preprocess": prep.to_dict(),
            "counts": {s: len(y) for s, (_, y) in data.items()},
        }
        write_json(tmp / "meta.json", info)
    info["images_per_s"] = round(total / max(time.monotonic() - start, 1e-9), 1)
    return info


def load_features(features: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(features float16 (N, F), labels (N,))`` of one split of a features directory."""
    try:
        return np.load(features / f"{split}_f.npy"), np.load(features / f"{split}_y.npy")
    except FileNotFoundError as err:
        raise DataError(f"{err.filename}: features missing; run `dvc repro features`") from None


class TransferDataModule(L.LightningDataModule):
    """Cached features (frozen backbone), or the images (fine-tuning), of one dataset.

    Args:
        features: a ``features`` stage output (``meta.json`` names its dataset and backbone).
        prepared: the prepared dataset the features were computed from.
        train_per_class: labelled training images per class (the first of ``per_class_order``);
            more than were cached is a ``DataError``.
        images: serve uint8 images instead of features (fine-tuning through the backbone).
    """

    def __init__(
        self,
        features: str | Path,
        prepared: str | Path,
        train_per_class: int | None,
        batch_size: int = 256,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
        images: bool = False,
    ) -> None:
        super().__init__()
        self.features_dir, self.prepared = Path(features), Path(prepared)
        try:
            self.meta = load_meta(self.features_dir)
        except DataError:
            raise DataError(
                f"{self.features_dir}: no features here; run `dvc repro features`"
            ) from None
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.images = num_workers, images
        self.preprocess = BackbonePreprocess.from_dict(self.meta["preprocess"])
        cached = np.load(self.features_dir / "train_y.npy")
        per_class = np.bincount(cached).min() if len(cached) else 0
        if train_per_class is not None and train_per_class > per_class:
            raise DataError(
                f"{self.features_dir}: holds {per_class} training images per class, not "
                f"{train_per_class}; raise models.transfer.features.train_per_class"
            )
        self.keep = first_per_class(cached, np.arange(len(cached)), train_per_class)
        self._sets: dict[str, BatchedTensors] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["classes"])

    def split(self, name: str) -> BatchedTensors:
        """Features ``(N, F)`` float16 (or uint8 images) and labels of one split."""
        if name not in self._sets:
            if self.images:
                x, y = load_prepared(self.prepared, name)
                if name == "train":
                    index = np.load(self.features_dir / "train_index.npy")[self.keep]
                    x, y = x[index], y[index]
            else:
                x, y = load_features(self.features_dir, name)
                if name == "train":
                    x, y = x[self.keep], y[self.keep]
            self._sets[name] = BatchedTensors(torch.from_numpy(x), torch.from_numpy(y))
        return self._sets[name]

    def cached_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training subset's cached features ``(N, F)`` float32 and labels, whichever of
        features or images the loaders serve (fine-tuning starts from a head fitted on them)."""
        x, y = load_features(self.features_dir, "train")
        return torch.from_numpy(x[self.keep]).float(), torch.from_numpy(y[self.keep])

    def _loader(self, name: str, shuffle: bool, batch_size: int) -> DataLoader:
        # the batches of DataLoader(shuffle=shuffle, batch_size=batch_size), read whole; Lightning
        # still swaps in a DistributedSampler under DDP
        data = self.split(name)
        order = RandomSampler(data) if shuffle else SequentialSampler(data)
        return DataLoader(
            data,
            batch_sampler=BatchSampler(order, batch_size, drop_last=False),
            num_workers=self.num_workers,
            collate_fn=_as_is,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Features -> float32; images -> the backbone's input, mirrored at random in training."""
        x, y = batch
        if not self.images:
            return x.float(), y
        x = self.preprocess.normalize(x)
        if self.trainer is not None and self.trainer.training:
            x = augment_batch(x, shift=0, hflip=True, erase=0.0)
        return x, y


def _datamodule(section: TransferParams, data_dir, seed: int) -> TransferDataModule:
    if section.upstream is None:
        raise DataError(
            "models.transfer.upstream: name the features directory (data/features/<dataset>)"
        )
    d = section.data
    return TransferDataModule(
        section.upstream,
        data_dir,
        d.train_per_class,
        d.batch_size,
        d.eval_batch_size,
        d.num_workers,
        images=section.model.finetune_blocks > 0,
    )


def _module_kwargs(section: TransferParams, dm: TransferDataModule) -> dict:
    return {
        **section.model.model_dump(),
        "class_names": dm.class_names,
        "preprocess": dm.preprocess.to_dict(),
        "backbone": dm.meta["backbone"],
        "layers": dm.meta.get("layers", ["head"]),  # features written before layers were a param
        "weights": dm.meta["weights"],
        "precision": dm.meta["precision"],
    }
