"""What packaging and serving share: the serving settings (``serving/params.yaml``), the
provenance a packaged model carries, and clip's held-out image index.

A packaged model holds exactly what ``models/<name>/`` holds (``model.safetensors`` +
``config.json``, no pickles) plus, for ``clip``, the held-out image index its search endpoint
answers from. ``pipeline/package.py`` writes them into the BentoML store; this module knows
nothing of BentoML.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sightline.registry import get_evaluation

INDEX_WEIGHTS = "index.safetensors"
INDEX_META = "index.json"


def params_hash(section: Any) -> str:
    """A short, order-independent hash of a params section (the values training saw)."""
    text = json.dumps(section, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def headline(name: str, metrics: dict) -> dict[str, float]:
    """The model's headline metrics (as the leaderboard shows them) from its metrics file."""
    from sightline.leaderboard import flatten

    evaluation = get_evaluation(name)
    flat = flatten(metrics)
    keys = (
        evaluation.selection[0],
        evaluation.test,
        *evaluation.headline,
        "train_time_s",
        "params",
    )
    return {k: flat[k] for k in dict.fromkeys(keys) if isinstance(flat.get(k), int | float)}


def load_index(path: str | Path) -> tuple[dict, dict]:
    """The clip index stored by ``package_model``: ``(tensors, meta)``."""
    from safetensors.torch import load_file

    path = Path(path)
    return load_file(str(path / INDEX_WEIGHTS)), json.loads((path / INDEX_META).read_text())
