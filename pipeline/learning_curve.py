"""``make curve``: the transfer model's learning curve -> reports/curves/transfer/learning_curve.{json,png}.

Carved-test (and validation) accuracy against labelled training images per class, three ways,
each point trained on the same seeded, stratified subset (the first ``n`` of every class in
``per_class_order``, so a smaller subset lies inside every larger one):

- ``scratch``: the classifier's recipe from a profile (``params/cifar10.yaml``) on the subset.
  A batch is at most an eighth of the subset (the learning rate scaled with it) and the run
  sees at least ``--scratch-images`` images (in at most 200 epochs), so a small subset still
  gets enough steps;
- ``frozen``: ``models.transfer`` as in params.yaml, a head on the frozen backbone's features;
- ``finetune``: the same with the backbone's top ``--finetune-blocks`` blocks training, on
  the images, for ``--finetune-epochs`` or until it has seen ``--finetune-images``.

Features of the largest subset are computed once into ``runs/curve/`` and reused by later
calls with the same features settings. Results are written after every point, so an interrupted run keeps what it finished and
a later call with other ``--sizes``/``--methods`` adds to the same file.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import common
import lightning as L

METHODS = ("scratch", "frozen", "finetune")
ALL = "all"
WORK = common.RUNS / "curve"
MAX_EPOCHS = 200  # bounds the cost of the smallest subsets from scratch


def per_class_arg(text: str) -> int | None:
    if text == ALL:
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise SystemExit(f"--sizes: {text!r} is not a positive number of images per class or 'all'")
    return n


def section_with(raw: dict, name: str, values: dict):
    """The typed ``models.<name>`` section of ``raw`` with dotted ``values`` set."""
    from sightline.params import parse_section, with_values

    raw = {**raw, "models": {**raw["models"], name: with_values(raw["models"][name], values)}}
    return parse_section(raw, name, "params.yaml (learning curve)")[1]


def profile_values(path: Path, name: str) -> dict:
    """The profile's keys for model ``name``, dotted (``{"model.lr": 1.5, ...}``)."""
    from experiment import leaves, read_profile

    return leaves(read_profile(path).get("models", {}).get(name, {}))


def subset_dir(prepared: Path, order, keep, out: Path) -> Path:
    """A prepared dataset whose training split is ``order[keep]``; validation and test linked."""
    import numpy as np

    from sightline.data.splits import load_prepared

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    x, y = load_prepared(prepared, "train")
    np.save(out / "train_x.npy", x[order[keep]])
    np.save(out / "train_y.npy", y[order[keep]])
    for f in prepared.iterdir():
        if f.is_file() and not f.name.startswith("train_"):
            (out / f.name).symlink_to(f.resolve())
    return out


def accuracies(name: str, model_dir: Path, section, data_dir: Path, seed: int) -> dict:
    """Validation and test accuracy of a trained model, predicted as its evaluation does."""
    from sightline.inference import load_module, select_device
    from sightline.metrics.classifier import predict_split
    from sightline.metrics.transfer import predict
    from sightline.registry import get_model

    module = load_module(model_dir, name, select_device())
    dm = get_model(name).datamodule(section, data_dir, seed)
    dm.setup("test")
    run = predict if name == "transfer" else predict_split
    out = {}
    for split in ("val", "test"):
        probs, labels = run(module, dm, split)
        out[split] = round(float((probs.argmax(-1) == labels).float().mean()), 4)
    return out


