"""Evaluation of ``gan``: sample quality on the classifier's features, training progress, pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sightline.metrics.generative import score_generator
from sightline.models.generative import SampleScorer, load_classifier, quantize
from sightline.spec import EvaluationSpec
from sightline.viz.figures import class_counts_figure, image_rows, sample_grid

PROGRESS_COLUMNS = 12
PROGRESS_ROWS = 12


def load_progress(model_dir: Path) -> list[tuple[int, np.ndarray]]:
    """``[(epoch, uint8 (N, C, H, W))]`` saved by ``FixedNoiseProgress``, in epoch order."""
    files = sorted((Path(model_dir) / "artifacts" / "progress").glob("epoch_*.npy"))
    return [(int(f.stem.split("_")[1]), np.load(f)) for f in files]


def _progress_figure(progress, best_epoch: int | None, path: Path) -> None:
    """First -> last epoch as rows (at most ``PROGRESS_ROWS``, evenly spaced, best included)."""
    keep = np.unique(
        np.linspace(0, len(progress) - 1, min(PROGRESS_ROWS, len(progress))).round().astype(int)
    )
    epochs = [e for e, _ in progress]
    if best_epoch in epochs:
        keep = np.unique(np.append(keep, epochs.index(best_epoch)))
    rows = [progress[i][1][:PROGRESS_COLUMNS].astype(np.float32) / 255 for i in keep]
    labels = [
        f"epoch {progress[i][0] + 1}" + (" (best)" if progress[i][0] == best_epoch else "")
        for i in keep
    ]
    image_rows(rows, path, labels, "gan: the same fixed noise after each epoch (first -> last)")


@torch.no_grad()
def per_class_fid(module, dm, upstream: str, batch_size: int, seed: int) -> dict:
    """A class-conditional GAN's FID per class: as many images of each class, from a seeded
    noise, as the test split has of it, against those test images.

    Returns:
        ``{"fid_per_class": {name: fid}, "fid_per_class_mean": mean}``.
    """
    images, labels = dm.split("test").tensors[:2]
    clf = load_classifier(upstream, dm.class_names, dm.preprocess, module.device)
    g = torch.Generator().manual_seed(seed + 2)
    out = {}
    for c, name in enumerate(dm.class_names):
        scorer = SampleScorer(clf, full=False)
        real = images[labels == c]
        for batch in real.split(batch_size):
            scorer.update(batch, real=True)
        for start in range(0, len(real), batch_size):
            k = min(batch_size, len(real) - start)
            fake = module.sample(k, g, check=False, labels=torch.full((k,), c))
            scorer.update(quantize(fake), real=False)
        out[name] = round(scorer.compute()["fid"], 4)
    return {
        "fid_per_class": out,
        "fid_per_class_mean": round(float(np.mean(list(out.values()))), 4),
    }


@torch.no_grad()
def evaluate_gan(module, dm, report_dir: Path, section, seed: int, model_dir: Path) -> dict:
    """Metrics dict plus pictures in ``report_dir``: samples, the fixed-noise progression over
    epochs, latent interpolations and the class coverage of samples."""
    report_dir = Path(report_dir)
    classes = dm.class_names
    scores, fake = score_generator(module, dm, section.upstream, section.score, seed)
    sample_grid(
        fake[:64],
        report_dir / "samples.png",
        f"gan: samples (FID {scores['fid']:.2f} on classifier features)",
    )

    model_dir = Path(model_dir)
    best_epoch = None
    if (model_dir / "best.ckpt").is_file():  # the epoch the validation FID chose
        best_epoch = int(
            torch.load(model_dir / "best.ckpt", map_location="cpu", weights_only=True)["epoch"]
        )
    progress = load_progress(model_dir)
    if progress:
        _progress_figure(progress, best_epoch, report_dir / "progress.png")

    g = torch.Generator().manual_seed(seed)
    rows = [module.interpolate_noise(10, g).cpu().numpy() for _ in range(4)]
    image_rows(
        rows,
        report_dir / "interpolation.png",
        [f"z{2 * i} -> z{2 * i + 1}" for i in range(4)],
        "gan: images along straight lines between two noise vectors",
    )
    class_counts_figure(
        {
            "gan samples": list(scores["class_counts"].values()),
            "real (validation)": list(scores["real_floor"]["class_counts"].values()),
        },
        classes,
        report_dir / "class_coverage.png",
        f"gan: classifier's labels for {scores['samples']} samples ({scores['classes_covered']}/{len(classes)} classes covered)",
    )
    train_info = (
        json.loads((model_dir / "train.json").read_text())
        if (model_dir / "train.json").is_file()
        else {}
    )
    if module.num_classes:
        scores |= per_class_fid(module, dm, section.upstream, section.score.batch_size, seed)
    return {
        **scores,
        "best_epoch": None if best_epoch is None else best_epoch + 1,
        "val/fid_at_best": train_info.get("best_val/fid"),
        "progress_epochs": len(progress),
    }


EVALUATION = EvaluationSpec(
    evaluate=evaluate_gan,
    selection=("val/fid", "min"),
    test="fid",
    headline=("fid", "kid", "inception_score", "precision", "recall"),
    pictures=("samples.png", "progress.png"),
)
