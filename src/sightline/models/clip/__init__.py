"""``clip``: CLIP-style image-text alignment built with open_clip, trained from scratch or
fine-tuned from a local open_clip checkpoint.

The architecture is an open_clip model config (``configs/*.json``, registered with
``open_clip.add_model_config``); the tokenizer is open_clip's built-in BPE (its vocabulary
ships inside the package, nothing is fetched); the loss is open_clip's ``ClipLoss``.

Parts: ``params``, ``net``, ``module``, ``data``; the ``SPEC`` that registers it is here.
"""

from __future__ import annotations

from sightline.models.clip.data import _datamodule, _module_kwargs, search_index
from sightline.models.clip.module import ClipModule, recall_at_k, zero_shot
from sightline.models.clip.net import (
    CONFIG_DIR,
    MAX_LOGIT_SCALE,
    TOKENIZER_CACHE,
    BoundedCache,
    open_clip_module,
)
from sightline.models.clip.params import ClipConfig, ClipDataConfig, ClipParams
from sightline.spec import ModelSpec

__all__ = [
    "BoundedCache",
    "CONFIG_DIR",
    "ClipConfig",
    "ClipDataConfig",
    "ClipModule",
    "ClipParams",
    "MAX_LOGIT_SCALE",
    "SPEC",
    "TOKENIZER_CACHE",
    "open_clip_module",
    "recall_at_k",
    "search_index",
    "zero_shot",
]


SPEC = ModelSpec(
    name="clip",
    module=ClipModule,
    params=ClipParams,
    datamodule=_datamodule,
    module_kwargs=_module_kwargs,
    monitor="val/score",
    mode="max",
    index=search_index,
)
