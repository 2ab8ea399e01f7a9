"""Captioned emoji images from the npm package ``emoji-datasource-google``.

``emoji.json`` gives each emoji's Unicode name, category and skin-tone variants; the 64x64 PNGs
live in ``img/google/64/``. A variant's caption carries its tone ("thumbs up sign, medium skin
tone"). Images are alpha-composited onto white. Splits are drawn by *base* emoji, so the
variants of one emoji never straddle train and test.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sightline.config import DatasetConfig
from sightline.data.decode import on_white
from sightline.data.sources import npm_pack
from sightline.errors import DataError
from sightline.io import atomic_dir, write_json
from sightline.progress import progress

PACKAGE = "emoji-datasource-google"
IMAGE_DIR = "img/google/64"
SIZE = 64
SKIP_CATEGORIES = {"Component"}  # skin-tone swatches and hair parts, not emoji of their own
TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}


@dataclass
class EmojiRaw:
    """All captioned emoji images before splitting."""

    images: np.ndarray  # (N, 3, 64, 64) uint8
    captions: list[str]
    groups: np.ndarray  # (N,) index of the base emoji (variants share it)
    labels: np.ndarray  # (N,) category index
    categories: list[str]
    source: str = ""
    skipped: list[str] = field(default_factory=list)


class _Package:
    """Files of the npm package, from its ``.tgz`` (read once, in order) or an unpacked folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, bytes] | None = None
        if root.is_file():
            try:
                with tarfile.open(root, "r:gz") as tar:  # sequential: gzip cannot seek back cheaply
                    self.files = {
                        m.name.split("/", 1)[1]: tar.extractfile(m).read()
                        for m in tar
                        if m.isfile()
                        and "/" in m.name
                        and (m.name.endswith("emoji.json") or f"/{IMAGE_DIR}/" in m.name)
                    }
            except (tarfile.TarError, OSError, EOFError) as err:
                raise DataError(f"{root}: not a readable .tgz ({err})") from None

    def read(self, rel: str) -> bytes | None:
        if self.files is not None:
            return self.files.get(rel)
        path = self.root / rel
        return path.read_bytes() if path.is_file() else None


