"""What a model declares about itself: how it trains (``ModelSpec``, in its model file) and how
it is judged (``EvaluationSpec``, in its metrics file). The registry maps names to both."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sightline.errors import ConfigError


def _no_callbacks(section: Any, datamodule: Any, seed: int) -> list:
    return []


@dataclass(frozen=True)
class ModelSpec:
    """Everything the pipeline needs to train and serve one model.

    Attributes:
        name: the model's one name (registry key, params section, stage, route prefix).
        module: the LightningModule class; its constructor takes plain values only.
        params: the pydantic class of the ``models.<name>`` section.
        datamodule: ``(section, data_dir, seed) -> LightningDataModule``.
        module_kwargs: ``(section, datamodule) -> dict`` of constructor arguments, i.e. the
            ``model`` section plus what the data decide (class names, preprocessing).
        monitor: the validation metric that selects the best checkpoint.
        mode: ``"max"`` or ``"min"`` for ``monitor``.
        callbacks: ``(section, datamodule, seed) -> list`` of extra Lightning callbacks the
            model trains with (e.g. the validation FID that ``monitor`` names).
        served: whether the package stage puts the model into the Bento.
        index: ``(module, prepared data dir) -> (tensors, meta)``: data the packaged model
            carries beside its weights (clip's search index), or ``None``.
    """

    name: str
    module: type
    params: type
    datamodule: Callable[..., Any]
    module_kwargs: Callable[..., dict]
    monitor: str
    mode: Literal["max", "min"]
    callbacks: Callable[..., list] = _no_callbacks
    served: bool = True
    index: Callable[..., tuple[dict, dict]] | None = None


@dataclass(frozen=True)
class EvaluationSpec:
    """How a trained model is judged.

    Attributes:
        evaluate: ``(module, datamodule, report_dir, section, seed, model_dir) -> metrics``; the
            pictures it writes into ``report_dir`` are the model's reports.
        selection: ``(metric, "max" | "min")``: what its experiments are ranked by and what a
            promotion must beat. A validation figure (``val/...``) of the chosen checkpoint:
            ranking many experiments by a test figure would select on the test split.
        test: the test-split counterpart of ``selection``, shown beside it for reading only.
        headline: further metrics the leaderboard and the packaged model's metadata show.
        pictures: the report pictures the leaderboard page shows.
    """

    evaluate: Callable[..., dict]
    selection: tuple[str, Literal["max", "min"]]
    test: str
    headline: tuple[str, ...] = ()
    pictures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.selection[0].startswith("val/"):
            raise ConfigError(
                f"selection metric {self.selection[0]!r}: experiments are ranked on a validation "
                "figure ('val/...'); put the test figure in `test`"
            )