def fit(name: str, section, seed: int, data_dir: Path, tag: str) -> dict:
    from sightline.training import train

    out = WORK / "models" / tag
    # from scratch: ten validations; fine-tuning (the backbone at 224 px on all 5,000 validation
    # images costs 40 s a pass): one, at the end, so its last epoch is the model
    epochs = section.trainer.max_epochs
    if name != "transfer":
        every = [ValidateEvery(max(1, epochs // 10))]
    elif section.model.finetune_blocks > 0:
        every = [ValidateEvery(epochs)]
    else:
        every = []
    info = train(name, section, seed, data_dir, out, WORK / "runs" / tag, None, every)
    acc = accuracies(name, out, section, data_dir, seed)
    shutil.rmtree(out, ignore_errors=True)
    return {"val": acc["val"], "test": acc["test"], "time_s": info["train_time_s"]}


def scratch_values(base: dict, images: int, min_images: int) -> dict:
    """The recipe's batch, learning rate and epochs for a subset of ``images``."""
    batch = min(base["data.batch_size"], max(16, images // 8))
    epochs = max(base["trainer.max_epochs"], min(MAX_EPOCHS, math.ceil(min_images / images)))
    return {
        **base,
        "data.batch_size": batch,
        "model.lr": base["model.lr"] * batch / base["data.batch_size"],
        "trainer.max_epochs": epochs,
    }


class ValidateEvery(L.Callback):
    """Validate every ``n`` epochs: a 200-epoch run on 100 images would otherwise spend most
    of its time scoring the 5,000 validation images."""

    def __init__(self, n: int) -> None:
        self.n = n

    def setup(self, trainer, pl_module, stage: str) -> None:
        trainer.check_val_every_n_epoch = self.n


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels = ("from scratch (classifier recipe)", "frozen backbone + head", "fine-tuned top blocks")
    for method, style, label in zip(METHODS, ("o-", "s-", "^-"), labels, strict=True):
        pts = [(r["per_class"], r[method]) for r in rows if method in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images per class")
    ax.set_ylabel("test accuracy (carved split)")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    recipes = {r["transfer_recipe"] for r in rows if "transfer_recipe" in r}
    parts = {
        "from scratch": any("scratch" in r for r in rows),
        "ImageNet features": any("frozen" in r or "finetune" in r for r in rows),
    }
    shown = " vs ".join(name for name, drawn in parts.items() if drawn)
    ax.set_title(f"learning curve: {shown}" + "".join(f"\n{r}" for r in recipes), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["10", "30", "100", "300", "1000", ALL])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--profile", type=Path, default=Path("params/cifar10.yaml"))
    p.add_argument("--scratch-images", type=int, default=120_000)
    p.add_argument("--finetune-blocks", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=8)
    p.add_argument("--finetune-images", type=int, default=8_000)
    p.add_argument("--out", type=Path, default=common.REPORTS / "curves" / "transfer")
    args = p.parse_args()
    sizes = [per_class_arg(s) for s in args.sizes]

    import numpy as np

    from sightline.data.splits import load_prepared
    from sightline.errors import ConfigError
    from sightline.inference import select_device
    from sightline.io import atomic_write_text
    from sightline.models.transfer import extract_features
    from sightline.models.transfer.data import first_per_class, per_class_order
    from sightline.params import read_params

    raw = read_params(args.params)
    transfer = section_with(raw, "transfer", {})
    seed, dataset = common.load(args.params).seed, transfer.data.dataset
    prepared = common.PREPARED / dataset
    labels = load_prepared(prepared, "train")[1]
    order = per_class_order(labels, seed)
    whole = int(np.bincount(labels).min())
    if any(n is not None and n > whole for n in sizes):
        raise ConfigError(f"--sizes: {dataset} has {whole} training images per class (or say all)")
    biggest = None if None in sizes else max(sizes)

    features, stamp = WORK / "features", WORK / "features.json"
    cfg = transfer.features.model_copy(update={"train_per_class": biggest})
    result = args.out / "learning_curve.json"
    rows = {r["per_class"]: r for r in json.loads(result.read_text())} if result.exists() else {}
    side = f"{cfg.resolution} px" if cfg.resolution else "its own size"
    frozen = f"{cfg.backbone} ({'+'.join(cfg.layers)} at {side}, {transfer.model.head} head)"
    other = {
        r.get("transfer_recipe", r["backbone"])  # points from before the recipe was recorded
        for r in rows.values()
        if "backbone" in r and r.get("transfer_recipe", r["backbone"]) != frozen
    }
    if other and set(args.methods) != {"scratch"}:  # one transfer recipe per curve, or it misleads
        raise ConfigError(
            f"{result}: its transfer points were measured with {', '.join(sorted(other))}, not "
            f"{frozen}; give --out another folder for a curve of this recipe"
        )
    made = {**cfg.model_dump(exclude={"train_per_class"}), "dataset": dataset, "seed": seed}
    have = np.load(features / "train_y.npy").size if (features / "train_y.npy").is_file() else -1
    need = len(labels) if biggest is None else biggest * len(np.unique(labels))
    cached = stamp.is_file() and json.loads(stamp.read_text()) == made and have >= need
    if set(args.methods) != {"scratch"} and not cached:
        print(f"curve: features of {need} training images ({cfg.backbone}) -> {features}")
        extract_features(prepared, features, cfg, seed, select_device())
        atomic_write_text(stamp, json.dumps(made) + "\n")

    scratch_base = profile_values(args.profile, "classifier")
    recipe = section_with(raw, "classifier", scratch_base)
    if recipe.data.dataset != dataset:
        raise ConfigError(f"{args.profile}: its classifier does not train on {dataset}")
    optimizer = recipe.model.optimizer
    other = {
        r["scratch_optimizer"]
        for r in rows.values()
        if r.get("scratch_optimizer", optimizer) != optimizer
    }
    if other and "scratch" in args.methods:  # one from-scratch recipe per curve
        raise ConfigError(
            f"{result}: its from-scratch points were trained with {', '.join(sorted(other))}, "
            f"not {optimizer} ({args.profile}); give --out another folder for this recipe"
        )
    scratch_base |= {
        "data.batch_size": recipe.data.batch_size,
        "model.lr": recipe.model.lr,
        "trainer.max_epochs": recipe.trainer.max_epochs,
    }
    for n in sizes:
        per_class = whole if n is None else n
        keep = first_per_class(labels, order, n)
        row = rows.setdefault(per_class, {"per_class": per_class})
        row["images"] = len(keep)
        for method in args.methods:
            tag = f"{method}-{per_class}"
            print(f"curve: {tag} ({len(keep)} images) ...", flush=True)
            if method == "scratch":
                values = scratch_values(scratch_base, len(keep), args.scratch_images)
                data = subset_dir(prepared, order, keep, WORK / "prepared" / tag)
                got = fit("classifier", section_with(raw, "classifier", values), seed, data, tag)
                shutil.rmtree(data)
                row["scratch_optimizer"] = optimizer
            else:
                values = {"upstream": str(features), "data.train_per_class": n}
                if method == "finetune":
                    values |= {
                        "model.finetune_blocks": args.finetune_blocks,
                        "data.batch_size": 64,
                        "trainer.max_epochs": max(
                            args.finetune_epochs, math.ceil(args.finetune_images / len(keep))
                        ),
                    }
                got = fit("transfer", section_with(raw, "transfer", values), seed, prepared, tag)
                row["backbone"], row["transfer_recipe"] = cfg.backbone, frozen
            row |= {method: got["test"], f"{method}_val": got["val"], f"{method}_s": got["time_s"]}
            print(f"curve: {tag}: val {got['val']:.4f} test {got['test']:.4f} ({got['time_s']} s)")
            ordered = [rows[k] for k in sorted(rows)]
            args.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(result, json.dumps(ordered, indent=2) + "\n")
            plot(ordered, args.out / "learning_curve.png")
    print(f"curve: -> {result} and learning_curve.png")


if __name__ == "__main__":
    common.run(main)
