"""The image DataModule: prepared uint8 arrays in memory, normalised and augmented per batch."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from sightline.data.augment import augment_batch
from sightline.data.preprocess import ImagePreprocess
from sightline.data.splits import load_meta, load_prepared


class ImageDataModule(L.LightningDataModule):
    """Serves a prepared image dataset (``prepare`` output) as normalised float batches.

    Args:
        data_dir: a prepared dataset directory (``{split}_x.npy``, ``meta.json``).
        batch_size: training batch size (per device).
        eval_batch_size: batch size for validation, test and prediction.
        num_workers: DataLoader workers; 0 is fastest for in-memory tensors.
        augment: ``{"shift": int, "hflip": bool, "erase": float}`` applied to training batches.
        train_subset: keep only this many (seeded, shuffled) training images.
        seed: seed for ``train_subset``.
    """

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        augment: dict | None = None,
        train_subset: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.augment = {"shift": 0, "hflip": False, "erase": 0.0, **(augment or {})}
        self.train_subset = train_subset
        self.seed = seed
        self.meta = load_meta(self.data_dir)
        self.preprocess = ImagePreprocess(
            channels=self.meta["shape"][0],
            size=tuple(self.meta["shape"][1:]),
            mean=tuple(self.meta["mean"]),
            std=tuple(self.meta["std"]),
        )
        self._sets: dict[str, TensorDataset] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["classes"])

    def split(self, name: str) -> TensorDataset:
        """The uint8 ``TensorDataset`` of one split (loaded once)."""
        if name not in self._sets:
            x, y = load_prepared(self.data_dir, name)
            if name == "train" and self.train_subset is not None:
                keep = np.sort(
                    np.random.default_rng(self.seed).permutation(len(y))[: self.train_subset]
                )
                x, y = x[keep], y[keep]
            self._sets[name] = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        return self._sets[name]

    def _loader(self, name: str, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(
            self.split(name),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """uint8 -> normalised float on the device; augment only while fitting."""
        x, y = batch
        x = self.preprocess.normalize(x)
        trainer = self.trainer
        if trainer is not None and trainer.training:
            x = augment_batch(x, **self.augment)
        return x, y
