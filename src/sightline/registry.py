"""The catalog of models: name -> how it trains (``ModelSpec``) and how it is judged
(``EvaluationSpec``).

One name per model everywhere: registry key = params section = ``train@<name>`` stage =
``models/<name>/`` = BentoML model tag = route prefix. A model is a package
``sightline.models.<name>`` whose ``SPEC`` says how it trains, plus a module
``sightline.metrics.<name>`` whose ``EVALUATION`` says how it is judged: adding both registers it.
The catalog lists the packages without importing them, and imports a model's code only when
that model is asked for, so a stage that trains one model imports no other model's code and
adding a model changes no file the other models' stages depend on (``dvc.yaml``'s ``deps``
follow the same convention, and a test checks them).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path

from sightline.errors import ConfigError
from sightline.spec import EvaluationSpec, ModelSpec

MODELS_DIR = Path(__file__).parent / "models"  # sightline.models: one subpackage per model


@cache
def _packages() -> tuple[str, ...]:
    return tuple(sorted(m.name for m in pkgutil.iter_modules([str(MODELS_DIR)]) if m.ispkg))


def list_models() -> list[str]:
    """Names of all registered models (the subpackages of ``sightline.models``), sorted."""
    return list(_packages())


def _member(package: str, name: str, attr: str, kind: type):
    if name not in list_models():
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(list_models())})")
    try:
        module = importlib.import_module(f"sightline.{package}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"sightline.{package}.{name}":
            raise
        raise ConfigError(f"model {name!r} has no sightline/{package}/{name}.py") from None
    value = getattr(module, attr, None)
    if not isinstance(value, kind):
        raise ConfigError(f"sightline.{package}.{name}: defines no {attr} ({kind.__name__})")
    return value


def get_model(name: str) -> ModelSpec:
    """The training spec of a registered model; an unknown name is a ``ConfigError``."""
    spec = _member("models", name, "SPEC", ModelSpec)
    if spec.name != name:
        raise ConfigError(f"sightline.models.{name}: SPEC is named {spec.name!r}, not {name!r}")
    return spec


def get_evaluation(name: str) -> EvaluationSpec:
    """How a registered model is judged (its metrics module's ``EVALUATION``)."""
    return _member("metrics", name, "EVALUATION", EvaluationSpec)


def served_models() -> list[str]:
    """The models the package stage puts into the Bento, sorted."""
    return [name for name in list_models() if get_model(name).served]
