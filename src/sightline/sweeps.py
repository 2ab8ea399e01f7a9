"""Hyperparameter search with Optuna: drawing a trial's values from a ``sweeps.<model>`` space,
and the training callback that reports a trial's validation metric and stops a pruned trial.

The sweep itself (one DVC experiment per trial) is ``pipeline/sweep.py``; a trial's training
process finds its trial through ``TrialReporter.from_spec``.
"""

from __future__ import annotations

import json
from typing import Any

import lightning as L

from sightline.config import SearchChoice, SearchRange, SweepConfig
from sightline.errors import SightlineError


class TrialPruned(SightlineError):
    """The study's pruner stopped this trial; the sweep records it as pruned."""


def suggest(trial, sweep: SweepConfig) -> dict[str, Any]:
    """One value per ``sweep.space`` path, drawn by ``trial`` (an ``optuna.Trial``)."""
    values: dict[str, Any] = {}
    for path, dim in sweep.space.items():
        if isinstance(dim, SearchChoice):
            values[path] = trial.suggest_categorical(path, _hashable(dim.choices))
        elif _integral(dim):
            values[path] = trial.suggest_int(
                path, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log
            )
        else:
            values[path] = trial.suggest_float(
                path, float(dim.low), float(dim.high), step=dim.step, log=dim.log
            )
    return {path: _unhashable(value) for path, value in values.items()}


def _integral(dim: SearchRange) -> bool:
    return all(isinstance(v, int) for v in (dim.low, dim.high)) and (
        dim.step is None or isinstance(dim.step, int)
    )


def _hashable(choices: list[Any]) -> list[Any]:
    # Optuna's categorical choices must be None, bool, int, float or str: lists travel as JSON
    return [json.dumps(c) if isinstance(c, list | dict) else c for c in choices]


def _unhashable(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def median_pruner(startup_trials: int, warmup_epochs: int):
    """The study's pruner: stop a trial whose metric is behind the median of earlier trials at
    the same epoch, once ``startup_trials`` have finished and after ``warmup_epochs``. Optuna
    keeps no pruner in its storage: the sweep and each trial's training build it here."""
    import optuna

    return optuna.pruners.MedianPruner(
        n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs
    )


class TrialReporter(L.Callback):
    """After each validation epoch: report ``metric`` to an Optuna trial as step = epoch; when the
    study's pruner says so, raise ``TrialPruned`` (one line from the stage, no artifact written).

    Args:
        trial: the ``optuna.Trial``.
        metric: a logged validation metric (``val/acc``).
    """

    def __init__(self, trial, metric: str) -> None:
        self.trial, self.metric = trial, metric

    @classmethod
    def from_spec(cls, spec: str) -> TrialReporter:
        """From the JSON that ``pipeline/sweep.py`` hands a trial's stage:
        ``{"storage": url, "study": name, "trial": number, "metric": name, "startup_trials":
        n, "warmup_epochs": n}``."""
        import optuna

        try:
            info = json.loads(spec)
            study = optuna.load_study(
                study_name=info["study"],
                storage=info["storage"],
                pruner=median_pruner(info["startup_trials"], info["warmup_epochs"]),
            )
            trial_id = next(t._trial_id for t in study.trials if t.number == info["trial"])
            return cls(optuna.trial.Trial(study, trial_id), info["metric"])
        except (ValueError, KeyError, TypeError, StopIteration) as err:
            raise SightlineError(f"sweep trial {spec!r}: not found ({err})") from None

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        prune = False
        if trainer.is_global_zero:
            if self.metric not in trainer.callback_metrics:
                logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
                raise SightlineError(
                    f"sweep metric {self.metric} is not logged (validation logs: {', '.join(logged)})"
                )
            value = float(trainer.callback_metrics[self.metric])
            self.trial.report(value, step=epoch)
            prune = self.trial.should_prune()
            if prune:
                self.trial.set_user_attr("pruned_at_epoch", epoch + 1)
        if trainer.strategy.broadcast(prune):  # every rank stops together
            raise TrialPruned(
                f"trial {self.trial.number} pruned after epoch {epoch + 1}: "
                f"{self.metric} behind the study's median"
            )
