"""``dvc repro package``: the trained models -> BentoML models -> the ``sightline`` Bento.

For each model, ``models/<name>/`` (safetensors + config.json) becomes a new version of BentoML
model ``<name>`` labelled with the git commit, the hash of its params section, its dataset and
experiment, with its headline metrics and class names as metadata. ``clip`` also carries the
held-out image index its search endpoint answers from. Then a wheel of ``sightline`` is built and
the Bento (``serving/service.py``, ``serving/params.yaml``, that wheel) is built and exported to
``models/bento/<name>.bento``, a DVC output: ``bentoml import`` restores it on another machine.
``models/bento/bento.json`` names the Bento and model tags.
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
OUT = common.MODELS / "bento"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def build_wheel(dest: Path) -> Path:
    """A wheel of ``sightline`` from this checkout (the Bento installs it; nothing is copied)."""
    from sightline.errors import SightlineError

    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest), str(common.ROOT)]  # fmt: skip
    done = subprocess.run([*cmd, "--no-build-isolation"], capture_output=True, text=True)
    if done.returncode != 0:  # no setuptools in this environment: let pip fetch it
        done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("sightline-*.whl"))
    if done.returncode != 0 or not wheels:
        raise SightlineError(f"building the sightline wheel failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")  # fmt: skip
    return wheels[-1]


def package(names: list[str], raw_models: dict, experiment: str | None, commit: str) -> dict[str, str]:  # fmt: skip
    """Package each named model; ``{name: BentoML model tag}``."""
    from sightline.errors import CheckpointError
    from sightline.packaging import clip_index, package_model

    tags = {}
    for name in names:
        model_dir, metrics_path = common.MODELS / name, common.METRICS / f"{name}.json"
        if not metrics_path.is_file():
            raise CheckpointError(f"{metrics_path}: missing; run `dvc repro evaluate@{name}`")
        metrics = json.loads(metrics_path.read_text())
        extra = None
        if name == "clip":
            extra = clip_index(model_dir, common.PREPARED / raw_models[name]["data"]["dataset"])
        tag = package_model(name, model_dir, metrics, raw_models[name], commit, experiment, extra)  # fmt: skip
        tags[name] = str(tag)
        print(f"{name}: {tag}")
    return tags


BENTO_FILES = (
    "__init__.py",
    "service.py",
    "backends.py",
    "guard.py",
    "forms.py",
    "inputs.py",
    "openapi.py",
    "params.yaml",
    "README.md",
)


def build_bento(config, commit: str, tags: dict[str, str]):
    """Build the Bento from a staging folder outside the checkout: ``serving/`` and a fresh wheel
    in ``wheels/``, which the service's image (``serving.service.IMAGE``) installs.

    ``dvc exp run --queue`` works in ``.dvc/tmp/exps/``, so nothing is built from the checkout
    itself. ``serving/models.json`` in the Bento pins the model versions just packaged (``tags``).
    """
    import tempfile

    import bentoml

    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="sightline-bento-") as stage:
        stage = Path(stage)
        (stage / "serving").mkdir()
        for name in BENTO_FILES:
            if (SERVING / name).is_file():
                shutil.copyfile(SERVING / name, stage / "serving" / name)
        (stage / "serving/models.json").write_text(json.dumps(tags, indent=2) + "\n")
        wheel = build_wheel(stage / "wheels")
        os.chdir(stage)  # BentoML imports the service and resolves paths from here
        try:
            return bentoml.bentos.build(
                "serving.service:Sightline",
                name=config.bento,
                labels={"git_commit": commit[:12], "project": "sightline"},
                description=(stage / "serving/README.md").read_text() if (stage / "serving/README.md").is_file() else None,
                include=[*(f"serving/{name}" for name in (*BENTO_FILES, "models.json")), f"wheels/{wheel.name}"],
                build_ctx=str(stage),
            )  # fmt: skip
        finally:
            os.chdir(cwd)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--serving", type=Path, default=SERVING_PARAMS, help="serving params (default: serving/params.yaml)")  # fmt: skip
    p.add_argument("--experiment", default=os.environ.get("DVC_EXP_NAME"), help="the DVC experiment the models come from, a label (default: $DVC_EXP_NAME, set by `dvc exp run`)")  # fmt: skip
    p.add_argument("--out", type=Path, default=OUT, help="folder for the exported Bento and bento.json")  # fmt: skip
    args = p.parse_args()
    _, sections = common.load(args.params)

    import bentoml
    import yaml

    from sightline.io import atomic_dir
    from sightline.packaging import MODELS, load_serving_config

    config = load_serving_config(args.serving)
    raw_models = yaml.safe_load(args.params.read_text())["models"]
    names = [n for n in MODELS if n in sections]
    commit = git_commit()
    tags = package(names, raw_models, args.experiment, commit)
    bento = build_bento(config, commit, tags)
    with atomic_dir(args.out) as tmp:
        bentoml.bentos.export_bento(bento.tag, str((tmp / f"{config.bento}.bento").resolve()))
        summary = {"bento": str(bento.tag), "models": tags, "git_commit": commit, "experiment": args.experiment or "workspace"}  # fmt: skip
        (tmp / "bento.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"bento: {bento.tag} -> {args.out / (config.bento + '.bento')}")


if __name__ == "__main__":
    common.run(main)
