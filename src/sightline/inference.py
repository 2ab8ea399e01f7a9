"""Turn a trained artifact into ``(model, preprocess, postprocess)`` without unpickling objects.

Weights come from safetensors (``models/<name>/model.safetensors``) or a Lightning checkpoint
read with ``torch.load(weights_only=True)``; the model is rebuilt from its saved plain-value
hyperparameters, so the preprocessing used in training travels with it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from sightline.artifacts import read_checkpoint, rebuild
from sightline.errors import CheckpointError
from sightline.registry import get_model


def load_module(path: str | Path, name: str | None = None, device: str | torch.device = "cpu"):
    """Rebuild a registered LightningModule from an artifact, in eval mode on ``device``.

    Args:
        path: ``models/<name>/`` (safetensors + config.json) or a Lightning ``.ckpt``.
        name: the model name; required for a bare ``.ckpt``.
        device: where to put the model.
    """
    path = Path(path)
    saved_name, hparams, state = read_checkpoint(path)
    name = name or saved_name
    if name is None:
        raise CheckpointError(f"{path}: model name unknown; pass name=")
    return rebuild(get_model(name).module, hparams, state, path, name).eval().to(device)


def select_device() -> torch.device:
    """CUDA when present, else CPU (decided at run time, never hard-coded)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_for_inference(
    path: str | Path, name: str | None = None, device: str | torch.device | None = None
) -> tuple[torch.nn.Module, Callable, Callable]:
    """``(model, preprocess, postprocess)`` for serving and evaluation.

    ``preprocess`` maps a list of PIL images to the model's input batch (the same function the
    DataModule uses); ``postprocess`` maps model outputs to plain Python results.
    """
    module = load_module(path, name, device or select_device())
    return module, module.preprocess, module.postprocess
