"""The leaderboard: parsing `dvc exp show --json`, ranking by each model's selection metric."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, run_cli

from sightline.errors import ConfigError
from sightline.leaderboard import changed_params, markdown, parse_exp_show, rank
from sightline.registry import get_evaluation, list_models


def exp_entry(
    rev: str,
    name: str | None,
    metrics: dict | None,
    error: str | None = None,
    params: dict | None = None,
) -> dict:
    """One revision as DVC 3 prints it."""
    data = {
        "rev": rev,
        "timestamp": None,
        "deps": {},
        "outs": {},
        "meta": {},
        "params": {"params.yaml": {"data": params or {}}},
        "metrics": {f"metrics/{m}.json": {"data": v} for m, v in (metrics or {}).items()},
    }
    return {
        "rev": rev,
        "name": name,
        "data": data,
        "error": {"type": "ReproductionError", "msg": error} if error else None,
    }


def fabricated() -> list[dict]:
    head = exp_entry(
        "a" * 40, "main", {"classifier": {"val/acc": 0.90}, "vae": {"val/nelbo": 240.0}}
    )
    exps = [
        ("wide", {"classifier": {"val/acc": 0.93}, "vae": {"val/nelbo": 250.0}}, None),
        ("deep", {"classifier": {"val/acc": 0.95}, "vae": {"val/nelbo": 230.0}}, None),
        ("broken", {"classifier": {"val/acc": 0.99}}, "stage failed"),  # failed: never ranked
        ("no-vae", {"classifier": {"val/acc": "n/a"}}, None),  # metric missing or not a number
    ]
    head["experiments"] = [
        {"name": n, "revs": [exp_entry(f"{i}" * 40, n, m, e)]}
        for i, (n, m, e) in enumerate(exps, 1)
    ]
    return [exp_entry("workspace", None, {"classifier": {"val/acc": 0.5}}), head]


@pytest.mark.parametrize("name", list_models())
def test_every_model_declares_how_it_is_judged(name):
    evaluation = get_evaluation(name)
    assert evaluation.selection[1] in ("max", "min")
    assert evaluation.selection[0].startswith("val/") and evaluation.test.startswith(
        ("test/", "fid")
    )
    assert all(pic.endswith(".png") for pic in evaluation.pictures)


def test_ranks_max_and_min_metrics_with_failed_and_missing_last():
    exps = parse_exp_show(fabricated())
    assert [e.name for e in exps] == [
        "main",
        "wide",
        "deep",
        "broken",
        "no-vae",
    ]  # workspace left out
    acc = rank(exps, "classifier")
    assert [(e.name, s) for e, s in acc] == [
        ("deep", 0.95),
        ("wide", 0.93),
        ("main", 0.90),
        ("broken", None),
        ("no-vae", None),
    ]
    nelbo = rank(exps, "vae")  # lower is better
    assert [e.name for e, _ in nelbo] == ["deep", "main", "wide", "broken", "no-vae"]
    assert exps[3].error == "stage failed"
    plain = exp_entry("b" * 40, "plain-error", {"classifier": {"val/acc": 0.97}})
    plain["error"] = "killed"  # an error given as a bare string
    assert parse_exp_show([plain])[0].error == "killed"
    with pytest.raises(ConfigError, match="unknown model 'nosuchmodel'"):
        rank(exps, "nosuchmodel")


def test_changed_params_lists_only_real_changes():
    section = {
        "upstream": "x",
        "model": {"lr": 0.01, "channels": [8, 16]},
        "trainer": {"max_epochs": 3},
    }
    defaults = {
        "upstream": None,
        "model": {"lr": 0.001, "channels": [8, 16]},
        "trainer": {"max_epochs": 3},
    }
    assert changed_params(section, defaults) == {"model.lr": 0.01}


def test_markdown_marks_failed_experiments():
    md = markdown(
        {"classifier": {"val/acc": 0.9, "train_time_s": 12.5, "params": 1000}},
        {},
        parse_exp_show(fabricated()),
    )
    assert "| 1 | deep | 2222222 | 0.9500 |" in md
    assert "| — | broken | 3333333 | — | — | failed |" in md
    assert "## vae: experiments by `val/nelbo` (min)" in md


def test_compare_command_writes_markdown_and_html(tmp_path):
    exp_json = tmp_path / "exps.json"
    exp_json.write_text(json.dumps(fabricated()))
    out = tmp_path / "out"
    result = run_cli(
        ["python", "pipeline/compare.py", "--exp-json", str(exp_json), "--out", str(out)], REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| deep |" in (out / "leaderboard.md").read_text()
    page = (out / "leaderboard.html").read_text()
    assert page.startswith("<!doctype html>") and "<table>" in page
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = run_cli(
        ["python", "pipeline/compare.py", "--exp-json", str(bad), "--out", str(out)], REPO
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "bad.json" in result.stderr


def test_experiment_rows_show_what_each_experiment_changed_from_its_commit():
    from sightline.leaderboard import Experiment, experiment_rows

    params = {"models": {"vae": {"model": {"latent_dim": 16, "beta": 1.0}}}}
    changed = {"models": {"vae": {"model": {"latent_dim": 32, "beta": 1.0}}}}
    exps = [
        Experiment("main", "a" * 40, params, {"vae": {"val/nelbo": 237.2}}, baseline=True),
        Experiment("z32", "b" * 40, changed, {"vae": {"val/nelbo": 236.0}}),
    ]
    rows = experiment_rows(exps, "vae")
    assert [r[1] for r in rows] == ["z32", "main (commit)"]
    assert rows[0][6] == "model.latent_dim=32" and rows[1][6] == "—"


def test_experiments_are_ranked_on_validation_with_test_shown_beside():
    """A run with the better test figure but the worse validation figure ranks below: picking
    the best of many runs by a test figure would select on the test split."""
    head = exp_entry("a" * 40, "main", {"classifier": {"val/acc": 0.90, "test/acc": 0.80}})
    head["experiments"] = [
        {
            "name": "val-best",
            "revs": [
                exp_entry("1" * 40, "val-best", {"classifier": {"val/acc": 0.95, "test/acc": 0.85}})
            ],
        },
        {
            "name": "test-best",
            "revs": [
                exp_entry(
                    "2" * 40, "test-best", {"classifier": {"val/acc": 0.92, "test/acc": 0.99}}
                )
            ],
        },
    ]
    exps = parse_exp_show([head])
    assert [e.name for e, _ in rank(exps, "classifier")] == ["val-best", "test-best", "main"]
    md = markdown({}, {}, exps)
    assert "| 1 | val-best | 1111111 | 0.9500 | 0.8500 |" in md
    assert "| 2 | test-best | 2222222 | 0.9200 | 0.9900 |" in md


def test_a_test_figure_cannot_be_a_selection_metric():
    from sightline.spec import EvaluationSpec

    with pytest.raises(ConfigError, match="validation figure"):
        EvaluationSpec(evaluate=lambda *a: {}, selection=("test/acc", "max"), test="test/acc")


@pytest.mark.parametrize("name", list_models())
def test_results_table_lists_each_metric_once_selection_then_test(name):
    from sightline.leaderboard import results_table

    evaluation = get_evaluation(name)
    rows = [r for r in results_table(name, {}).splitlines()[2:]]
    keys = [r.split("`")[1] for r in rows]
    assert keys[:2] == [evaluation.selection[0], evaluation.test]
    assert len(keys) == len(set(keys))
