"""Scoring shared by the image classifiers' evaluations (``classifier``, ``transfer``): the
classification metrics, and the adversarial evaluation with its picture."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from sightline.data.splits import cap_per_class
from sightline.robust import AttackConfig, robust_accuracy
from sightline.viz.figures import image_grid


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy, macro F1, per-class precision/recall and the confusion matrix (torchmetrics)."""
    k = len(classes)
    metrics = MetricCollection(
        {
            "acc": MulticlassAccuracy(k, average="micro"),
            "f1_macro": MulticlassF1Score(k, average="macro"),
            "precision": MulticlassPrecision(k, average=None),
            "recall": MulticlassRecall(k, average=None),
            "confusion": MulticlassConfusionMatrix(k),
        }
    )
    out = metrics(probs, labels)
    return {
        "test/acc": round(float(out["acc"]), 6),
        "test/f1_macro": round(float(out["f1_macro"]), 6),
        "test/per_class": {
            c: {"precision": round(float(p), 6), "recall": round(float(r), 6)}
            for c, p, r in zip(classes, out["precision"], out["recall"], strict=True)
        },
        "confusion": out["confusion"].numpy(),
    }


def attack_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a fixed, seeded test subset of about ``n`` images, the same number per class."""
    classes = len(np.unique(labels))
    return cap_per_class(labels, max(1, n // classes), seed)


def adversarial_evaluation(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    cfg: AttackConfig,
    report_dir: Path,
    seed: int,
) -> dict:
    """Robust accuracy of ``forward`` (images in [0, 1] -> logits) under FGSM and PGD at each
    ``cfg.eps``/255 on a seeded subset of the uint8 test ``images``, and ``adversarial.png``:
    clean images, the perturbation (amplified) and the adversarial images, with predictions.

    Returns:
        ``{"robust/n", "robust/clean_acc", "robust/fgsm@<eps>", "robust/pgd<steps>@<eps>"}``
        (eps in 255ths), or ``{}`` when ``cfg.n`` is 0.
    """
    if cfg.n == 0:
        return {}
    idx = torch.from_numpy(attack_subset(labels.numpy(), cfg.n, seed))
    x = images[idx].float() / 255.0
    y = labels[idx]
    device = _device(forward, x)
    eps = [e / 255.0 for e in cfg.eps]
    r = robust_accuracy(forward, x.to(device), y.to(device), eps, cfg.steps, cfg.batch_size, seed)
    out = {"robust/n": len(idx), "robust/clean_acc": round(r["clean"], 6)}
    for e, name in zip(eps, cfg.eps, strict=True):
        out[f"robust/fgsm@{name:g}"] = round(r["fgsm"][e], 6)
    for e, name in zip(eps, cfg.eps, strict=True):
        out[f"robust/pgd{cfg.steps}@{name:g}"] = round(r["pgd"][e], 6)
    _adversarial_picture(x, r, y, classes, report_dir / "adversarial.png", cfg.steps)
    return out


def _device(forward, x: torch.Tensor) -> torch.device:
    module = getattr(forward, "__self__", None)
    if isinstance(module, torch.nn.Module):
        return next(module.parameters()).device
    return x.device


def _adversarial_picture(x, r, y, classes, path: Path, steps: int, k: int = 8) -> None:
    adv, pred, radius = r["adversarial"].cpu(), r["predicted"].cpu(), r["radius"]
    broken = torch.nonzero(radius > 0).flatten()
    picks = broken[radius[broken].argsort()][:: max(1, len(broken) // k)][:k]
    if len(picks) == 0:
        return
    clean, bad = x[picks], adv[picks]
    eps = radius[picks].view(-1, 1, 1, 1)
    delta = ((bad - clean) / (2 * eps) + 0.5).clamp(0, 1)
    titles = (
        [f"{classes[int(y[i])]}" for i in picks]
        + [f"x{1 / (2 * float(radius[i])):.0f}, eps {float(radius[i]) * 255:g}/255" for i in picks]
        + [f"-> {classes[int(pred[i])]}" for i in picks]
    )
    image_grid(
        torch.cat([clean, delta, bad]).numpy(),
        path,
        titles,
        ncols=len(picks),
        title=f"PGD-{steps}: clean (true label), perturbation (amplified), adversarial (predicted)",
    )
