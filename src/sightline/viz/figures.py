"""Generic figures: image grids with captions and confusion matrices."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Save through a temp file and rename, so a crash never leaves half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def to_display(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` float in [0, 1] -> an array imshow understands and its colour map."""
    if img.shape[0] == 1:
        return img[0], "gray"
    return img.transpose(1, 2, 0), None


def image_grid(
    images: np.ndarray, path: Path, titles: list[str] | None = None, ncols: int = 8,
    title: str | None = None, title_colors: list[str] | None = None,
) -> None:  # fmt: skip
    """Save ``images`` ``(N, C, H, W)`` in [0, 1] as a captioned grid."""
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.8 * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        arr, cmap = to_display(images[k])
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        if titles:
            color = title_colors[k] if title_colors else "black"
            ax.set_title(titles[k], fontsize=7, color=color)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def confusion_matrix_figure(cm: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (true rows, predicted columns) with counts."""
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(0.6 * k + 3, 0.6 * k + 2.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                color = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)
