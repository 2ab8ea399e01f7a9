"""``clip``: the networks (plain ``nn.Module``s, no Lightning)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
MAX_LOGIT_SCALE = math.log(100)  # open_clip clamps the learned temperature here


TOKENIZER_CACHE = 10_000  # distinct words the BPE tokenizer remembers


class BoundedCache(dict):
    """A dict that forgets its oldest entries past ``limit``: open_clip's BPE tokenizer caches
    every word it has seen, which in a server grows with every new word a client sends. The
    entries it starts with (the special tokens) are kept."""

    def __init__(self, items: dict, limit: int) -> None:
        super().__init__(items)
        self.limit, self.pinned = limit + len(items), frozenset(items)

    def __setitem__(self, key, value) -> None:
        if key not in self and len(self) >= self.limit:
            del self[next(k for k in self if k not in self.pinned)]
        super().__setitem__(key, value)


def open_clip_module():
    """``open_clip`` with this package's model configs registered (idempotent)."""
    import open_clip

    if not any(name.startswith("sightline-") for name in open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)
    return open_clip


class _NoRandomInitWarning(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" warning, which
    it logs on every build without ``pretrained``. Here the weights always come after the build
    (a trained checkpoint when loading, ``pretrained`` in ``setup``), or training from scratch
    is the recipe: a served model would log it at every start, though it serves trained weights."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()
