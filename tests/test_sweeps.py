"""Optuna sweeps: values drawn from a params space, a trial's training reports and is pruned."""

from __future__ import annotations

import optuna
import pytest
from conftest import tiny_section

from sightline.config import SweepConfig
from sightline.errors import SightlineError
from sightline.params import with_values
from sightline.sweeps import TrialPruned, TrialReporter, suggest
from sightline.training import train

SPACE = {
    "space": {
        "model.lr": {"low": 0.001, "high": 0.1, "log": True},
        "model.hidden": {"low": 8, "high": 64, "step": 8},
        "model.dropout": {"low": 0.0, "high": 0.5},
        "model.channels": {"choices": [[8, 16], [16, 32]]},
        "model.pool": {"choices": ["flatten", "gap"]},
    }
}


def test_suggest_draws_typed_values_inside_the_space():
    sweep = SweepConfig.model_validate(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = suggest(study.ask(), sweep)
        assert 0.001 <= values["model.lr"] <= 0.1 and isinstance(values["model.lr"], float)
        assert values["model.hidden"] in range(8, 65, 8) and isinstance(values["model.hidden"], int)
        assert values["model.channels"] in ([8, 16], [16, 32])  # lists come back as lists
        assert values["model.pool"] in ("flatten", "gap")
        section = tiny_section("classifier").model_dump(mode="json")
        trial_section = with_values(section, values)
        assert trial_section["model"]["channels"] == values["model.channels"]
        tiny_section("classifier").model_validate(trial_section)  # a valid section


def test_a_pruned_trial_stops_and_exports_nothing(prepared_fashion, tmp_path):
    """A pruner that stops every trial after its first report: the fit raises ``TrialPruned``
    after epoch 1 of 3, the trial holds that one report, and no model directory is written."""
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(2.0))
    trial = study.ask()
    section = tiny_section("classifier", max_epochs=3)
    out = tmp_path / "models/classifier"
    with pytest.raises(TrialPruned, match="pruned after epoch 1"):
        train(
            "classifier",
            section,
            0,
            prepared_fashion,
            out,
            tmp_path / "run",
            None,
            [TrialReporter(trial, "val/acc")],
        )
    frozen = study.trials[0]
    assert list(frozen.intermediate_values) == [0] and frozen.user_attrs["pruned_at_epoch"] == 1
    assert not out.exists()


def test_a_completed_trial_reports_every_epoch(prepared_fashion, tmp_path):
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    info = train(
        "classifier",
        tiny_section("classifier", max_epochs=2),
        0,
        prepared_fashion,
        tmp_path / "out",
        tmp_path / "run",
        None,
        [TrialReporter(trial, "val/acc")],
    )
    values = study.trials[0].intermediate_values
    assert list(values) == [0, 1] and max(values.values()) == pytest.approx(info["best_val/acc"])


def test_an_unlogged_metric_is_named(prepared_fashion, tmp_path):
    trial = optuna.create_study().ask()
    with pytest.raises(
        SightlineError, match=r"val/accuracy is not logged \(validation logs: .*val/acc"
    ):
        train(
            "classifier",
            tiny_section("classifier"),
            0,
            prepared_fashion,
            tmp_path / "out",
            tmp_path / "run",
            None,
            [TrialReporter(trial, "val/accuracy")],
        )


def test_a_trial_process_prunes_with_the_sweeps_own_pruner(tmp_path):
    """Optuna's storage keeps no pruner: the trial's training rebuilds the sweep's from the spec
    it is handed (1 startup trial, 1 warmup epoch here), not Optuna's default (5 and 0)."""
    import json

    from sightline.sweeps import median_pruner

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        study_name="s", storage=storage, direction="maximize", pruner=median_pruner(1, 1)
    )
    done = study.ask()
    done.report(0.9, 0)
    done.report(0.9, 1)
    study.tell(done, 0.9)
    number = study.ask().number
    spec = {"storage": storage, "study": "s", "trial": number, "metric": "val/acc"}
    reporter = TrialReporter.from_spec(
        json.dumps({**spec, "startup_trials": 1, "warmup_epochs": 1})
    )
    reporter.trial.report(0.1, 0)
    assert not reporter.trial.should_prune()  # epoch 0: still warming up
    reporter.trial.report(0.1, 1)
    assert reporter.trial.should_prune()  # behind the one finished trial's 0.9
