"""A tiny model registry: name -> LightningModule, DataModule builder, params schema, evaluator.

One name per model everywhere: registry key = params section = ``train@<name>`` stage =
``models/<name>/`` = BentoML model tag = service name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sightline.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """Everything the pipeline needs to train and evaluate one model.

    Attributes:
        name: the model's one name.
        module: the LightningModule class; its constructor takes plain values only.
        params: the pydantic class of the ``models.<name>`` section.
        datamodule: ``(section, data_dir, seed) -> LightningDataModule``.
        module_kwargs: ``(section, datamodule) -> dict`` of constructor arguments, i.e. the
            ``model`` section plus what the data decide (class names, preprocessing).
        evaluate: ``(module, datamodule, report_dir, section, seed, model_dir) -> metrics``.
        monitor: the validation metric that selects the best checkpoint.
        mode: ``"max"`` or ``"min"`` for ``monitor``.
        callbacks: ``(section, datamodule, seed) -> list`` of extra Lightning callbacks the
            model trains with (e.g. the validation FID that ``monitor`` names).
    """

    name: str
    module: type
    params: type
    datamodule: Callable[..., Any]
    module_kwargs: Callable[..., dict]
    evaluate: Callable[..., dict]
    monitor: str
    mode: str
    callbacks: Callable[..., list] = lambda section, dm, seed: []


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model; a duplicate name is an error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtin() -> None:
    # Model files register themselves on import; importing the package imports them all.
    import sightline.models  # noqa: F401


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def get_model(name: str) -> ModelSpec:
    """The spec of a registered model; an unknown name is a ``ConfigError``."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r} (known: {', '.join(sorted(_REGISTRY))})"
        ) from None
