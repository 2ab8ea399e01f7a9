"""Image-caption pairs for ``clip``: prepared emoji plus Fashion-MNIST images captioned from
their class names with templates.

Images and captions go through the model's own open_clip transform and tokenizer (taken from
the LightningModule being trained), so training and serving preprocess identically.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from sightline.data.decode import to_pil
from sightline.data.emoji import load_captions
from sightline.data.splits import load_meta, load_prepared

FASHION_TEMPLATES = [
    "a photo of a {}.",
    "a black and white picture of a {}.",
    "a picture of the {}.",
    "a grey photo of a {}.",
    "a low resolution photo of a {}.",
    "a {}.",
]
FASHION_NAMES = {  # caption wording for the dataset's class names
    "T-shirt/top": "t-shirt",
    "Trouser": "pair of trousers",
    "Pullover": "pullover",
    "Dress": "dress",
    "Coat": "coat",
    "Sandal": "sandal",
    "Shirt": "shirt",
    "Sneaker": "sneaker",
    "Bag": "bag",
    "Ankle boot": "ankle boot",
}
CATEGORY_TEMPLATES = ["an emoji of {}.", "{}", "a {} emoji.", "an icon from the {} category."]


class PairDataset(Dataset):
    """Emoji pairs, then ``fashion_pairs`` Fashion-MNIST pairs drawn at random on each access
    (image and template from the global RNG, which the seed fixes)."""

    def __init__(
        self, images: np.ndarray, captions: list[str], fashion: tuple | None, fashion_pairs: int
    ) -> None:
        self.images, self.captions = images, captions
        self.fashion, self.fashion_pairs = fashion, fashion_pairs if fashion is not None else 0

    def __len__(self) -> int:
        return len(self.images) + self.fashion_pairs

    def __getitem__(self, i: int) -> tuple[Image.Image, str]:
        if i < len(self.images):
            return to_pil(self.images[i]), self.captions[i]
        x, y, names = self.fashion
        j = int(torch.randint(len(x), ()))
        template = FASHION_TEMPLATES[int(torch.randint(len(FASHION_TEMPLATES), ()))]
        return to_pil(x[j]), template.format(FASHION_NAMES.get(names[y[j]], names[y[j]].lower()))


class CaptionDataModule(L.LightningDataModule):
    """Batches ``(images (B, 3, S, S), tokens (B, context_length))``.

    Args:
        data_dir: prepared emoji (``prepare@emoji``).
        fashion_dir: prepared Fashion-MNIST (pairs for training, zero-shot test).
        fashion_pairs: Fashion-MNIST pairs per training epoch (0: emoji only).
        The rest: as ``ImageDataModule``.
    """

    def __init__(
        self,
        data_dir: str | Path,
        fashion_dir: str | Path,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        fashion_pairs: int = 2000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data_dir, self.fashion_dir = Path(data_dir), Path(fashion_dir)
        self.batch_size, self.eval_batch_size, self.num_workers = (
            batch_size,
            eval_batch_size,
            num_workers,
        )
        self.fashion_pairs, self.seed = fashion_pairs, seed
        self.meta = load_meta(self.data_dir)
        self.fashion_meta = load_meta(self.fashion_dir)
        self.transform = self.tokenizer = self._fashion_val = None

    @property
    def class_names(self) -> list[str]:
        """Emoji categories (zero-shot labels of the emoji test split)."""
        return list(self.meta["classes"])

    def attach(self, module) -> CaptionDataModule:
        """Use ``module``'s open_clip transform and tokenizer (done by ``setup`` when fitting)."""
        self.transform, self.tokenizer = module.preprocess_one, module.tokenizer
        return self

    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            self.attach(self.trainer.lightning_module)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(images uint8 (N, 3, H, W), categories (N,), captions)`` of an emoji split."""
        x, y = load_prepared(self.data_dir, name)
        return x, y, load_captions(self.data_dir, name)

    def fashion_split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return load_prepared(self.fashion_dir, name)

    @property
    def fashion_names(self) -> list[str]:
        """Fashion-MNIST class names as captions word them."""
        return [FASHION_NAMES.get(c, c.lower()) for c in self.fashion_meta["classes"]]

    def fashion_val(
        self, n: int = 2000
    ) -> tuple[list[Image.Image], np.ndarray, list[str], list[str]]:
        """The first ``n`` Fashion-MNIST validation images (PIL), their labels, the class names and
        the prompt templates: the per-epoch zero-shot check."""
        if self._fashion_val is None:
            x, y = self.fashion_split("val")
            self._fashion_val = [to_pil(a) for a in x[:n]], y[:n]
        return *self._fashion_val, self.fashion_names, FASHION_TEMPLATES

    def collate(self, items: list[tuple[Image.Image, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([self.transform(im) for im, _ in items])
        return images, self.tokenizer([c for _, c in items])

    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            drop_last=shuffle,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        x, _, captions = self.split("train")
        fashion = None
        if self.fashion_pairs:
            fx, fy = self.fashion_split("train")
            fashion = (fx, fy, self.fashion_meta["classes"])
        return self._loader(
            PairDataset(x, captions, fashion, self.fashion_pairs), True, self.batch_size
        )

    def val_dataloader(self) -> DataLoader:
        x, _, captions = self.split("val")
        return self._loader(PairDataset(x, captions, None, 0), False, self.eval_batch_size)
