"""Evaluation of ``spam`` on the later collection: fused model and its two single-branch
ablations, overall and on the synthetic image-evasion messages; curves, pictures, mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
    binary_calibration_error,
    binary_confusion_matrix,
    binary_precision,
    binary_precision_recall_curve,
    binary_recall,
    binary_roc,
)

from sightline.models.spam import best_threshold, fit_temperature, to_device
from sightline.spec import EvaluationSpec
from sightline.viz.figures import confusion_matrix_figure, image_grid, save_figure

MODES = {"fused": (True, True), "text_only": (True, False), "image_only": (False, True)}
CURVE_POINTS = 200


@torch.no_grad()
def split_logits(
    module, dm, split: str, use_text: bool, use_image: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)`` of a split, one branch optionally read as absent."""
    module.eval()
    out, labels = [], []
    for batch in dm.loader(split):
        logits = module(to_device(batch, module.device), use_text, use_image)
        out.append(logits.float().cpu())
        labels.append(batch["labels"].long())
    return torch.cat(out), torch.cat(labels)


def scores(probs: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    """Threshold metrics plus the threshold-free ones where both classes are present."""
    pred = (probs >= threshold).long()
    tp = int(((pred == 1) & (labels == 1)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())
    out = {
        "precision": float(binary_precision(probs, labels, threshold)),
        "recall": float(binary_recall(probs, labels, threshold)),
        "f1": 2 * tp / max(1, 2 * tp + fp + fn),
        "accuracy": float(binary_accuracy(probs, labels, threshold)),
        "n": len(labels),
        "n_spam": int(labels.sum()),
    }
    if 0 < int(labels.sum()) < len(labels):
        out |= {
            "roc_auc": float(binary_auroc(probs, labels)),
            "pr_auc": float(binary_average_precision(probs, labels)),
            "ece": float(binary_calibration_error(probs, labels, n_bins=15)),
        }
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in out.items()}


def _curve_rows(x: torch.Tensor, y: torch.Tensor, names: tuple[str, str]) -> list[dict]:
    idx = np.unique(np.linspace(0, len(x) - 1, min(len(x), CURVE_POINTS)).round().astype(int))
    return [{names[0]: round(float(x[i]), 6), names[1]: round(float(y[i]), 6)} for i in idx]


def _write_json(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")


def _curves_figure(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (roc_ax, pr_ax, rel_ax) = plt.subplots(1, 3, figsize=(13.5, 4))
    bins = np.linspace(0, 1, 11)
    for mode, (probs, labels, m) in results.items():
        fpr, tpr, _ = binary_roc(probs, labels)
        precision, recall, _ = binary_precision_recall_curve(probs, labels)
        roc_ax.plot(fpr, tpr, label=f"{mode} (AUC {m['roc_auc']:.3f})")
        pr_ax.plot(recall, precision, label=f"{mode} (AP {m['pr_auc']:.3f})")
        p, y = probs.numpy(), labels.numpy()
        which = np.clip(np.digitize(p, bins) - 1, 0, 9)
        filled = [b for b in range(10) if (which == b).any()]
        rel_ax.plot(
            [p[which == b].mean() for b in filled],
            [y[which == b].mean() for b in filled],
            marker="o",
            label=f"{mode} (ECE {m['ece']:.3f})",
        )
    rel_ax.plot([0, 1], [0, 1], ls=":", c="grey")
    rel_ax.set(
        xlabel="predicted spam probability (10 bins)",
        ylabel="fraction that is spam",
        title="reliability, later collection",
    )
    rel_ax.legend(fontsize=8, loc="upper left")
    rel_ax.grid(alpha=0.3)
    roc_ax.plot([0, 1], [0, 1], ls=":", c="grey")
    roc_ax.set(
        xlabel="false positive rate", ylabel="true positive rate", title="ROC, later collection"
    )
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall, later collection")
    for ax in (roc_ax, pr_ax):
        ax.legend(fontsize=8, loc="lower right" if ax is roc_ax else "lower left")
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def _mistakes(
    rows: list[dict], probs: torch.Tensor, labels: torch.Tensor, threshold: float, k: int = 10
) -> str:
    """Markdown: the most confident false positives and false negatives (subject, score)."""
    p, y = probs.numpy(), labels.numpy()
    lines = [
        "# spam: most confident mistakes on the later collection",
        "",
        f"Fused model, threshold {threshold:.3f} (chosen on validation). Subjects only, no headers.",
        "",
    ]
    for title, mask, order in (
        ("False positives (ham called spam)", (p >= threshold) & (y == 0), -1),
        ("False negatives (spam let through)", (p < threshold) & (y == 1), 1),
    ):
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(order * p[idx], kind="stable")][:k]
        lines += [
            f"## {title}: {int(mask.sum())}",
            "",
            "| p(spam) | evasion | subject |",
            "|---:|:---:|:---|",
        ]
        for i in idx:
            subject = (
                " ".join(rows[i]["subject"].split())[:90].replace("|", "\\|") or "(no subject)"
            )
            lines.append(f"| {p[i]:.3f} | {'yes' if rows[i]['evasion'] else ''} | {subject} |")
        lines.append("")
    return "\n".join(lines)


def _evasion_examples(module, dm, rows, probs_by_mode, path: Path, n: int = 8) -> None:
    """Rendered evasion images of the test split, spam first, titled with the fused, text-only
    and image-only scores."""
    picks = [i for i, r in enumerate(rows) if r["evasion"] and r["label"] == 1][: n // 2]
    picks += [i for i, r in enumerate(rows) if r["evasion"] and r["label"] == 0][: n - len(picks)]
    if not picks:
        return
    ds = dm.dataset("test")
    images = np.stack([ds[i].images[0].numpy() * 0.5 + 0.5 for i in picks])
    fused, text, image = (probs_by_mode[m] for m in ("fused", "text_only", "image_only"))
    titles = [
        f"{dm.class_names[rows[i]['label']]}: fused {fused[i]:.2f}\ntext {text[i]:.2f}, image {image[i]:.2f}"
        for i in picks
    ]
    image_grid(
        images,
        path,
        titles,
        ncols=4,
        title="spam: synthetic image-evasion test messages (what the image branch sees)",
    )


def evaluate_spam(module, dm, report_dir: Path, section, seed: int, model_dir: Path) -> dict:
    """Metrics of the fused model and both ablations; thresholds and temperatures from the
    validation split (the fused ones are the checkpoint's own, which serving uses)."""
    report_dir = Path(report_dir)
    dm.attach(module)
    rows = dm.rows("test")
    evasion = torch.tensor([r["evasion"] for r in rows], dtype=torch.bool)
    metrics: dict = {
        "test/n": len(rows),
        "test/n_spam": sum(r["label"] for r in rows),
        "test/n_evasion": int(evasion.sum()),
        "test/n_evasion_spam": sum(r["label"] for r in rows if r["evasion"]),
    }
    results, probs_by_mode = {}, {}
    for mode, (use_text, use_image) in MODES.items():
        if mode == "fused":
            temperature, threshold = float(module.temperature), float(module.threshold)
            val_logits, val_labels = split_logits(module, dm, "val", use_text, use_image)
            v = scores(torch.sigmoid(val_logits / temperature), val_labels, threshold)
            metrics |= {"val/n": len(val_labels), "val/f1": v["f1"], "val/pr_auc": v.get("pr_auc")}
        else:
            val_logits, val_labels = split_logits(module, dm, "val", use_text, use_image)
            temperature = fit_temperature(val_logits, val_labels)
            threshold = best_threshold(
                torch.sigmoid(val_logits / temperature), val_labels, module.max_ham_fpr
            )
        logits, labels = split_logits(module, dm, "test", use_text, use_image)
        probs = torch.sigmoid(logits / temperature)
        m = scores(probs, labels, threshold)
        prefix = "test" if mode == "fused" else mode
        metrics |= {f"{prefix}/{k}": v for k, v in m.items() if k not in ("n", "n_spam")}
        metrics |= {
            f"{prefix}/threshold": round(threshold, 6),
            f"{prefix}/temperature": round(temperature, 6),
        }
        if evasion.any():
            ev = scores(probs[evasion], labels[evasion], threshold)
            metrics |= {
                f"evasion/{mode}/{k}": v
                for k, v in ev.items()
                if k in ("recall", "precision", "f1", "roc_auc")
            }
        results[mode], probs_by_mode[mode] = (probs, labels, m), probs.numpy()
        fpr, tpr, _ = binary_roc(probs, labels)
        precision, recall, _ = binary_precision_recall_curve(probs, labels)
        _write_json(
            report_dir / "curves" / f"roc_{mode}.json", _curve_rows(fpr, tpr, ("fpr", "tpr"))
        )
        _write_json(
            report_dir / "curves" / f"pr_{mode}.json",
            _curve_rows(recall, precision, ("recall", "precision")),
        )

    probs, labels, _ = results["fused"]
    threshold = metrics["test/threshold"]
    cm = binary_confusion_matrix(probs, labels, threshold).numpy()
    metrics["test/confusion"] = cm.tolist()
    confusion_matrix_figure(
        cm,
        dm.class_names,
        report_dir / "confusion_matrix.png",
        "spam: fused model, later collection",
    )
    _curves_figure(results, report_dir / "curves.png")
    (report_dir / "mistakes.md").write_text(_mistakes(rows, probs, labels, threshold))
    _evasion_examples(module, dm, rows, probs_by_mode, report_dir / "evasion_examples.png")
    return metrics


EVALUATION = EvaluationSpec(
    evaluate=evaluate_spam,
    selection=("val/f1", "max"),
    test="test/f1",
    headline=("test/f1", "test/roc_auc", "evasion/fused/recall"),
    pictures=("curves.png", "confusion_matrix.png"),
)
