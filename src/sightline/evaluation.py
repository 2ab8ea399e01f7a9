"""Evaluate one trained model: load its artifact, run its evaluator, merge training facts."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from sightline.artifacts import TRAIN_INFO_FILE
from sightline.config import ModelParams
from sightline.errors import CheckpointError
from sightline.inference import load_module, select_device
from sightline.io import atomic_dir
from sightline.registry import get_evaluation, get_model

VOLATILE_KEYS = ("train_time_s",)  # wall-clock facts: never part of a reproducibility check


def evaluate(
    name: str, section: ModelParams, seed: int, model_dir: Path, data_dir: Path, report_dir: Path
) -> dict:
    """Metrics of ``models/<name>`` on the test split; pictures replace ``report_dir`` atomically.

    Returns:
        The metrics dict for ``metrics/<name>.json``.
    """
    spec = get_model(name)
    model_dir = Path(model_dir)
    module = load_module(model_dir, name, select_device())
    try:
        info = json.loads((model_dir / TRAIN_INFO_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{model_dir / TRAIN_INFO_FILE}: missing; re-run train@{name}"
        ) from None
    L.seed_everything(seed, verbose=False)
    dm = spec.datamodule(section, data_dir, seed)
    with atomic_dir(report_dir) as tmp:
        metrics = get_evaluation(name).evaluate(module, dm, tmp, section, seed, model_dir)
    return {
        "model": name,
        "dataset": section.data.dataset,
        **metrics,
        "train_time_s": info["train_time_s"],
        "epochs": info["epochs"],
        "params": info["params"],
        # the numeric precision it was trained in (not "precision", a sample score's name)
        **({"train_precision": info["precision"]} if "precision" in info else {}),
    }


def compare_metrics(expected: dict, actual: dict, prefix: str = "") -> list[str]:
    """Differences between two metrics dicts (exact equality), ignoring wall-clock keys."""
    diffs = []
    for key in sorted(set(expected) | set(actual)):
        if key in VOLATILE_KEYS:
            continue
        a, b = expected.get(key), actual.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += compare_metrics(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: committed {a!r}, re-run {b!r}")
    return diffs
