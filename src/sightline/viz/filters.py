"""Learned first-layer filters beside the classic hand-made kernels, and feature maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sightline.viz.figures import plt, save_figure

CLASSIC_KERNELS: dict[str, np.ndarray] = {
    "sobel x": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32),
    "sobel y": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float32),
    "laplacian": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float32),
    "box blur": np.full((3, 3), 1 / 9, dtype=np.float32),
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float32),
    "emboss": np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32),
}


def match_kernels(filters: np.ndarray) -> list[tuple[str, float]]:
    """For each 3x3 filter, the classic kernel with the largest |cosine similarity|.

    Args:
        filters: ``(N, 3, 3)`` (colour filters summed over input channels beforehand).

    Returns:
        ``(name, cosine)`` per filter; a negative cosine is the same detector with
        opposite polarity and is shown as ``-name``.
    """
    names = list(CLASSIC_KERNELS)
    bank = np.stack([CLASSIC_KERNELS[n].ravel() for n in names])  # (K, 9)
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    flat = filters.reshape(len(filters), -1)
    flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    cos = flat @ bank.T  # (N, K)
    best = np.abs(cos).argmax(axis=1)
    return [(names[k], float(cos[i, k])) for i, k in enumerate(best)]


def filters_figure(
    weight: torch.Tensor, path: Path, max_filters: int = 32
) -> list[tuple[str, float]]:
    """Plot the classic kernels (top row) and the learned filters labelled by their match.

    Args:
        weight: first conv weight ``(out, in, 3, 3)``.

    Returns:
        The matches, for the metrics file.
    """
    w = weight.detach().float().cpu().numpy()[:max_filters]
    kernels = w.sum(axis=1)  # (N, 3, 3): colour filters collapse to their luminance response
    matches = match_kernels(kernels)
    ncols = 8
    nrows = 1 + int(np.ceil(len(kernels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.5 * ncols, 1.7 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, k) in zip(axes[0], CLASSIC_KERNELS.items(), strict=False):
        m = np.abs(k).max()
        ax.imshow(k, cmap="RdBu_r", vmin=-m, vmax=m)
        ax.set_title(name, fontsize=8, fontweight="bold")
    for ax, k, (name, cos) in zip(axes[1:].flat, kernels, matches, strict=False):
        m = max(np.abs(k).max(), 1e-12)
        ax.imshow(k, cmap="RdBu_r", vmin=-m, vmax=m)
        label = ("-" if cos < 0 else "") + name
        ax.set_title(f"{label}\n|cos| {abs(cos):.2f}", fontsize=7)
    fig.suptitle(
        "top: classic kernels; below: learned first-layer filters (summed over input channels), labelled with the closest classic kernel",
        fontsize=9,
    )
    save_figure(fig, path)
    return matches


def feature_maps_figure(
    images: np.ndarray,
    maps: list[torch.Tensor],
    stage_names: list[str],
    path: Path,
    channels: int = 6,
) -> None:
    """For each input image: the image, then ``channels`` activations after each stage.

    Args:
        images: ``(N, C, H, W)`` inputs in [0, 1].
        maps: one ``(N, C_s, H_s, W_s)`` tensor per stage.
    """
    n = len(images)
    ncols = 1 + channels
    nrows = n * len(maps)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.3 * ncols, 1.3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        for s, (fmap, sname) in enumerate(zip(maps, stage_names, strict=True)):
            row = axes[i * len(maps) + s]
            img = images[i]
            row[0].imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray")
            row[0].set_title(f"image {i + 1}" if s == 0 else "", fontsize=7)
            act = fmap[i].float().cpu().numpy()
            order = np.argsort(-act.reshape(len(act), -1).std(axis=1))[:channels]  # most varied
            for j, c in enumerate(order):
                row[j + 1].imshow(act[c], cmap="viridis")
                row[j + 1].set_title(f"{sname} ch{c}", fontsize=6)
    fig.suptitle("feature maps after each stage: edges -> textures -> parts", fontsize=9)
    save_figure(fig, path)
