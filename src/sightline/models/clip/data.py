"""``clip``: the DataModule and the constructor arguments a params section gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sightline.errors import CheckpointError, ConfigError
from sightline.models.clip.module import ClipModule
from sightline.models.clip.net import (
    CONFIG_DIR,
    open_clip_module,
)
from sightline.models.clip.params import ClipParams


def _datamodule(section: ClipParams, data_dir, seed: int):
    from sightline.data.captions import CaptionDataModule

    d = section.data
    return CaptionDataModule(
        data_dir,
        section.upstream,
        d.batch_size,
        d.eval_batch_size,
        d.num_workers,
        d.fashion_pairs,
        seed,
    )


def _module_kwargs(section: ClipParams, dm) -> dict:
    m = section.model
    if m.arch not in open_clip_module().list_models():
        raise ConfigError(
            f"models.clip.model.arch: {m.arch!r} is not an open_clip model config (ours: {', '.join(p.stem for p in sorted(CONFIG_DIR.glob('*.json')))})"
        )
    if m.pretrained is not None and not Path(m.pretrained).expanduser().is_file():
        raise ConfigError(f"models.clip.model.pretrained: {m.pretrained}: file not found")
    return m.model_dump()


def search_index(module: ClipModule, prepared: Path, split: str = "test") -> tuple[dict, dict]:
    """``(tensors, meta)`` of the held-out image index the packaged model answers searches from:
    unit-norm embeddings of the ``split`` images under ``module``, the images themselves (uint8)
    and their captions."""
    import json

    from sightline.data.decode import to_pil

    try:
        images = np.load(prepared / f"{split}_x.npy")
        captions = json.loads((prepared / f"{split}_captions.json").read_text())["captions"]
    except FileNotFoundError as err:
        raise CheckpointError(f"{err.filename}: missing; run `dvc repro prepare@emoji`") from None
    embeddings = torch.cat(
        [
            module.embed_images([to_pil(a) for a in images[i : i + 256]])
            for i in range(0, len(images), 256)
        ]
    )
    tensors = {
        "embeddings": embeddings.contiguous(),
        "images": torch.from_numpy(images).contiguous(),
    }
    return tensors, {"split": split, "dataset": prepared.name, "captions": captions}
