"""Schema building blocks of the params file: strict frozen pydantic bases, the trainer, dataset
and data sections every model shares, and validation that names the bad key.

An unknown or mistyped key is an error that names the key (``models.classifier.model.widht``),
never a silent default. ``load_top`` reads a params file's top level (seed, datasets); parsing the model sections
(which needs each model's schema) is ``sightline.params``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sightline.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


class Strict(BaseModel):
    """Base for every params section: unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DatasetConfig(Strict):
    """How ``prepare`` builds one dataset (``datasets.<name>``)."""

    root: str | None = None  # overrides the default location (IDX dir, zip or image folder)
    download: bool = True  # fall back to torchvision's download when no local copy exists
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5)  # only when the source has no test split
    max_per_class: int | None = Field(None, gt=0)  # tiny runs: cap images per class and split


class EvasionConfig(Strict):
    """``datasets.spam.evasion``: synthetic image spam. For this fraction of messages, ham and
    spam alike, a span of the body's own text is moved into a rendered image attachment."""

    fraction: float = Field(0.25, ge=0.0, le=1.0)
    min_share: float = Field(0.6, gt=0.0, le=1.0)  # share of the body moved, drawn uniformly
    max_share: float = Field(1.0, gt=0.0, le=1.0)  # from [min_share, max_share]
    min_chars: int = Field(40, gt=0)  # shorter bodies are left alone
    max_chars: int = Field(900, gt=0)  # the most text one image carries


class SpamDatasetConfig(DatasetConfig):
    """``datasets.spam``: raw emails labelled by folder (or mbox file) name."""

    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)  # of the earlier collection, stratified
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5)  # one-collection sources: the latest mail
    near_duplicate: float = Field(0.8, gt=0.0, le=1.0)  # MinHash Jaccard above which two are one
    evasion: EvasionConfig = EvasionConfig()


DATASET_CONFIGS: dict[str, type[DatasetConfig]] = {"spam": SpamDatasetConfig}


class AugmentConfig(Strict):
    """Batch augmentation applied on the device after transfer (training only)."""

    shift: int = Field(0, ge=0, le=8)  # random translation in pixels, zero padded
    hflip: bool = False
    erase: float = Field(0.0, ge=0.0, le=1.0)  # probability of random erasing per image


class ImageDataConfig(Strict):
    """``models.<name>.data`` for models trained on a prepared image dataset."""

    dataset: Literal["fashion_mnist", "cifar10"] = "fashion_mnist"
    batch_size: int = Field(128, gt=0)
    eval_batch_size: int = Field(512, gt=0)
    num_workers: int = Field(0, ge=0)
    augment: AugmentConfig = AugmentConfig()
    train_subset: int | None = Field(None, gt=0)  # use only the first N shuffled train images


class TrainerConfig(Strict):
    """``models.<name>.trainer``: passed straight to ``lightning.Trainer``."""

    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    num_nodes: int = Field(1, gt=0)
    precision: str = "32-true"
    max_epochs: int = Field(10, gt=0)
    max_steps: int = -1
    deterministic: bool = True
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = Field(1, gt=0)
    log_every_n_steps: int = Field(50, gt=0)
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    enable_progress_bar: bool = True


class ScoreConfig(Strict):
    """``models.<name>.score``: sample-quality scoring on the project classifier's features."""

    samples: int = Field(10000, gt=1)  # generated (and real) images behind FID/KID/IS at evaluation
    val_samples: int = Field(2000, gt=1)  # per validation epoch, when FID selects the checkpoint
    kid_subsets: int = Field(100, gt=0)
    kid_subset_size: int = Field(1000, gt=1)
    batch_size: int = Field(500, gt=0)


class ModelParams(Strict):
    """One ``models.<name>`` section; each model narrows ``data`` and ``model``.

    ``upstream`` is a further input of the model's train/evaluate stages (``dvc.yaml`` reads it):
    the trained classifier whose features score generated images, or, for a model that needs
    none, its own prepared data again.
    """

    upstream: str | None = None
    data: Strict
    model: Strict
    trainer: TrainerConfig = TrainerConfig()


class SearchRange(Strict):
    """A number drawn from ``[low, high]``: an integer when both bounds are, log-uniform with
    ``log: true``, on a grid of ``step`` when given."""

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> SearchRange:
        if not self.low < self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("log and step exclude each other")
        return self


class SearchChoice(Strict):
    """One of ``choices`` (numbers, strings, booleans or lists)."""

    choices: list[Any] = Field(min_length=2)


class SweepConfig(Strict):
    """``sweeps.<model>``: what ``make sweep`` (Optuna) searches over in ``models.<model>``.

    ``space`` and ``fixed`` are keyed by dotted paths inside the model's section
    (``model.lr``); ``sightline.params`` checks that every path exists and every bound and
    choice is a valid value of that key.
    """

    space: dict[str, SearchRange | SearchChoice] = Field(min_length=1)
    fixed: dict[str, Any] = {}  # set in every trial (the default's value is trial 0's)
    metric: str | None = None  # a logged validation metric; None: the model's checkpoint monitor
    direction: Literal["maximize", "minimize"] | None = None  # None: the monitor's mode
    startup_trials: int = Field(3, ge=0)  # random trials before TPE, and before any pruning
    warmup_epochs: int = Field(1, ge=0)  # epochs of a trial before it may be pruned


class Params(Strict):
    """The whole ``params.yaml``."""

    seed: int
    datasets: dict[str, DatasetConfig]
    models: dict[str, Any]  # validated per model against its own schema (``sightline.params``)
    sweeps: dict[str, SweepConfig] = {}  # no stage reads it: ``make sweep`` does


def _format_error(err: ValidationError, prefix: str) -> str:
    first = err.errors()[0]
    key = ".".join([prefix, *(str(p) for p in first["loc"])]).strip(".")
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if first["type"] == "missing":
        return f"{key}: missing key"
    return f"{key}: {first['msg']} (got {first.get('input')!r})"


def validate(cls: type[T], data: Any, prefix: str) -> T:
    """Validate ``data`` against ``cls``; raise ``ConfigError`` naming the first bad key.

    Args:
        cls: the pydantic section class.
        data: the raw (YAML) value.
        prefix: the dotted path of ``data`` in the params file, for the message.

    Returns:
        The validated, frozen section.
    """
    try:
        return cls.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise ConfigError(_format_error(err, prefix)) from None


def parse_top(raw: Any, source: str = "params.yaml") -> Params:
    """The top level of a raw params mapping (seed, datasets); model sections are left unread."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        if isinstance(raw.get("datasets"), dict):  # each dataset against its own schema
            datasets = {
                name: validate(DATASET_CONFIGS.get(name, DatasetConfig), cfg, f"datasets.{name}")
                for name, cfg in raw["datasets"].items()
            }
            raw = {**raw, "datasets": datasets}
        return validate(Params, raw, "")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def read_params(path: str | Path) -> Any:
    """The raw YAML of a params file; a missing file or bad YAML is a one-line ``ConfigError``."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML") from None


def load_top(path: str | Path) -> Params:
    """Read a params YAML file; validate its top level only (``parse_top``)."""
    return parse_top(read_params(path), str(path))
