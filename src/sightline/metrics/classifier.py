"""Evaluate the image classifier on the held-out test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sightline.metrics.scoring import adversarial_evaluation, classification_metrics
from sightline.spec import EvaluationSpec
from sightline.viz.dream import class_images
from sightline.viz.figures import confusion_matrix_figure, image_grid
from sightline.viz.filters import feature_maps_figure, filters_figure


@torch.inference_mode()
def predict_split(module, dm, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities ``(N, K)`` and labels ``(N,)`` for a whole split."""
    device = next(module.parameters()).device
    probs, labels = [], []
    for x, y in dm._loader(split, False, dm.eval_batch_size):
        x = dm.preprocess.normalize(x.to(device))
        probs.append(module(x).float().softmax(-1).cpu())
        labels.append(y)
    return torch.cat(probs), torch.cat(labels)


def _stage_outputs(module, x: torch.Tensor) -> list[torch.Tensor]:
    maps = []
    h = x
    if module.hparams.channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    h = module.net.stem(h)
    for stage in module.net.stages:
        h = stage(h)
        maps.append(h)
    return maps


def unit_forward(module, preprocess):
    """The classifier as a function of images in [0, 1] (what attacks and activation
    maximisation move), normalised as in training."""
    device = next(module.parameters()).device
    mean = torch.tensor(preprocess.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(preprocess.std, device=device).view(1, -1, 1, 1)
    return lambda x: module((x - mean) / std)


def evaluate_classifier(module, dm, report_dir: Path, section, seed: int, model_dir: Path) -> dict:
    """Metrics dict plus pictures in ``report_dir`` (``model_dir`` is not needed).

    Pictures: confusion matrix, first-layer filters vs classic kernels, feature maps of a few
    test images after each stage, the most confident mistakes, adversarial examples
    (``section.attack``, seeded by ``seed``) and one image per class optimised from noise.
    """
    with torch.inference_mode():
        out = _clean_evaluation(module, dm, report_dir)
    x_all, labels = dm.split("test").tensors
    forward = unit_forward(module, dm.preprocess)
    out.update(
        adversarial_evaluation(
            forward, x_all, labels, dm.class_names, section.attack, report_dir, seed
        )
    )
    shape = (dm.preprocess.channels, *dm.preprocess.size)
    device = next(module.parameters()).device
    dreams = class_images(forward, len(dm.class_names), shape, device, seed=seed)
    image_grid(
        dreams.numpy(),
        report_dir / "class_images.png",
        dm.class_names,
        ncols=min(len(dm.class_names), 10),
        title="each class's logit maximised from noise (jitter, blur, L2)",
    )
    return out


def _clean_evaluation(module, dm, report_dir: Path) -> dict:
    report_dir = Path(report_dir)
    classes = dm.class_names
    val_probs, val_labels = predict_split(module, dm, "val")
    val_acc = float((val_probs.argmax(-1) == val_labels).float().mean())
    probs, labels = predict_split(module, dm, "test")
    m = classification_metrics(probs, labels, classes)
    cm = m.pop("confusion")
    confusion_matrix_figure(
        cm,
        classes,
        report_dir / "confusion_matrix.png",
        f"classifier, test split (n={len(labels)}), accuracy {m['test/acc']:.4f}",
    )

    matches = filters_figure(module.net.first_conv.weight, report_dir / "filters.png")
    counts: dict[str, int] = {}
    for name, _ in matches:
        counts[name] = counts.get(name, 0) + 1

    x_all, _ = dm.split("test").tensors
    device = next(module.parameters()).device
    picks = [
        int(np.flatnonzero(labels.numpy() == c)[0])
        for c in (0, len(classes) // 2, len(classes) - 1)
    ]
    xs = x_all[picks]
    maps = _stage_outputs(module, dm.preprocess.normalize(xs.to(device)))
    feature_maps_figure(
        xs.float().numpy() / 255.0,
        maps,
        [f"stage {i + 1}" for i in range(len(maps))],
        report_dir / "feature_maps.png",
    )

    pred = probs.argmax(-1)
    wrong = torch.nonzero(pred != labels).flatten()
    wrong = wrong[probs[wrong, pred[wrong]].argsort(descending=True)][:32]
    if len(wrong):
        titles = [
            f"{classes[labels[i]]}\n-> {classes[pred[i]]} {probs[i, pred[i]]:.2f}"
            for i in wrong.tolist()
        ]
        image_grid(
            x_all[wrong].float().numpy() / 255.0,
            report_dir / "mistakes.png",
            titles,
            title="most confident mistakes: true -> predicted (probability)",
        )

    return {
        "val/acc": round(val_acc, 6),
        "val/n": len(val_labels),
        **m,
        "test/n": len(labels),
        "test/errors": int((pred != labels).sum()),
        "filters/closest_kernel_counts": dict(sorted(counts.items())),
    }


EVALUATION = EvaluationSpec(
    evaluate=evaluate_classifier,
    selection=("val/acc", "max"),
    test="test/acc",
    headline=("test/acc", "test/f1_macro"),
    pictures=("confusion_matrix.png", "filters.png", "adversarial.png", "class_images.png"),
)
