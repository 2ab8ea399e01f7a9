"""The time-to-accuracy benchmark in its tiny mode: both recipes train, the report is written."""

from __future__ import annotations

import json

from conftest import run_cli


def test_time_to_accuracy_benchmark_runs_both_recipes_and_prints_the_ratio(repo_copy, tmp_path):
    """`benchmarks/time_to_accuracy.py --tiny` in the tiny repository: the previous recipe
    (HEAD's params) and the current one (a changed learning rate) each train and evaluate; the
    report has both clocks, test figures and their ratio."""
    import shutil

    import yaml
    from conftest import REPO

    repo = tmp_path / "repo"
    shutil.copytree(repo_copy, repo, symlinks=True)
    (repo / "benchmarks").mkdir(exist_ok=True)
    shutil.copy2(REPO / "benchmarks/time_to_accuracy.py", repo / "benchmarks")
    assert run_cli(["python", "pipeline/prepare.py", "fashion_mnist"], repo).returncode == 0
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["models"]["classifier"]["model"]["lr"] *= 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "tta.json"
    result = run_cli(
        [
            "python",
            "benchmarks/time_to_accuracy.py",
            "--models",
            "classifier",
            "--tiny",
            "--out",
            str(out),
        ],
        repo,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "classifier" and row["metric"] == "val/acc"
    assert row["previous"]["points"] and row["current"]["points"]
    assert row["target"] == max(v for _, v in row["previous"]["points"])
    assert row["previous_tta_s"] is not None and row["previous_tta_s"] > 0
    assert 0.0 <= row["previous"]["test"] <= 1.0 and 0.0 <= row["current"]["test"] <= 1.0
    assert "| classifier | val/acc |" in result.stdout
    bad = run_cli(["python", "benchmarks/time_to_accuracy.py", "--models", "nosuch"], repo)
    assert bad.returncode != 0 and "--models: unknown nosuch" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_a_profile_and_settings_apply_to_a_recipe():
    """``--profile`` leaves and ``--set`` values land in the params tree (both recipes get
    them); a setting outside ``models.`` is refused with its text."""
    import importlib.util

    import pytest
    from conftest import REPO

    from sightline.errors import InputError

    spec = importlib.util.spec_from_file_location("tta", REPO / "benchmarks/time_to_accuracy.py")
    tta = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tta)
    raw = {"seed": 1, "models": {"classifier": {"model": {"lr": 0.1, "dropout": 0.3}}}}
    profile = {"models": {"classifier": {"model": {"lr": 1.5}, "trainer": {"max_epochs": 8}}}}
    out = tta.with_settings(raw, profile, ["models.classifier.attack.n=0"])
    assert out["models"]["classifier"] == {
        "model": {"lr": 1.5, "dropout": 0.3},
        "trainer": {"max_epochs": 8},
        "attack": {"n": 0},
    }
    assert raw["models"]["classifier"]["model"]["lr"] == 0.1  # a copy
    with pytest.raises(InputError, match="--set seed=2"):
        tta.with_settings(raw, None, ["seed=2"])
