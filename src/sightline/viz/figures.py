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
    images: np.ndarray,
    path: Path,
    titles: list[str] | None = None,
    ncols: int = 8,
    title: str | None = None,
    title_colors: list[str] | None = None,
) -> None:
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


def image_rows(
    rows: list[np.ndarray],
    path: Path,
    row_labels: list[str],
    title: str | None = None,
    col_labels: list[str] | None = None,
) -> None:
    """Save rows of images (each ``(N, C, H, W)`` in [0, 1]) as one labelled picture."""
    ncols = max(len(r) for r in rows)
    height = 1.15 * len(rows) + 0.6
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.1 * ncols + 1.2, height), squeeze=False)
    for i, row in enumerate(rows):
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row):
                arr, cmap = to_display(row[j])
                ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=8, rotation=0, ha="right", va="center")
            if i == 0 and col_labels:
                ax.set_title(col_labels[j] if j < len(col_labels) else "", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.1 / height)
    fig.subplots_adjust(wspace=0.05, hspace=0.05, top=1 - 0.45 / height)  # title close to images
    save_figure(fig, path)


def sample_grid(images: np.ndarray, path: Path, title: str, ncols: int = 8) -> None:
    """uint8 images ``(N, C, H, W)`` as a tight grid of ``ncols`` columns."""
    x = np.asarray(images, dtype=np.float32) / 255
    image_rows(
        [x[i : i + ncols] for i in range(0, len(x), ncols)], path, [""] * -(-len(x) // ncols), title
    )


def class_counts_figure(
    counts: dict[str, list[int]], classes: list[str], path: Path, title: str
) -> None:
    """Grouped bars: how many images of each set the classifier assigns to each class."""
    k, n = len(classes), len(counts)
    fig, ax = plt.subplots(figsize=(0.7 * k + 2, 3.6))
    width = 0.8 / n
    for i, (name, values) in enumerate(counts.items()):
        ax.bar(np.arange(k) + (i - (n - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("images (classifier's label)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def scatter_figure(
    points: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    path: Path,
    title: str,
    axis_labels: tuple[str, str],
) -> None:
    """2-D points ``(N, 2)`` coloured by class, with a legend."""
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for c, name in enumerate(classes):
        sel = labels == c
        ax.scatter(
            points[sel, 0], points[sel, 1], s=3, alpha=0.5, color=cmap(c % cmap.N), label=name
        )
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.legend(markerscale=4, fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def similarity_figure(
    sim: np.ndarray, images: np.ndarray, captions: list[str], path: Path, title: str
) -> None:
    """Image-caption similarity matrix ``(N, N)``: rows = images (thumbnails at the left),
    columns = captions; the true pairs lie on the diagonal."""
    n = len(captions)
    fig, ax = plt.subplots(figsize=(0.62 * n + 3, 0.62 * n + 3.2))
    im = ax.imshow(sim, cmap="viridis")
    short = [c if len(c) <= 38 else c[:36] + "…" for c in captions]
    ax.set_xticks(range(n), short, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), [""] * n)
    for i in range(n):
        thumb = ax.inset_axes([-1.0 / n - 0.01, 1 - (i + 1) / n, 1.0 / n, 1.0 / n])
        thumb.imshow(
            images[i].transpose(1, 2, 0) if images[i].shape[0] == 3 else images[i][0],
            cmap=None if images[i].shape[0] == 3 else "gray",
        )
        thumb.axis("off")
        for j in range(n):
            ax.text(
                j,
                i,
                f"{sim[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=5.5,
                color="white" if sim[i, j] < sim.max() * 0.7 else "black",
            )
    ax.set_xlabel("captions")
    ax.set_ylabel("images", labelpad=0.62 * n + 6)
    fig.colorbar(im, ax=ax, fraction=0.046, label="cosine similarity")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)
