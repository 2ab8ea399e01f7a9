"""``dvc repro package``: the trained models -> BentoML models -> the ``sightline`` Bento.

For each model, ``models/<name>/`` (safetensors + config.json) becomes a new version of BentoML
model ``<name>`` labelled with the git commit, the hash of its params section, its dataset and
experiment, with its headline metrics and class names as metadata, and whatever data its spec's
``index`` builds (``clip``: the held-out image index its search endpoint answers from). Then a wheel of ``sightline`` is built and
the Bento (``serving/service.py``, ``serving/params.yaml``, that wheel) is built and exported to
``bento/<name>.bento``, a DVC output: ``bentoml import`` restores it on another machine.
``bento/bento.json`` names the Bento and model tags.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import common

SERVING = Path("serving")
SERVING_PARAMS = SERVING / "params.yaml"
OUT = common.BENTO


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def build_wheel(dest: Path) -> Path:
    """A wheel of ``sightline`` from this checkout (the Bento installs it; nothing is copied)."""
    from sightline.errors import SightlineError

    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "-w",
        str(dest),
        str(common.ROOT),
    ]
    done = subprocess.run([*cmd, "--no-build-isolation"], capture_output=True, text=True)
    if done.returncode != 0:  # no setuptools in this environment: let pip fetch it
        done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("sightline-*.whl"))
    if done.returncode != 0 or not wheels:
        raise SightlineError(
            f"building the sightline wheel failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}"
        )
    return wheels[-1]


def package_model(
    name: str,
    model_dir: Path,
    metrics: dict,
    section: dict,
    commit: str,
    experiment: str | None = None,
    extra: tuple[dict, dict] | None = None,
):
    """Copy ``models/<name>/`` into a new version of BentoML model ``name``; return its tag.

    Args:
        name: the model name (= BentoML model name = service route prefix).
        model_dir: ``models/<name>/`` (safetensors + config.json).
        metrics: the model's ``metrics/<name>.json``.
        section: the model's params section as trained (hashed into the labels).
        commit: the git commit the artifact was produced at.
        experiment: the DVC experiment it was promoted from, if any.
        extra: ``(tensors, meta)`` of an index stored beside the weights (clip).
    """
    import bentoml
    from safetensors.torch import save_file

    from sightline.artifacts import CONFIG_FILE, WEIGHTS_FILE, read_config
    from sightline.packaging import INDEX_META, INDEX_WEIGHTS, headline, params_hash

    config = read_config(model_dir)
    hparams = config.get("hyper_parameters", {})
    labels = {
        "model": name,
        "git_commit": commit[:12],
        "params_hash": params_hash(section),
        "dataset": str(metrics.get("dataset", "")),
        "experiment": experiment or "workspace",
    }
    metadata = {
        "metrics": headline(name, metrics),
        "class_names": hparams.get("class_names") or metrics.get("class_names") or [],
        "git_commit": commit,
        "params": json.dumps(section, sort_keys=True),
    }
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        for file in (WEIGHTS_FILE, CONFIG_FILE):
            shutil.copyfile(model_dir / file, model.path_of(file))
        if extra is not None:
            tensors, meta = extra
            save_file(tensors, model.path_of(INDEX_WEIGHTS))
            Path(model.path_of(INDEX_META)).write_text(json.dumps(meta))
    return model.tag


def package(
    names: list[str], raw_models: dict, experiment: str | None, commit: str
) -> dict[str, str]:
    """Package each named model; ``{name: BentoML model tag}``."""
    from sightline.errors import CheckpointError
    from sightline.inference import load_module
    from sightline.registry import get_model

    tags = {}
    for name in names:
        print(f"packaging {name}", flush=True)
        model_dir, metrics_path = common.MODELS / name, common.METRICS / f"{name}.json"
        if not metrics_path.is_file():
            raise CheckpointError(f"{metrics_path}: missing; run `dvc repro evaluate@{name}`")
        metrics = json.loads(metrics_path.read_text())
        extra = None
        index = get_model(name).index
        if index is not None:
            prepared = common.PREPARED / raw_models[name]["data"]["dataset"]
            extra = index(load_module(model_dir, name, "cpu"), prepared)
        tag = package_model(name, model_dir, metrics, raw_models[name], commit, experiment, extra)
        tags[name] = str(tag)
        print(f"{name}: {tag}")
    return tags


def bento_files() -> list[str]:
    """The files of ``serving/`` a Bento carries: every module, the settings and the README."""
    return [*sorted(p.name for p in SERVING.glob("*.py")), "params.yaml", "README.md"]


def build_bento(config, commit: str, tags: dict[str, str]):
    """Build the Bento from a staging folder outside the checkout: ``serving/`` and a fresh wheel
    in ``wheels/``, which the service's image (``serving.service.IMAGE``) installs.

    ``dvc exp run --queue`` works in ``.dvc/tmp/exps/``, so nothing is built from the checkout
    itself. ``serving/models.json`` in the Bento pins the model versions just packaged (``tags``).
    """
    import tempfile

    import bentoml

    cwd = Path.cwd()
    files = bento_files()
    with tempfile.TemporaryDirectory(prefix="sightline-bento-") as stage:
        stage = Path(stage)
        (stage / "serving").mkdir()
        for name in files:
            if (SERVING / name).is_file():
                shutil.copyfile(SERVING / name, stage / "serving" / name)
        (stage / "serving/models.json").write_text(json.dumps(tags, indent=2) + "\n")
        print("building the sightline wheel", flush=True)
        wheel = build_wheel(stage / "wheels")
        print(f"building Bento {config.bento!r}", flush=True)
        os.chdir(stage)  # BentoML imports the service and resolves paths from here
        try:
            return bentoml.bentos.build(
                "serving.service:Sightline",
                name=config.bento,
                labels={"git_commit": commit[:12], "project": "sightline"},
                description=(stage / "serving/README.md").read_text()
                if (stage / "serving/README.md").is_file()
                else None,
                include=[
                    *(f"serving/{name}" for name in (*files, "models.json")),
                    f"wheels/{wheel.name}",
                ],
                build_ctx=str(stage),
            )
        finally:
            os.chdir(cwd)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument(
        "--serving",
        type=Path,
        default=SERVING_PARAMS,
        help="serving params (default: serving/params.yaml)",
    )
    p.add_argument(
        "--experiment",
        default=os.environ.get("DVC_EXP_NAME"),
        help="the DVC experiment the models come from, a label (default: $DVC_EXP_NAME, set by `dvc exp run`)",
    )
    p.add_argument(
        "--out", type=Path, default=OUT, help="folder for the exported Bento and bento.json"
    )
    args = p.parse_args()
    _, sections = common.load_all(args.params)

    import bentoml
    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # serving/, beside pipeline/
    from serving.settings import load_serving_config
    from sightline.io import atomic_dir
    from sightline.registry import served_models

    config = load_serving_config(args.serving)
    raw_models = yaml.safe_load(args.params.read_text())["models"]
    names = [n for n in served_models() if n in sections]
    commit = git_commit()
    tags = package(names, raw_models, args.experiment, commit)
    bento = build_bento(config, commit, tags)
    print(f"exporting {bento.tag} to {args.out}", flush=True)
    with atomic_dir(args.out) as tmp:
        bentoml.bentos.export_bento(bento.tag, str((tmp / f"{config.bento}.bento").resolve()))
        summary = {
            "bento": str(bento.tag),
            "models": tags,
            "git_commit": commit,
            "experiment": args.experiment or "workspace",
        }
        (tmp / "bento.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"bento: {bento.tag} -> {args.out / (config.bento + '.bento')}")


if __name__ == "__main__":
    common.run(main)
