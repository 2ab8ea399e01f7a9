"""Seed spread: how much a model's metrics move with the training seed (``make spread``), and
whether a gain over the served model is larger than that."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sightline.errors import InputError
from sightline.registry import get_evaluation


def as_number(value: Any) -> float | None:
    """``value`` as a float, or ``None`` for a non-number, a bool or NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


SPREAD_FACTOR = 2.0  # a gain must exceed this many seed standard deviations to count


def spread_summary(runs: list[dict]) -> dict[str, dict]:
    """Per numeric metric present in every run: mean, sample standard deviation and values."""
    import statistics

    out = {}
    for key in runs[0] if runs else ():
        values = [r.get(key) for r in runs]
        if all(as_number(v) is not None for v in values) and len(values) > 1:
            out[key] = {
                "mean": round(statistics.fmean(values), 6),
                "std": round(statistics.stdev(values), 6),
                "values": values,
            }
    return out


def load_spread(path: Path) -> dict | None:
    """A ``make spread`` file (``metrics/spread/<model>.json``), or ``None`` where there is
    none; a damaged one is an ``InputError`` naming it."""
    import json

    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not JSON ({err}); run `make spread` again") from None


def selection_spread(model: str, spread: dict | None) -> float | None:
    """The seed standard deviation of ``model``'s selection metric in a ``make spread`` file."""
    entry = ((spread or {}).get("metrics") or {}).get(get_evaluation(model).selection[0]) or {}
    return as_number(entry.get("std"))


def inside_spread(model: str, value: float, served: float, std: float | None) -> bool:
    """Whether ``value``'s gain over ``served`` is no larger than ``SPREAD_FACTOR`` seed
    standard deviations (a worse value is inside too); ``std`` ``None``: nothing is."""
    if std is None:
        return False
    gain = value - served if get_evaluation(model).selection[1] == "max" else served - value
    return gain <= SPREAD_FACTOR * std


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def section_differs(spread: dict | None, section) -> list[str]:
    """``params_differ`` for a typed params ``section`` (a model's pydantic params), with its
    schema's defaults."""
    defaults = type(section)().model_dump(mode="json")
    return params_differ(spread, section.model_dump(mode="json"), defaults)


def params_differ(spread: dict | None, section: dict, defaults: dict | None = None) -> list[str]:
    """The keys (dotted, e.g. ``model.lr``) where the params ``section`` (``model_dump(mode=
    "json")``) differs from the one the spread was measured with: a spread of another recipe
    may not say how much this one moves. Empty without a spread or its section.

    A key the spread's section lacks was added to the schema after it; set to its default
    (``defaults``, the schema's own ``model_dump``), it is the recipe the spread measured, since
    a new option's default keeps the earlier behaviour."""
    if not spread or not isinstance(spread.get("section"), dict):
        return []
    then, now = _flat(spread["section"]), _flat(section)
    base = _flat(defaults or {})
    return sorted(
        k
        for k in then.keys() | now.keys()
        if then.get(k) != now.get(k) and not (k not in then and k in base and now[k] == base[k])
    )
