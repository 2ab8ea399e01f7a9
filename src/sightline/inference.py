"""Turn a trained artifact into ``(model, preprocess, postprocess)`` without unpickling objects.

Weights come from safetensors (``models/<name>/model.safetensors``) or a Lightning checkpoint
read with ``torch.load(weights_only=True)``; the model is rebuilt from its saved plain-value
hyperparameters, so the preprocessing used in training travels with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from sightline.errors import CheckpointError
from sightline.registry import get_model
from sightline.training import CONFIG_FILE, WEIGHTS_FILE


def _read_checkpoint(path: Path) -> tuple[str | None, dict, dict]:
    """``(name, hyperparameters, state_dict)`` from a model directory or a ``.ckpt`` file."""
    if path.is_dir():
        from safetensors.torch import load_file

        try:
            config = json.loads((path / CONFIG_FILE).read_text())
            state = load_file(str(path / WEIGHTS_FILE))
        except FileNotFoundError as err:
            raise CheckpointError(
                f"{err.filename}: missing; run `dvc repro train@<name>`"
            ) from None
        return config.get("name"), config["hyper_parameters"], state
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt file raises many types; the message names the file
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(err).__name__})") from None
    return None, dict(ckpt.get("hyper_parameters", {})), ckpt["state_dict"]


def load_module(path: str | Path, name: str | None = None, device: str | torch.device = "cpu"):
    """Rebuild a registered LightningModule from an artifact, in eval mode on ``device``.

    Args:
        path: ``models/<name>/`` (safetensors + config.json) or a Lightning ``.ckpt``.
        name: the model name; required for a bare ``.ckpt``.
        device: where to put the model.
    """
    path = Path(path)
    saved_name, hparams, state = _read_checkpoint(path)
    name = name or saved_name
    if name is None:
        raise CheckpointError(f"{path}: model name unknown; pass name=")
    module = get_model(name).module(**hparams)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise CheckpointError(f"{path}: weights do not match model {name!r}: {first}") from None
    return module.eval().to(device)


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