def decode_on_white(data: bytes) -> np.ndarray:
    """Emoji PNG bytes -> uint8 ``(3, SIZE, SIZE)``, resized and alpha-composited onto white."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGBA")
        if img.size != (SIZE, SIZE):
            img = img.resize((SIZE, SIZE), Image.BICUBIC)
        rgb = on_white(img)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def tone_caption(name: str, tones: str) -> str:
    """``("thumbs up sign", "1F3FD")`` -> ``"thumbs up sign, medium skin tone"``."""
    parts = list(dict.fromkeys(TONES[t] for t in tones.split("-") if t in TONES))
    return ", ".join([name, *parts])


def load_emoji(root: Path | None, download: bool, cache_dir: Path) -> EmojiRaw:
    """Read every emoji with a Google image, and its skin-tone variants."""
    if root is None:
        if not download:
            raise DataError(
                "datasets.emoji: root is null and download is false; set root to the package .tgz or folder"
            )
        root = npm_pack(PACKAGE, cache_dir, "datasets.emoji")
    if not root.exists():
        raise DataError(f"{root}: emoji package not found (a {PACKAGE} .tgz or unpacked folder)")
    pkg = _Package(root)
    raw_json = pkg.read("emoji.json")
    if raw_json is None:
        raise DataError(f"{root}: no emoji.json inside; is this the {PACKAGE} package?")
    entries = sorted(json.loads(raw_json), key=lambda e: e.get("sort_order", 0))
    categories = list(
        dict.fromkeys(e["category"] for e in entries if e["category"] not in SKIP_CATEGORIES)
    )
    images, captions, groups, labels, skipped = [], [], [], [], []
    for group, entry in enumerate(
        progress(entries, "emoji: reading", unit="emoji")
    ):  # a group each
        if entry["category"] in SKIP_CATEGORIES or not entry.get("has_img_google", True):
            continue
        name = (entry.get("name") or entry["short_name"]).lower()
        variants = [(entry["image"], name)] + [
            (v["image"], tone_caption(name, tones))
            for tones, v in (entry.get("skin_variations") or {}).items()
            if v.get("has_img_google", True)
        ]
        for image, caption in variants:
            data = pkg.read(f"{IMAGE_DIR}/{image}")
            try:
                if data is None:
                    raise FileNotFoundError("missing")
                images.append(decode_on_white(data))
            except (FileNotFoundError, UnidentifiedImageError, OSError, ValueError) as err:
                skipped.append(f"{IMAGE_DIR}/{image}: {err}")
                continue
            captions.append(caption)
            groups.append(group)
            labels.append(categories.index(entry["category"]))
    if not images:
        raise DataError(f"{root}: no readable emoji images in {IMAGE_DIR}/")
    return EmojiRaw(
        np.stack(images),
        captions,
        np.asarray(groups),
        np.asarray(labels, dtype=np.int64),
        categories,
        source=f"{PACKAGE} ({root.name})",
        skipped=skipped,
    )


def split_groups(groups: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Row indices of train + one part per fraction, drawn by group (no group is split)."""
    unique = np.random.default_rng(seed).permutation(np.unique(groups))
    counts = [int(round(f * len(unique))) for f in fractions]
    bounds = np.cumsum([0, *counts])
    carved = [unique[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    rest = unique[bounds[-1] :]
    return [np.flatnonzero(np.isin(groups, g)) for g in (rest, *carved)]


def prepare_emoji(cfg: DatasetConfig, seed: int, out_dir: Path, cache_dir: Path) -> dict:
    """Build ``out_dir``: ``{split}_x.npy`` / ``_y.npy`` (category) / ``_group.npy`` /
    ``_captions.json``, ``meta.json`` and ``report.json``; written atomically."""
    raw = load_emoji(Path(cfg.root).expanduser() if cfg.root else None, cfg.download, cache_dir)
    parts = split_groups(raw.groups, [cfg.val_fraction, cfg.test_fraction], seed)
    if cfg.max_per_class is not None:  # tiny runs: the first N rows of each split
        parts = [p[: cfg.max_per_class] for p in parts]
    train_x = raw.images[parts[0]].astype(np.float64) / 255.0
    meta = {
        "dataset": "emoji",
        "kind": "captions",
        "classes": raw.categories,
        "shape": list(raw.images.shape[1:]),
        "mean": [round(float(v), 6) for v in train_x.mean(axis=(0, 2, 3))],
        "std": [round(float(v), 6) for v in train_x.std(axis=(0, 2, 3))],
        "counts": {
            s: {"total": len(p), "groups": len(np.unique(raw.groups[p]))}
            for s, p in zip(("train", "val", "test"), parts, strict=True)
        },
        "source": raw.source,
        "skipped": len(raw.skipped),
        "seed": seed,
    }
    with atomic_dir(out_dir) as tmp:
        for split, idx in zip(("train", "val", "test"), parts, strict=True):
            np.save(tmp / f"{split}_x.npy", np.ascontiguousarray(raw.images[idx]))
            np.save(tmp / f"{split}_y.npy", raw.labels[idx])
            np.save(tmp / f"{split}_group.npy", raw.groups[idx])
            write_json(tmp / f"{split}_captions.json", {"captions": [raw.captions[i] for i in idx]})
        write_json(tmp / "meta.json", meta)
        write_json(
            tmp / "report.json",
            {
                "dataset": "emoji",
                "source": raw.source,
                "skipped": len(raw.skipped),
                "skipped_files": raw.skipped,
            },
        )
    return meta


def load_captions(data_dir: Path, split: str) -> list[str]:
    """The captions of one prepared split (row order of ``{split}_x.npy``)."""
    path = Path(data_dir) / f"{split}_captions.json"
    try:
        return json.loads(path.read_text())["captions"]
    except FileNotFoundError:
        raise DataError(
            f"{path}: prepared captions missing; run `dvc repro prepare@emoji`"
        ) from None
