"""The DVC stages end to end on a tiny copy of the repository, and their one-line errors."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import run_cli

CLASSIFIER_KEYS = {"model", "dataset", "test/acc", "test/f1_macro", "test/per_class", "test/n", "train_time_s", "epochs", "params"}  # fmt: skip


@pytest.fixture(scope="module")
def reproduced(repo_copy):
    """`dvc repro` once on the tiny copy; returns the copy."""
    result = run_cli(["dvc", "repro"], repo_copy)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return repo_copy


def test_dvc_repro_end_to_end(reproduced):
    metrics = json.loads((reproduced / "metrics/classifier.json").read_text())
    assert set(metrics) >= CLASSIFIER_KEYS
    assert metrics["test/n"] == 100 and 0.0 <= metrics["test/acc"] <= 1.0
    assert len(metrics["test/per_class"]) == 10
    for png in ("confusion_matrix", "filters", "feature_maps"):
        assert (reproduced / f"reports/classifier/{png}.png").stat().st_size > 1000
    assert (reproduced / "models/classifier/model.safetensors").is_file()
    assert (reproduced / "dvclive/classifier/plots/metrics/val/acc.tsv").is_file()
    assert (reproduced / "dvc.lock").is_file()
    for name, pictures in (("vae", ("reconstructions", "samples", "interpolation", "latent_space")), ("gan", ("samples", "progress", "interpolation", "class_coverage"))):  # fmt: skip
        scores = json.loads((reproduced / f"metrics/{name}.json").read_text())
        assert scores["fid"] > 0 and scores["samples"] == 60 and "fid" in scores["real_floor"]
        for png in pictures:
            assert (reproduced / f"reports/{name}/{png}.png").stat().st_size > 1000
    spam = json.loads((reproduced / "metrics/spam.json").read_text())
    assert spam["dataset"] == "spam" and 0.0 <= spam["test/f1"] <= 1.0 and "image_only/f1" in spam
    assert (reproduced / "reports/spam/curves/roc_fused.json").is_file()
    prepared = json.loads((reproduced / "data/prepared/spam/meta.json").read_text())
    assert prepared["split"] == "by collection" and prepared["counts"]["test"]["evasion"] > 0
    # nothing changed -> nothing re-runs
    again = run_cli(["dvc", "repro"], reproduced)
    assert again.returncode == 0 and "Running stage" not in again.stdout
    shown = run_cli(["dvc", "metrics", "show", "--json"], reproduced)
    assert "test/acc" in shown.stdout
    plots = run_cli(["dvc", "plots", "show", "--json"], reproduced)
    assert (
        plots.returncode == 0
        and "confusion_matrix.png" in plots.stdout
        and "val/acc" in plots.stdout
        and "roc_fused.json" in plots.stdout
    )


def test_params_change_reruns_only_that_model(reproduced):
    status = run_cli(["dvc", "status", "--json"], reproduced)
    assert json.loads(status.stdout or "{}") == {}
    params = yaml.safe_load((reproduced / "params.yaml").read_text())
    params["models"]["classifier"]["model"]["dropout"] = 0.1
    (reproduced / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = json.loads(run_cli(["dvc", "status", "--json"], reproduced).stdout)
    assert set(changed) == {"train@classifier", "evaluate@classifier"}
    params["models"]["classifier"]["model"]["dropout"] = 0.0
    params["models"]["vae"]["model"]["beta"] = 2.0  # the classifier does not depend on the VAE
    (reproduced / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = json.loads(run_cli(["dvc", "status", "--json"], reproduced).stdout)
    assert set(changed) == {"train@vae", "evaluate@vae"}
    params["models"]["vae"]["model"]["beta"] = 1.0
    (reproduced / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda p: p["models"]["classifier"]["trainer"].update(max_epoch=3), "models.classifier.trainer.max_epoch: unknown key"),
        (lambda p: p["models"]["classifier"]["data"].update(batch_size="big"), "models.classifier.data.batch_size"),
        (lambda p: p.update(seed=1.5), "seed"),
    ],
)  # fmt: skip
def test_bad_params_fail_with_one_line(repo_copy, tmp_path, edit, needle):
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    edit(params)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))
    for stage in (["pipeline/train.py", "classifier"], ["pipeline/prepare.py", "fashion_mnist"]):
        result = run_cli(["python", *stage, "--params", str(bad)], repo_copy)
        assert result.returncode == 2
        assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr


def test_missing_dataset_and_checkpoint_fail_with_one_line(repo_copy, tmp_path):
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["datasets"]["fashion_mnist"]["root"] = str(tmp_path / "absent")
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump(params))
    result = run_cli(
        ["python", "pipeline/prepare.py", "fashion_mnist", "--params", str(bad)], repo_copy
    )
    assert result.returncode == 2 and "absent" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    empty = tmp_path / "empty"
    empty.mkdir()
    for item in ("pipeline", "src", "params.yaml"):
        (empty / item).symlink_to(repo_copy / item)
    result = run_cli(["python", "pipeline/evaluate.py", "classifier"], empty)
    assert result.returncode == 2 and "models/classifier" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (empty / "metrics").exists()
    result = run_cli(["python", "pipeline/train.py", "nosuchmodel"], empty)
    assert result.returncode == 2 and "unknown model 'nosuchmodel'" in result.stderr


def test_ddp_two_cpu_processes(reproduced, tmp_path):
    """strategy=ddp, devices=2 on the CPU: the same training runs in two gloo processes."""
    params = yaml.safe_load((reproduced / "params.yaml").read_text())
    params["models"]["classifier"]["trainer"].update(strategy="ddp", devices=2, accelerator="cpu")
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(params))
    result = run_cli(
        ["python", "pipeline/train.py", "classifier", "--params", str(path)], reproduced
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((reproduced / "models/classifier/train.json").read_text())
    # 320 training images, batch 16 per process, 2 processes -> 10 steps in the one epoch
    assert info["world_size"] == 2 and info["global_steps"] == 10
    run_cli(["dvc", "checkout", "-f", "models/classifier"], reproduced)  # restore the repro output


def test_rerun_reproduces_committed_metrics_and_catches_tampering(reproduced, tmp_path):
    result = run_cli(["python", "pipeline/check_reproducible.py", "classifier"], reproduced)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reproduced" in result.stdout
    metrics = json.loads((reproduced / "metrics/classifier.json").read_text())
    metrics["test/acc"] = round(metrics["test/acc"] + 0.01, 6)
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(metrics))
    result = run_cli(
        ["python", "pipeline/check_reproducible.py", "classifier", "--metrics", str(tampered)],
        reproduced,
    )
    assert result.returncode == 1 and "test/acc" in result.stderr


def test_experiments_are_ranked_in_the_leaderboard(reproduced):
    """Two real `dvc exp run` variants of the classifier appear ranked by test/acc, and the
    winner is promoted to the served Bento (last test: it changes the copy's workspace)."""
    for name, dropout in (("drop-a", 0.3), ("drop-b", 0.6)):
        result = run_cli(["dvc", "exp", "run", "-n", name, "-S", f"models.classifier.model.dropout={dropout}"], reproduced)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli(["python", "pipeline/compare.py"], reproduced)
    assert result.returncode == 0, result.stderr[-2000:]
    board = (reproduced / "reports/leaderboard.md").read_text()
    section = board.split("## classifier: experiments by `test/acc` (max)")[1].split("##")[0]
    rows = [r.strip("| ").split(" | ") for r in section.splitlines() if r.startswith("| ") and "rank" not in r]  # fmt: skip
    scored = [cells for cells in rows if cells[3] != "—"]
    assert {cells[1] for cells in scored} >= {"drop-a", "drop-b"}, section
    values = [float(cells[3]) for cells in scored]
    assert values == sorted(values, reverse=True), section
    assert [cells[0] for cells in scored] == [str(i) for i in range(1, len(scored) + 1)], section
    assert rows[: len(scored)] == scored and all(cells[0] == "—" for cells in rows[len(scored) :]), section  # fmt: skip
    assert (reproduced / "reports/leaderboard.html").stat().st_size > 1000

    # promote the winner: its checkpoint and metrics come into the workspace, its Bento is served
    best_name, best_value = scored[0][1], float(scored[0][3])
    result = run_cli(["python", "pipeline/promote.py", "classifier"], reproduced)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        json.loads((reproduced / "metrics/classifier.json").read_text())["test/acc"] == best_value
    )
    bento = json.loads((reproduced / "models/bento/bento.json").read_text())
    experiment = best_name if best_name in ("drop-a", "drop-b") else "workspace"
    assert bento["experiment"] == experiment, (best_name, bento)
    import bentoml

    model = bentoml.models.get(bento["models"]["classifier"])
    assert model.info.labels["experiment"] == experiment
    assert model.info.metadata["metrics"]["test/acc"] == best_value
    assert bentoml.bentos.get(bento["bento"]) is not None
    status = run_cli(["dvc", "status", "--json"], reproduced)
    assert json.loads(status.stdout or "{}") == {}, status.stdout
