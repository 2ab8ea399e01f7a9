"""``prepare``: a dataset's raw source -> ``data/prepared/<name>/``: stratified train/val/test
uint8 arrays (or parsed emails, or captioned images) + ``meta.json``.

The dispatcher over every kind of dataset; the pieces it uses live in ``sightline.data`` (images,
emoji, splits) and ``sightline.mail`` (emails).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sightline.config import DatasetConfig
from sightline.data.sources import RawSplits, load_cifar10, load_fashion_mnist
from sightline.data.splits import split_raw
from sightline.errors import DataError
from sightline.io import atomic_dir, write_json


def load_raw(name: str, cfg: DatasetConfig, cache_dir: Path) -> RawSplits:
    """Load a dataset by its params name."""
    root = Path(cfg.root).expanduser() if cfg.root else None
    if name == "fashion_mnist":
        return load_fashion_mnist(root, cfg.download, cache_dir)
    if name == "cifar10":
        return load_cifar10(root, cfg.download, cache_dir)
    raise DataError(
        f"datasets.{name}: unknown dataset (known: fashion_mnist, cifar10, emoji, spam)"
    )


def prepare_dataset(
    name: str, cfg: DatasetConfig, seed: int, out_dir: Path, cache_dir: Path
) -> dict:
    """Build ``out_dir`` with ``{split}_x.npy``, ``{split}_y.npy``, ``meta.json``, ``report.json``.

    The directory is written under a temporary name and renamed at the end, so a failure
    leaves any earlier result untouched.

    Returns:
        The meta dict written to ``meta.json``.
    """
    if name == "emoji":  # captioned images: their own layout (captions, base-emoji groups)
        from sightline.data.emoji import prepare_emoji

        return prepare_emoji(cfg, seed, out_dir, cache_dir)
    if name == "spam":  # raw emails: parsed messages and rendered images
        from sightline.mail.corpus import prepare_spam

        return prepare_spam(cfg, seed, out_dir, cache_dir)
    raw = load_raw(name, cfg, cache_dir)
    splits = split_raw(raw, cfg, seed)
    train_x = splits["train"][0].astype(np.float64) / 255.0
    meta = {
        "dataset": name,
        "classes": raw.classes,
        "shape": list(raw.train_x.shape[1:]),  # (C, H, W)
        "mean": [round(float(v), 6) for v in train_x.mean(axis=(0, 2, 3))],
        "std": [round(float(v), 6) for v in train_x.std(axis=(0, 2, 3))],
        "counts": {
            s: {"total": len(y), "per_class": np.bincount(y, minlength=len(raw.classes)).tolist()}
            for s, (_, y) in splits.items()
        },
        "source": raw.source,
        "skipped": len(raw.skipped),
        "seed": seed,
    }
    report = {
        "dataset": name,
        "source": raw.source,
        "skipped": len(raw.skipped),
        "skipped_files": raw.skipped,
    }
    with atomic_dir(out_dir) as tmp:
        for split, (x, y) in splits.items():
            np.save(tmp / f"{split}_x.npy", x)
            np.save(tmp / f"{split}_y.npy", y)
        write_json(tmp / "meta.json", meta)
        write_json(tmp / "report.json", report)
    return meta
