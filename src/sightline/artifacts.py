"""A trained model's files: their names, and reading them back without unpickling objects.

``models/<name>/`` holds ``model.safetensors`` (weights), ``config.json`` (the model's name and
its plain-value constructor arguments), ``train.json`` (training facts), ``best.ckpt`` (the
Lightning checkpoint) and ``artifacts/`` (files callbacks wrote during training).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sightline.errors import CheckpointError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CKPT_FILE = "best.ckpt"
TRAIN_INFO_FILE = "train.json"
ARTIFACTS = "artifacts"  # files callbacks write during training; exported with the model


def artifacts_dir(trainer: Any) -> Path:
    """Where callbacks keep training-time files (e.g. per-epoch samples) that ship with the model.

    It lives in the trainer's run directory, so a resumed run keeps the files of earlier epochs.
    """
    return Path(trainer.default_root_dir) / ARTIFACTS


def read_config(model_dir: Path) -> dict:
    """``config.json`` of ``models/<name>/``, checking the weights are beside it."""
    model_dir = Path(model_dir)
    for path in (model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; run `dvc repro train@{model_dir.name}`")
    return json.loads((model_dir / CONFIG_FILE).read_text())


def read_checkpoint(path: Path) -> tuple[str | None, dict, dict]:
    """``(name, hyperparameters, state_dict)`` from a model directory or a ``.ckpt`` file.

    A directory is read through safetensors; a ``.ckpt`` with ``torch.load(weights_only=True)``.
    A ``.ckpt`` does not know its model's name (``None``).
    """
    path = Path(path)
    if path.is_dir():
        from safetensors.torch import load_file

        config = read_config(path)
        return config.get("name"), config["hyper_parameters"], load_file(str(path / WEIGHTS_FILE))
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt file raises many types; the message names the file
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(err).__name__})") from None
    return None, dict(ckpt.get("hyper_parameters", {})), ckpt["state_dict"]


def rebuild(cls: type, hparams: dict, state: dict, path: Path, name: str):
    """``cls(**hparams)`` with ``state`` loaded strictly; a mismatch names the file and model."""
    module = cls(**hparams)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise CheckpointError(f"{path}: weights do not match model {name!r}: {first}") from None
    return module
