"""The DVC stages end to end on a tiny copy of the repository, and their one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

CLASSIFIER_KEYS = {
    "model",
    "dataset",
    "test/acc",
    "test/f1_macro",
    "test/per_class",
    "test/n",
    "train_time_s",
    "epochs",
    "params",
}


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
    assert metrics["train_precision"] == "32-true"  # the tiny params' trainer precision
    assert len(metrics["test/per_class"]) == 10
    for png in ("confusion_matrix", "filters", "feature_maps"):
        assert (reproduced / f"reports/classifier/{png}.png").stat().st_size > 1000
    assert (reproduced / "models/classifier/model.safetensors").is_file()
    assert (reproduced / "dvclive/classifier/plots/metrics/val/acc.tsv").is_file()
    assert (reproduced / "dvc.lock").is_file()
    for name, pictures in (
        ("vae", ("reconstructions", "samples", "interpolation", "latent_space")),
        ("gan", ("samples", "progress", "interpolation", "class_coverage")),
    ):
        scores = json.loads((reproduced / f"metrics/{name}.json").read_text())
        assert scores["fid"] > 0 and scores["samples"] == 60 and "fid" in scores["real_floor"]
        assert 0.0 <= scores["precision"] <= 1.0  # the sample score, not the numeric precision
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
        (
            lambda p: p["models"]["classifier"]["trainer"].update(max_epoch=3),
            "models.classifier.trainer.max_epoch: unknown key",
        ),
        (
            lambda p: p["models"]["classifier"]["data"].update(batch_size="big"),
            "models.classifier.data.batch_size",
        ),
        (lambda p: p.update(seed=1.5), "seed"),
    ],
)
def test_bad_params_fail_with_one_line(repo_copy, tmp_path, edit, needle):
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    edit(params)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))
    stages = [["pipeline/train.py", "classifier"]]
    if not needle.startswith("models."):  # prepare reads the top level, not the model sections
        stages.append(["pipeline/prepare.py", "fashion_mnist"])
    for stage in stages:
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
    assert result.returncode == 2 and "models.nosuchmodel: unknown model" in result.stderr


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


def _committed_copy(reproduced: Path, dst: Path, edit=None) -> Path:
    """A copy of the reproduced tiny repository, its params changed by ``edit`` (a function of
    the params mapping), committed with what `dvc repro` left."""
    shutil.copytree(reproduced, dst, symlinks=True)
    run_cli(["dvc", "commit", "-f"], dst)  # earlier tests wrote into the copy's outputs
    if edit is not None:
        params = yaml.safe_load((dst / "params.yaml").read_text())
        edit(params)
        (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    run_cli([*git, "add", "-A"], dst)
    run_cli([*git, "commit", "-qm", "reproduced"], dst)
    return dst


def _two_nodes(reproduced: Path, tmp_path: Path, model: str, **trainer) -> tuple[Path, Path]:
    """Node 0: a committed copy of the tiny repository whose ``model`` trains on 2 nodes x 1 CPU
    process; node 1: a folder sharing only its code, params, data, run scratch and the model's
    upstream (the classifier a generative model scores its samples with)."""
    node0 = _committed_copy(
        reproduced,
        tmp_path / "node0",
        lambda p: p["models"][model]["trainer"].update(
            devices=1, num_nodes=2, accelerator="cpu", **trainer
        ),
    )
    (node0 / "runs").mkdir(exist_ok=True)
    node1 = tmp_path / "node1"
    node1.mkdir()
    for shared in ("pipeline", "src", "params.yaml", "data", "runs"):
        (node1 / shared).symlink_to(node0 / shared)
    if model in ("vae", "gan"):
        (node1 / "models").mkdir()
        (node1 / "models/classifier").symlink_to(node0 / "models/classifier")
    return node0, node1


def _start_nodes(node0: Path, node1: Path, model: str):
    """``dvc repro train@<model>`` on node 0 and the stage's command on node 1, rendezvous on a
    free loopback port; returns both processes."""
    import os
    import subprocess
    import sys

    from conftest import free_port

    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    opts = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    first = subprocess.Popen(
        ["dvc", "repro", f"train@{model}"], cwd=node0, env={**env, "NODE_RANK": "0"}, **opts
    )
    second = subprocess.Popen(
        [sys.executable, "pipeline/train.py", model],
        cwd=node1,
        env={**env, "NODE_RANK": "1"},
        **opts,
    )
    return first, second


def _evaluate_reads_node_zeros_result(node0: Path, node1: Path, model: str) -> None:
    assert json.loads((node0 / f"models/{model}/train.json").read_text())["world_size"] == 2
    assert (node0 / f"dvclive/{model}/plots/metrics").is_dir()
    written = sorted(str(p.relative_to(node1)) for p in node1.rglob("*") if not p.is_symlink())
    assert written in ([], ["models"]), written  # nothing but the folder of the shared upstream
    result = run_cli(["dvc", "repro", f"evaluate@{model}"], node0)
    assert result.returncode == 0, result.stderr[-2000:]
    ran = [line for line in result.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == [f"Running stage 'evaluate@{model}':"], result.stdout[-2000:]
    assert (node0 / f"metrics/{model}.json").is_file()


def test_two_nodes_train_with_rank_zero_writing_and_resume_after_a_lost_rank(reproduced, tmp_path):
    """`trainer.num_nodes: 2`: node 0 runs `dvc repro train@classifier`, node 1 the stage's
    command in its own folder (sharing only the code, the data and the run's scratch), both on
    the loopback with gloo. A rank killed mid-run fails both nodes with one line; running both
    again resumes from last.ckpt; only node 0 holds models/ and dvclive/; `evaluate` then reads
    the result like any other."""
    import signal
    import time

    import psutil

    node0, node1 = _two_nodes(reproduced, tmp_path, "classifier", strategy="ddp", max_epochs=40)

    first, second = _start_nodes(node0, node1, "classifier")
    last = node0 / "runs/classifier/checkpoints/last.ckpt"
    deadline = time.monotonic() + 180
    while not last.is_file() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.1)
    assert last.is_file(), "no last.ckpt before the run ended"
    rank1 = [
        proc
        for proc in psutil.Process(second.pid).children(recursive=True)
        if proc.environ().get("RANK") == "1"
    ]
    assert len(rank1) == 1
    rank1[0].send_signal(signal.SIGKILL)
    out0, err0 = first.communicate(timeout=180)
    out1, err1 = second.communicate(timeout=180)
    assert first.returncode != 0 and second.returncode == 2
    ours = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "rank 0 lost another process" in ours[0], err0[-2000:]
    assert "resume from runs/classifier/checkpoints/last.ckpt" in ours[0]
    assert "Traceback" not in err0 + err1
    ours = [line for line in err1.splitlines() if line.startswith("error:")]
    assert ours == [
        "error: train@classifier: rank 1 (node 1) was killed by SIGKILL; run the stage again on "
        "every node to resume from runs/classifier/checkpoints/last.ckpt"
    ], err1[-2000:]

    first, second = _start_nodes(node0, node1, "classifier")
    out0, err0 = first.communicate(timeout=300)
    out1, err1 = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err0[-2000:] + err1[-2000:]
    info = json.loads((node0 / "models/classifier/train.json").read_text())
    assert info["epochs"] == 40 and info["resumed_from"] == "runs/classifier/checkpoints/last.ckpt"
    assert info["global_steps"] == 40 * 10  # 320 images, 16 a step on each of the 2 ranks
    _evaluate_reads_node_zeros_result(node0, node1, "classifier")
    assert json.loads((node0 / "metrics/classifier.json").read_text())["test/n"] == 100


def test_two_nodes_train_the_gan(reproduced, tmp_path):
    """A generative model on 2 nodes: the GAN, whose steps each update one of its two networks,
    so DDP must expect parameters without a gradient (`ddp_find_unused_parameters_true`)."""
    node0, node1 = _two_nodes(
        reproduced, tmp_path, "gan", strategy="ddp_find_unused_parameters_true", max_epochs=2
    )
    first, second = _start_nodes(node0, node1, "gan")
    out0, err0 = first.communicate(timeout=300)
    out1, err1 = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err0[-2000:] + err1[-2000:]
    _evaluate_reads_node_zeros_result(node0, node1, "gan")


def test_a_sweep_runs_trials_as_experiments_and_resumes_after_an_interrupt(reproduced, tmp_path):
    """`make sweep` on the tiny classifier: 3 trials wanted, the second interrupted (Ctrl-C);
    the re-run resumes the study to 3 finished trials. Trial 0 is today's params; every finished
    trial is a DVC experiment holding its values; `make compare` ranks them."""
    import os
    import signal
    import subprocess
    import sys

    import optuna

    sweep = {
        "fixed": {"trainer.max_epochs": 2},
        "space": {
            "model.lr": {"low": 0.001, "high": 0.05, "log": True},
            "model.dropout": {"low": 0.0, "high": 0.3},
        },
        "startup_trials": 1,
    }
    repo = _committed_copy(
        reproduced, tmp_path / "repo", lambda p: p.update(sweeps={"classifier": sweep})
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "pipeline/sweep.py", "classifier", "--trials", "3"]
    proc = subprocess.Popen(
        cmd,
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # Ctrl-C as at a terminal, also when pytest runs as a background job (`cmd &`), whose
        # children inherit SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if (
            line.startswith("  ")
            and "Running stage 'train@classifier'" in line
            and any(s.startswith("trial 1 (") for s in seen)
        ):
            break
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the middle of trial 1
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, "".join(seen) + out + err
    assert "make sweep MODEL=classifier` resumes" in err and "Traceback" not in err

    result = run_cli(cmd, repo)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = optuna.load_study(
        study_name="sweep-classifier", storage=f"sqlite:///{repo / 'sweeps/classifier.db'}"
    )
    states = [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"], states
    baseline = study.trials[0].params
    assert baseline == {"model.lr": 0.01, "model.dropout": 0.0}  # the tiny params of today
    assert (
        "best: trial" in result.stdout
        and "make promote MODEL=classifier EXP=sweep-classifier-" in result.stdout
    )

    rows = json.loads(run_cli(["dvc", "exp", "show", "--json"], repo).stdout)
    found = {
        rev["name"]: rev["data"]["params"]["params.yaml"]["data"]["models"]["classifier"]
        for row in rows
        for exp in row.get("experiments") or []
        for rev in exp["revs"]
    }
    for trial in study.trials:
        name = f"sweep-classifier-{trial.number}"
        if trial.state.name != "COMPLETE":
            assert name not in found
            continue
        section = found[name]
        assert section["trainer"]["max_epochs"] == 2
        assert section["model"]["lr"] == pytest.approx(trial.params["model.lr"], rel=1e-5)
        assert section["model"]["dropout"] == pytest.approx(trial.params["model.dropout"], abs=1e-6)
    result = run_cli(["python", "pipeline/compare.py"], repo)
    assert result.returncode == 0, result.stderr[-2000:]
    board = (repo / "reports/leaderboard.md").read_text()
    assert all(f"sweep-classifier-{n}" in board for n in (0, 2, 3)), board


TOY_MODEL = '''"""toy: a logistic regression on the pixels, the sixth model a test adds."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from sightline.config import ImageDataConfig, ModelParams, Strict, TrainerConfig
from sightline.data.images import ImageDataModule
from sightline.spec import ModelSpec


class ToyConfig(Strict):
    lr: float = 0.05


class ToyParams(ModelParams):
    upstream: str = "data/prepared/fashion_mnist"
    data: ImageDataConfig = ImageDataConfig()
    model: ToyConfig = ToyConfig()
    trainer: TrainerConfig = TrainerConfig()


class ToyModule(L.LightningModule):
    def __init__(self, class_names: list[str], pixels: int, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(pixels, len(class_names))
        self.val_acc = MulticlassAccuracy(len(class_names))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1).float() / 255)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val/acc", self.val_acc)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _datamodule(section: ToyParams, data_dir, seed: int) -> ImageDataModule:
    return ImageDataModule(data_dir, section.data.batch_size, section.data.eval_batch_size, seed=seed)


