"""Prepared emails (``prepare@spam``) as batches the module encodes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from PIL import Image

from sightline.models.spam.batch import Example, collate


class MessageDataset(torch.utils.data.Dataset):
    """Prepared messages, encoded by the module's ``encode`` on first access and then cached."""

    def __init__(self, rows: list[dict], data_dir: Path, encode) -> None:
        self.rows, self.data_dir, self.encode = rows, data_dir, encode
        self.cache: dict[int, Example] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Example:
        if i not in self.cache:
            r = self.rows[i]
            images = []
            for name in r["images"]:
                with Image.open(self.data_dir / name) as im:
                    images.append(im.convert("RGB"))
            self.cache[i] = self.encode(
                r["subject"], r["text"], images, float(r["label"]), r.get("ocr")
            )
        return self.cache[i]


class EmailDataModule(L.LightningDataModule):
    """Batches of prepared emails (``prepare@spam``) as ``collate`` dicts.

    Encoding uses the module being trained (``attach``): its tokenizer and image preprocessing.
    """

    def __init__(
        self,
        data_dir,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from sightline.data.splits import load_meta

        self.data_dir = Path(data_dir)
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = (
            batch_size,
            eval_batch_size,
            num_workers,
            seed,
        )
        self.meta = load_meta(self.data_dir)
        self.encode = None
        self._rows: dict[str, list[dict]] = {}
        self._sets: dict[str, MessageDataset] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["classes"])

    def rows(self, split: str) -> list[dict]:
        """The prepared rows of a split: id, label, subject, text, images, evasion."""
        if split not in self._rows:
            from sightline.mail.corpus import load_messages

            self._rows[split] = load_messages(self.data_dir, split)
        return self._rows[split]

    def attach(self, module) -> EmailDataModule:
        self.encode, self._sets = module.encode, {}
        return self

    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            self.attach(self.trainer.lightning_module)

    def dataset(self, split: str) -> MessageDataset:
        if split not in self._sets:
            self._sets[split] = MessageDataset(self.rows(split), self.data_dir, self.encode)
        return self._sets[split]

    def loader(self, split: str, shuffle: bool = False) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.dataset(split),
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self):
        return self.loader("train", shuffle=True)

    def val_dataloader(self):
        return self.loader("val")

    def test_dataloader(self):
        return self.loader("test")
