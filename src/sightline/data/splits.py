"""Dataset splits: stratified carving of validation and test sets, and reading a prepared
dataset back (``{split}_x.npy``, ``{split}_y.npy``, ``meta.json``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sightline.config import DatasetConfig
from sightline.data.sources import RawSplits
from sightline.errors import DataError

SPLITS = ("train", "val", "test")


def stratified_split(labels: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Split indices per class so every part keeps the class proportions.

    Args:
        labels: ``(N,)`` integer labels.
        fractions: fractions of the carved parts, e.g. ``[0.1, 0.1]``; the rest is the first part.
        seed: makes the split deterministic.

    Returns:
        ``len(fractions) + 1`` sorted index arrays: the remainder first, then one per fraction.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        counts = [int(round(f * len(idx))) for f in fractions]
        start = sum(counts)
        parts[0].append(idx[start:])
        for k, n in enumerate(counts):
            begin = sum(counts[:k])
            parts[k + 1].append(idx[begin : begin + n])
    return [np.sort(np.concatenate(p)) for p in parts]


def cap_per_class(labels: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    if cap is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:cap] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def split_raw(
    raw: RawSplits, cfg: DatasetConfig, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Carve validation (and test, when the source has none) from the training images."""
    if raw.test_x is not None:
        train_idx, val_idx = stratified_split(raw.train_y, [cfg.val_fraction], seed)
        out = {
            "train": (raw.train_x[train_idx], raw.train_y[train_idx]),
            "val": (raw.train_x[val_idx], raw.train_y[val_idx]),
            "test": (raw.test_x, raw.test_y),
        }
    else:
        fr = [cfg.val_fraction, cfg.test_fraction]
        train_idx, val_idx, test_idx = stratified_split(raw.train_y, fr, seed)
        out = {
            s: (raw.train_x[i], raw.train_y[i])
            for s, i in zip(SPLITS, (train_idx, val_idx, test_idx), strict=True)
        }
    for split, (x, y) in out.items():
        keep = cap_per_class(y, cfg.max_per_class, seed + 1)
        out[split] = (np.ascontiguousarray(x[keep]), y[keep])
        if len(keep) == 0:
            raise DataError(f"split {split!r} is empty; lower val/test fractions or add data")
    return out


def load_prepared(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one prepared split as ``(x uint8 (N, C, H, W), y int64 (N,))``."""
    data_dir = Path(data_dir)
    try:
        return np.load(data_dir / f"{split}_x.npy"), np.load(data_dir / f"{split}_y.npy")
    except FileNotFoundError as err:
        raise DataError(f"{err.filename}: prepared data missing; run `dvc repro prepare`") from None


def load_meta(data_dir: Path) -> dict:
    """Read ``meta.json`` of a prepared dataset."""
    path = Path(data_dir) / "meta.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: prepared data missing; run `dvc repro prepare`") from None
