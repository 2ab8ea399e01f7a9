"""Seed spread: `make spread` trains a model once per seed and stores each metric's spread;
`make compare` shows it as ± and a promotion whose gain is inside it is refused."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from sightline.leaderboard import markdown, parse_exp_show
from sightline.spread import (
    inside_spread,
    params_differ,
    section_differs,
    selection_spread,
    spread_summary,
)


def test_spread_summary_has_mean_std_and_values_of_numbers_only():
    runs = [
        {"val/acc": 0.90, "model": "classifier", "epochs": 3},
        {"val/acc": 0.92, "model": "classifier", "epochs": 3},
        {"val/acc": 0.94, "model": "classifier", "epochs": 3},
    ]
    out = spread_summary(runs)
    assert set(out) == {"val/acc", "epochs"}  # strings are not spread
    assert out["val/acc"] == {"mean": 0.92, "std": 0.02, "values": [0.90, 0.92, 0.94]}
    assert out["epochs"]["std"] == 0.0
    assert spread_summary(runs[:1]) == {}  # one run has no spread


def test_a_gain_inside_twice_the_seed_std_does_not_count():
    spread = {"seeds": [42, 43, 44], "metrics": {"val/acc": {"std": 0.004}}}
    std = selection_spread("classifier", spread)
    assert std == 0.004
    assert inside_spread("classifier", 0.906, 0.900, std)  # +0.006 <= 2 x 0.004
    assert not inside_spread("classifier", 0.910, 0.900, std)  # +0.010 > 0.008
    assert not inside_spread("classifier", 0.906, 0.900, None)  # no spread measured
    # lower is better: the gain is the drop
    vae = {"metrics": {"val/nelbo": {"std": 0.5}}}
    assert inside_spread("vae", 236.5, 237.2, selection_spread("vae", vae))
    assert not inside_spread("vae", 235.0, 237.2, selection_spread("vae", vae))


def test_leaderboard_shows_the_spread_beside_the_selection_metric():
    head = {
        "rev": "a" * 40,
        "name": "main",
        "data": {"metrics": {"metrics/classifier.json": {"data": {"val/acc": 0.9}}}},
    }
    spreads = {"classifier": {"seeds": [42, 43, 44], "metrics": {"val/acc": {"std": 0.0031}}}}
    md = markdown({"classifier": {"val/acc": 0.9}}, {}, parse_exp_show([head]), spreads)
    assert "## classifier: experiments by `val/acc` (max) ± 0.0031 (3 seeds)" in md
    assert "**0.9000** ± 0.0031 (3 seeds)" in md


def test_a_spread_of_other_params_is_named_as_such():
    section = {"model": {"lr": 0.004, "channels": [32, 64]}, "trainer": {"max_epochs": 12}}
    spread = {
        "seeds": [42, 43, 44],
        "section": {"model": {"lr": 0.002, "channels": [32, 64]}, "trainer": {"max_epochs": 12}},
        "metrics": {"val/acc": {"std": 0.0031}},
    }
    assert params_differ(spread, section) == ["model.lr"]
    assert params_differ({**spread, "section": section}, section) == []
    assert params_differ(None, section) == [] and params_differ({"seeds": []}, section) == []
    new_key = {**section, "model": {**section["model"], "ema": 0.9}}
    assert params_differ({**spread, "section": section}, new_key) == ["model.ema"]
    # an option added to the schema since, at its default, is the recipe that was measured
    defaults = {"model": {"ema": 0.0}}
    at_default = {**section, "model": {**section["model"], "ema": 0.0}}
    assert params_differ({**spread, "section": section}, at_default, defaults) == []
    assert params_differ({**spread, "section": section}, new_key, defaults) == ["model.ema"]
    spread["differs"] = params_differ(spread, section)
    md = markdown({"classifier": {"val/acc": 0.9}}, {}, parse_exp_show([]), {"classifier": spread})
    assert "± 0.0031 (3 seeds; measured with other params: model.lr)" in md


def test_a_typed_section_is_compared_with_its_schema_defaults():
    from sightline.models.gan import GANParams

    section = GANParams()
    then = section.model_dump(mode="json")
    del then["model"]["conditional"]  # a spread measured before the option existed
    assert section_differs({"section": then}, section) == []
    changed = section.model_copy(
        update={"model": section.model.model_copy(update={"conditional": True})}
    )
    assert section_differs({"section": then}, changed) == ["model.conditional"]


def test_spread_command_trains_each_seed_and_compare_shows_it(repo_copy, tmp_path):
    assert run_cli(["python", "pipeline/prepare.py", "fashion_mnist"], repo_copy).returncode == 0
    out = tmp_path / "spread"
    result = run_cli(
        ["python", "pipeline/spread.py", "classifier", "--seeds", "2", "--out", str(out)],
        repo_copy,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    spread = json.loads((out / "classifier.json").read_text())
    assert spread["seeds"] == [42, 43] and spread["section"]["data"]["dataset"] == "fashion_mnist"
    acc = spread["metrics"]["val/acc"]
    assert len(acc["values"]) == 2 and all(0.0 <= v <= 1.0 for v in acc["values"])
    assert acc["std"] >= 0.0 and "test/acc" in spread["metrics"]
    assert "spread: classifier val/acc" in result.stdout

    bad = run_cli(["python", "pipeline/spread.py", "classifier", "--seeds", "1"], repo_copy)
    assert bad.returncode != 0 and "--seeds 1" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    unknown = run_cli(["python", "pipeline/spread.py", "nosuchmodel"], repo_copy)
    assert unknown.returncode != 0 and "unknown model 'nosuchmodel'" in unknown.stderr


def test_a_damaged_spread_file_is_one_line_naming_it(tmp_path):
    from sightline.errors import InputError
    from sightline.spread import load_spread

    assert load_spread(tmp_path / "none.json") is None
    bad = tmp_path / "gan.json"
    bad.write_text("{oops")
    with pytest.raises(InputError, match="gan.json: not JSON"):
        load_spread(bad)
