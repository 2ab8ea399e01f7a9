"""``clip``: the networks (plain ``nn.Module``s, no Lightning)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from sightline.errors import ConfigError

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


def image_tower_input(arch: str, image_tower: str | None) -> dict:
    """The normalisation keyword arguments of ``create_model_and_transforms`` for ``arch``: none
    for a tower trained here (open_clip's defaults), the backbone's own ImageNet mean, std and
    resampling for a pretrained ``image_tower``, whose timm network the config must name.

    Raises:
        ConfigError: an unknown backbone, or a config whose image tower is another network.
    """
    if image_tower is None:
        return {}
    from sightline.models.backbone import backbone_spec, input_config

    spec = backbone_spec(image_tower)
    cfg = open_clip_module().get_model_config(arch) or {}
    tower = cfg.get("vision_cfg", {}).get("timm_model_name")
    if tower != spec.arch:
        raise ConfigError(
            f"models.clip.model.image_tower: {image_tower} needs an open_clip config whose image tower is timm's {spec.arch}; {arch} has {tower or 'its own'}"
        )
    norm = input_config(image_tower)
    return {
        "image_mean": tuple(norm["mean"]),
        "image_std": tuple(norm["std"]),
        "image_interpolation": "bilinear",
    }


def lock_image_tower(model) -> None:
    """Freeze ``model.visual.trunk``: no gradients, BatchNorm statistics fixed whatever the mode.
    timm's converter, not open_clip's ``lock_image_tower``: open_clip's turns timm's
    ``BatchNormAct2d`` into a plain frozen BatchNorm and so drops its activation."""
    from timm.utils.model import freeze

    freeze(model.visual.trunk)


def load_image_tower(model, image_tower: str) -> None:
    """Copy the ImageNet weights of ``image_tower`` into ``model.visual.trunk`` (every key,
    ``strict``)."""
    from sightline.models.backbone import load_backbone

    state = load_backbone(image_tower).state_dict()
    model.visual.trunk.load_state_dict(state, strict=True)