def _module_kwargs(section: ToyParams, dm: ImageDataModule) -> dict:
    pixels = dm.preprocess.channels * dm.preprocess.size[0] * dm.preprocess.size[1]
    return {"class_names": dm.class_names, "pixels": pixels, **section.model.model_dump()}


SPEC = ModelSpec(
    name="toy", module=ToyModule, params=ToyParams, datamodule=_datamodule,
    module_kwargs=_module_kwargs, monitor="val/acc", mode="max",
)
'''

TOY_METRICS = '''"""Evaluation of ``toy``: validation and test accuracy."""

from __future__ import annotations

import torch

from sightline.spec import EvaluationSpec


@torch.no_grad()
def evaluate_toy(module, dm, report_dir, section, seed: int, model_dir) -> dict:
    out = {}
    for split in ("val", "test"):
        x, y = dm.split(split).tensors
        acc = float((module(x.to(module.device)).argmax(-1).cpu() == y).float().mean())
        out |= {f"{split}/acc": round(acc, 6), f"{split}/n": len(y)}
    return out


EVALUATION = EvaluationSpec(
    evaluate=evaluate_toy, selection=("val/acc", "max"), test="test/acc", headline=("test/acc",)
)
'''


def test_a_sixth_model_is_three_files_and_a_params_section(reproduced, tmp_path):
    """A toy model added by its model package, its metrics module and its params section (the
    registry finds the package): `dvc repro` trains, evaluates and packages it and re-runs no
    other model; `make compare` ranks it."""
    import bentoml

    repo = tmp_path / "repo"
    shutil.copytree(reproduced, repo, symlinks=True)
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    run_cli(["dvc", "commit", "-f"], repo)  # earlier tests wrote into the copy's outputs
    assert json.loads(run_cli(["dvc", "status", "--json"], repo).stdout or "{}") == {}
    run_cli([*git, "add", "-A"], repo)
    run_cli([*git, "commit", "-qm", "reproduced"], repo)  # what `dvc repro` left, committed
    (repo / "src/sightline/models/toy").mkdir()
    (repo / "src/sightline/models/toy/__init__.py").write_text(TOY_MODEL)
    (repo / "src/sightline/metrics/toy.py").write_text(TOY_METRICS)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["models"]["toy"] = {
        "upstream": "data/prepared/fashion_mnist",
        "data": {"dataset": "fashion_mnist", "batch_size": 16, "eval_batch_size": 64},
        "trainer": dict(params["models"]["classifier"]["trainer"]),
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run_cli(["git", "status", "--porcelain", "--untracked-files=all"], repo).stdout
    assert sorted(line[3:] for line in status.splitlines()) == [
        "params.yaml",
        "src/sightline/metrics/toy.py",
        "src/sightline/models/toy/__init__.py",
    ]

    stale = json.loads(run_cli(["dvc", "status", "--json"], repo).stdout)
    assert set(stale) == {"train@toy", "evaluate@toy", "package"}, stale
    result = run_cli(["dvc", "repro"], repo)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ran = {
        line.split("'")[1]
        for line in result.stdout.splitlines()
        if line.startswith("Running stage")
    }
    assert ran == {"train@toy", "evaluate@toy", "package"}, ran
    metrics = json.loads((repo / "metrics/toy.json").read_text())
    assert metrics["model"] == "toy" and 0.0 <= metrics["test/acc"] <= 1.0
    bento = json.loads((repo / "bento/bento.json").read_text())
    stored = bentoml.models.get(bento["models"]["toy"])
    assert stored.info.metadata["metrics"]["test/acc"] == metrics["test/acc"]
    result = run_cli(["python", "pipeline/compare.py"], repo)
    assert result.returncode == 0, result.stderr[-2000:]
    board = (repo / "reports/leaderboard.md").read_text()
    assert "## toy: experiments by `val/acc` (max)" in board
    assert "| toy | val/acc (max) **" in board


def test_a_profile_runs_as_one_experiment_of_only_the_models_named(reproduced, tmp_path):
    """`make experiment PROFILE=... MODELS=classifier`: the profile's classifier keys become one
    `dvc exp run` of only the classifier's stages (the generative models that read it are left
    alone); a profile that would score a model with a classifier of other images fails in one
    line before DVC starts."""
    repo = _committed_copy(reproduced, tmp_path / "repo")
    profile = {
        "models": {
            "classifier": {
                "model": {
                    "stem": "whiten",
                    "whiten_images": 50,
                    "downsample": "maxpool",
                    "activation": "gelu",
                    "pool": "max",
                    "hidden": 0,
                    "ema_decay": 0.5,
                    "tta": "flip",
                },
            },
            "vae": {"data": {"dataset": "cifar10"}},
        }
    }
    (repo / "harder.yaml").write_text(yaml.safe_dump(profile))
    cmd = ["python", "pipeline/experiment.py", "harder.yaml"]

    result = run_cli(cmd, repo)  # every model: the vae would be scored on other images
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: harder.yaml: models.vae.data.dataset would be cifar10, but its upstream "
        "models/classifier trains on fashion_mnist: set models.vae.data.dataset: fashion_mnist "
        "in harder.yaml"
    )
    result = run_cli([*cmd, "--models", "vae"], repo)
    assert result.returncode == 2
    assert "add classifier to --models, or leave vae out" in result.stderr
    result = run_cli([*cmd, "--models", "clasifier"], repo)
    assert result.returncode == 2 and "--models clasifier: no models.clasifier" in result.stderr
    assert not list((repo / ".git/refs").rglob("exps"))  # DVC never started

    result = run_cli([*cmd, "--models", "classifier"], repo)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first = result.stdout.splitlines()[0]
    assert first.startswith("dvc exp run -n harder-classifier -S ") and first.endswith(
        " evaluate@classifier"
    )
    assert "models.vae" not in first
    ran = result.stdout + result.stderr
    assert "Running stage 'train@classifier'" in ran and "evaluate@classifier" in ran
    assert not any(
        f"Running stage '{stage}'" in ran for stage in ("train@vae", "train@gan", "package")
    )
    from sightline.leaderboard import parse_exp_show

    rows = json.loads(run_cli(["dvc", "exp", "show", "--json"], repo).stdout)
    [exp] = [e for e in parse_exp_show(rows) if e.name == "harder-classifier"]
    model = exp.params["models"]["classifier"]["model"]
    assert model["stem"] == "whiten" and model["tta"] == "flip"
    assert exp.params["models"]["vae"]["data"]["dataset"] == "fashion_mnist"
    assert 0.0 <= exp.metrics["classifier"]["test/acc"] <= 1.0


def test_a_profile_moves_the_image_models_to_cifar10_in_one_experiment(reproduced, tmp_path):
    """`make experiment PROFILE=params/cifar10.yaml` as README shows it, on a tiny CIFAR-style
    zip: one `dvc exp run` prepares CIFAR-10, trains and scores the classifier on it, then the
    VAE and GAN on the same images with that classifier's features, and packages them."""
    from conftest import make_image_zip

    zip_path = make_image_zip(tmp_path / "cifar.zip", per_class=8, classes=10, corrupt=1)

    def add_cifar(params: dict) -> None:
        params["datasets"]["cifar10"] = {
            "root": str(zip_path),
            "download": False,
            "val_fraction": 0.25,
            "test_fraction": 0.25,
        }

    repo = _committed_copy(reproduced, tmp_path / "repo", add_cifar)
    real = yaml.safe_load((Path(__file__).parents[1] / "params/cifar10.yaml").read_text())
    profile = {  # the committed profile's data keys; the tiny nets and trainers stay
        "models": {
            name: {k: v for k, v in real["models"][name].items() if k in ("upstream", "data")}
            for name in ("classifier", "vae", "gan")
        }
    }
    for section in profile["models"].values():
        section["data"].update(batch_size=16, eval_batch_size=64)
    (repo / "cifar10.yaml").write_text(yaml.safe_dump(profile))

    result = run_cli(["python", "pipeline/experiment.py", "cifar10.yaml"], repo, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first = result.stdout.splitlines()[0]
    assert first.startswith("dvc exp run -n cifar10 -S ") and "evaluate@" not in first
    ran = result.stdout + result.stderr
    stages = [f"{s}@{m}" for s in ("train", "evaluate") for m in ("classifier", "vae", "gan")]
    for stage in ("prepare@cifar10", *stages, "package"):
        assert f"Running stage '{stage}'" in ran, stage
    assert "Running stage 'train@clip'" not in ran  # no other model is dragged along
    from sightline.leaderboard import parse_exp_show

    rows = json.loads(run_cli(["dvc", "exp", "show", "--json"], repo).stdout)
    [exp] = [e for e in parse_exp_show(rows) if e.name == "cifar10"]
    for name in ("classifier", "vae", "gan"):
        assert exp.params["models"][name]["data"]["dataset"] == "cifar10"
    assert exp.metrics["classifier"]["test/n"] == 20  # a quarter of the 79 readable images
    for name in ("vae", "gan"):
        scores = exp.metrics[name]
        assert scores["dataset"] == "cifar10" and scores["fid"] >= 0.0
        assert scores["real_floor"]["fid"] >= 0.0 and scores["num_classes"] == 10
    config = json.loads((repo / "models/gan/config.json").read_text())
    preprocess = config["hyper_parameters"]["preprocess"]
    assert preprocess["channels"] == 3 and preprocess["size"] == [32, 32]


def test_experiments_are_ranked_in_the_leaderboard(reproduced):
    """Two real `dvc exp run` variants of the classifier appear ranked by val/acc, and the
    winner is promoted to the served Bento (last test: it changes the copy's workspace).

    The variants run the classifier's own stages only, as `make experiment --models
    classifier` does; promoting one re-runs what depends on it (VAE, GAN, package) once."""
    for name, dropout in (("drop-a", 0.3), ("drop-b", 0.6)):
        result = run_cli(
            [
                *("dvc", "exp", "run", "-n", name),
                *("-S", f"models.classifier.model.dropout={dropout}", "evaluate@classifier"),
            ],
            reproduced,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli(["python", "pipeline/compare.py"], reproduced)
    assert result.returncode == 0, result.stderr[-2000:]
    board = (reproduced / "reports/leaderboard.md").read_text()
    section = board.split("## classifier: experiments by `val/acc` (max)")[1].split("##")[0]
    rows = [
        r.strip("| ").split(" | ")
        for r in section.splitlines()
        if r.startswith("| ") and "rank" not in r
    ]
    scored = [cells for cells in rows if cells[3] != "—"]
    assert {cells[1] for cells in scored} >= {"drop-a", "drop-b"}, section
    values = [float(cells[3]) for cells in scored]
    assert values == sorted(values, reverse=True), section
    assert [cells[0] for cells in scored] == [str(i) for i in range(1, len(scored) + 1)], section
    assert rows[: len(scored)] == scored and all(
        cells[0] == "—" for cells in rows[len(scored) :]
    ), section
    assert (reproduced / "reports/leaderboard.html").stat().st_size > 1000

    # promote the winner: its checkpoint and metrics come into the workspace, its Bento is served
    best_name, best_value = scored[0][1], float(scored[0][3])
    result = run_cli(["python", "pipeline/promote.py", "classifier"], reproduced)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((reproduced / "metrics/classifier.json").read_text())["val/acc"] == best_value
    bento = json.loads((reproduced / "bento/bento.json").read_text())
    experiment = best_name if best_name in ("drop-a", "drop-b") else "workspace"
    assert bento["experiment"] == experiment, (best_name, bento)
    import bentoml

    model = bentoml.models.get(bento["models"]["classifier"])
    assert model.info.labels["experiment"] == experiment
    assert model.info.metadata["metrics"]["val/acc"] == best_value
    assert bentoml.bentos.get(bento["bento"]) is not None
    status = run_cli(["dvc", "status", "--json"], reproduced)
    assert json.loads(status.stdout or "{}") == {}, status.stdout


def test_stages_find_the_project_interpreter(tmp_path):
    """`dvc repro` outside the activated environment: a stage started by an interpreter without
    the dependencies re-runs itself with the project's (here .venv's, or the active one's);
    with none to find, it fails in one line."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["VIRTUAL_ENV"] = str(
        Path(sys.executable).parent.parent
    )  # the environment running the tests
    bare = [sys.executable, "-S"]  # no site-packages: no torch, no lightning
    done = subprocess.run(
        [*bare, "pipeline/train.py", "--help"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and "usage: train.py" in done.stdout, done.stderr[-2000:]
    shutil.copytree(REPO / "pipeline", tmp_path / "pipeline")  # no .venv above tmp_path
    env.pop("VIRTUAL_ENV")
    done = subprocess.run(
        [*bare, "pipeline/train.py", "classifier"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "lacks" in done.stderr and "make setup" in done.stderr


def test_a_clone_pulls_and_serves_without_training(reproduced, tmp_path):
    """Repository A pushes its data, models, Bento and an experiment to a DVC remote (a local
    folder); a fresh clone B pulls them and serves a prediction: no stage re-runs in B, and the
    experiment is in B's `dvc exp show`. Runs after the experiments test, whose runs it shares."""
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    from conftest import free_port, png_bytes, wait_ready

    a, store, origin = tmp_path / "a", tmp_path / "store", tmp_path / "origin.git"
    shutil.copytree(reproduced, a, symlinks=True)
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    run_cli(["dvc", "commit", "-f"], a)  # earlier tests wrote into the copy's outputs
    run_cli([*git, "add", "-A"], a)
    run_cli([*git, "commit", "-qm", "trained"], a)
    assert (
        run_cli(["dvc", "remote", "modify", "--local", "store", "url", str(store)], a).returncode
        == 0
    )
    pushed = run_cli(["dvc", "push"], a)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    run_cli(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run_cli(["git", "remote", "add", "origin", str(origin)], a)
    assert run_cli(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], a).returncode == 0
    shared = run_cli(["dvc", "exp", "push", "origin", "drop-a"], a)
    assert shared.returncode == 0, shared.stderr[-2000:]

    b = tmp_path / "b"
    assert (
        run_cli(["git", "clone", "-q", "-b", "main", str(origin), str(b)], tmp_path).returncode == 0
    )
    run_cli(["dvc", "remote", "modify", "--local", "store", "url", str(store)], b)
    pulled = run_cli(["dvc", "pull"], b)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    status = run_cli(["dvc", "status", "--json"], b)
    assert json.loads(status.stdout or "{}") == {}, status.stdout  # nothing to re-run
    assert (b / "models/classifier/model.safetensors").is_file()
    got = run_cli(["dvc", "exp", "pull", "origin", "drop-a"], b)
    assert got.returncode == 0, got.stderr[-2000:]
    shown = json.loads(run_cli(["dvc", "exp", "show", "--all-commits", "--json"], b).stdout)
    names = {e.get("name") for row in shown for e in row.get("experiments") or []}
    assert "drop-a" in names, names

    home = tmp_path / "bentoml"  # a store that has never seen these models
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    restored = subprocess.run(
        [sys.executable, "pipeline/restore.py"], cwd=b, env=env, capture_output=True, text=True
    )
    assert restored.returncode == 0 and "imported" in restored.stdout, restored.stderr[-2000:]
    tag = json.loads((b / "bento/bento.json").read_text())["bento"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_ready(url, proc)
        boundary = "sightlineboundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
            ).encode()
            + png_bytes((28, 28), (128, 128, 128))
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            f"{url}/classifier/predict",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            answer = json.loads(resp.read())
        assert resp.status == 200 and answer[0][0]["label"], answer
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
