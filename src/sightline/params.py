"""Parse ``params.yaml`` into typed objects: the top level, and each model's section against
that model's own schema.

A stage of one model parses only that model's section (``load_section``), so it imports no other
model's code; ``load_params`` checks the whole file. The top level alone (seed, datasets) is
``sightline.config.load_top``, which needs no model at all.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from sightline.config import (
    ModelParams,
    Params,
    SearchChoice,
    SweepConfig,
    parse_top,
    read_params,
    validate,
)
from sightline.errors import ConfigError
from sightline.registry import get_model, list_models


def _section(params: Params, name: str, source: str) -> ModelParams:
    if name not in list_models():
        raise ConfigError(
            f"{source}: models.{name}: unknown model (known: {', '.join(list_models())})"
        )
    if name not in params.models:
        raise ConfigError(f"{source}: models.{name}: section missing")
    try:
        return validate(get_model(name).params, params.models[name], f"models.{name}")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def parse_params(raw: Any, source: str = "params.yaml") -> tuple[Params, dict[str, ModelParams]]:
    """Parse a raw params mapping into the top-level params and one typed section per model.

    Returns:
        ``(params, sections)`` where ``sections[name]`` is that model's typed section.
    """
    params = parse_top(raw, source)
    sections = {name: _section(params, name, source) for name in params.models}
    for name, sweep in params.sweeps.items():
        if name not in sections:
            raise ConfigError(f"{source}: sweeps.{name}: no models.{name} section to search")
        check_sweep(name, params.models[name], sweep, source)
    return params, sections


def with_values(raw_section: dict, values: dict[str, Any]) -> dict:
    """A copy of a raw model section with dotted ``values`` (``{"model.lr": 0.01}``) set."""
    out = copy.deepcopy(raw_section or {})
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def check_sweep(name: str, raw_section: Any, sweep: SweepConfig, source: str) -> None:
    """Every path of ``sweeps.<name>`` is a key of model ``name``'s section, and every bound,
    choice and fixed value is a valid value of it; else a ``ConfigError`` naming the path."""
    cls = get_model(name).params
    defaults = validate(cls, raw_section, f"models.{name}").model_dump(mode="json")
    entries = [("fixed", path, [value]) for path, value in sweep.fixed.items()]
    entries += [
        ("space", path, dim.choices if isinstance(dim, SearchChoice) else [dim.low, dim.high])
        for path, dim in sweep.space.items()
    ]
    for group, path, values in entries:
        where = f"{source}: sweeps.{name}.{group}.{path}"
        node = defaults
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{where}: models.{name} has no key {path}")
            node = node[part]
        for value in values:
            try:
                validate(cls, with_values(raw_section, {path: value}), f"models.{name}")
            except ConfigError as err:
                raise ConfigError(f"{where}: {value!r} is not a valid value ({err})") from None


def parse_section(raw: Any, name: str, source: str = "params.yaml") -> tuple[Params, ModelParams]:
    """The top-level params and model ``name``'s typed section (other sections unread)."""
    params = parse_top(raw, source)
    return params, _section(params, name, source)


def load_params(path: str | Path) -> tuple[Params, dict[str, ModelParams]]:
    """Read and validate a whole params YAML file (see ``parse_params``)."""
    return parse_params(read_params(path), str(path))


def load_section(path: str | Path, name: str) -> tuple[Params, ModelParams]:
    """Read a params YAML file; validate its top level and model ``name``'s section."""
    return parse_section(read_params(path), name, str(path))
