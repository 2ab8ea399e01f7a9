"""The learning-curve command on the tiny Fashion-MNIST copy: every method trains on the same
nested subsets, the results file grows by call, and the picture is written."""

from __future__ import annotations

import json

import yaml
from conftest import run_cli


def test_curve_trains_each_method_per_size_and_keeps_earlier_points(repo_copy, tmp_path):
    assert run_cli(["python", "pipeline/prepare.py", "fashion_mnist"], repo_copy).returncode == 0
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        yaml.safe_dump({"models": {"classifier": {"data": {"dataset": "fashion_mnist"}}}})
    )
    out = tmp_path / "report"
    common = [
        "--profile",
        str(profile),
        "--out",
        str(out),
        "--scratch-images",
        "64",
        "--finetune-images",
        "0",
    ]
    # the larger size first: its features cover the smaller one's, so they are computed once
    first = run_cli(
        ["python", "pipeline/learning_curve.py", "--sizes", "4", "--methods", "frozen", *common],
        repo_copy,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    rows = json.loads((out / "learning_curve.json").read_text())
    assert [r["per_class"] for r in rows] == [4]
    assert set(rows[0]) >= {"frozen", "frozen_val", "images"} and "scratch" not in rows[0]
    assert (out / "learning_curve.png").stat().st_size > 0

    second = run_cli(
        ["python", "pipeline/learning_curve.py", "--sizes", "2", "--finetune-epochs", "1", *common],
        repo_copy,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert "curve: features of" not in second.stdout  # the cached ones serve the smaller size
    rows = json.loads((out / "learning_curve.json").read_text())
    assert [r["per_class"] for r in rows] == [2, 4]  # the earlier point is kept, sizes in order
    assert rows[0]["images"] == 20  # 2 of each of the 10 classes
    for method in ("scratch", "frozen", "finetune"):
        assert 0.0 <= rows[0][method] <= 1.0 and 0.0 <= rows[0][f"{method}_val"] <= 1.0
    assert rows[0]["backbone"] == rows[1]["backbone"] == "efficientnet_lite0"  # tiny params
    assert rows[0]["scratch_optimizer"] == "adamw" and "scratch_optimizer" not in rows[1]

    profile.write_text(  # another from-scratch recipe does not extend this curve's points
        yaml.safe_dump(
            {
                "models": {
                    "classifier": {
                        "data": {"dataset": "fashion_mnist"},
                        "model": {"optimizer": "sgd"},
                    }
                }
            }
        )
    )
    other = run_cli(
        ["python", "pipeline/learning_curve.py", "--sizes", "4", "--methods", "scratch", *common],
        repo_copy,
    )
    assert other.returncode != 0 and "Traceback" not in other.stderr
    assert "trained with adamw, not sgd" in other.stderr

    recipe = "efficientnet_lite0 (blocks.4+blocks.5+blocks.6 at 160 px, mlp head)"  # params.yaml
    assert rows[0]["transfer_recipe"] == rows[1]["transfer_recipe"] == recipe
    for r in rows:  # a curve measured with another backbone is not extended with this one
        del r["transfer_recipe"]  # as points written before the recipe was recorded
        r["backbone"] = "efficientnet_lite2"
    (out / "learning_curve.json").write_text(json.dumps(rows))
    mixed = run_cli(
        ["python", "pipeline/learning_curve.py", "--sizes", "2", "--methods", "frozen", *common],
        repo_copy,
    )
    assert mixed.returncode != 0 and "Traceback" not in mixed.stderr
    assert f"measured with efficientnet_lite2, not {recipe}" in mixed.stderr


def test_curve_rejects_a_bad_size_in_one_line(repo_copy):
    assert run_cli(["python", "pipeline/prepare.py", "fashion_mnist"], repo_copy).returncode == 0
    for size in ("ten", "100000"):  # not a number; more than a class holds
        result = run_cli(["python", "pipeline/learning_curve.py", "--sizes", size], repo_copy)
        assert result.returncode != 0 and "--sizes" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
