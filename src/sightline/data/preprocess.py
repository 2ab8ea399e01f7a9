"""The one preprocessing path shared by training, evaluation and serving.

Training batches arrive as uint8 tensors ``(B, C, H, W)``; serving gets PIL images. Both end in
``normalize`` with the mean/std stored in the checkpoint, so they give identical tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sightline.data.decode import resize


@dataclass(frozen=True)
class ImagePreprocess:
    """Preprocessing settings saved with every image model (plain values).

    Attributes:
        channels: 1 (grey) or 3 (RGB).
        size: ``(H, W)`` the network expects.
        mean, std: per-channel statistics of the training split, in [0, 1] units.
    """

    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_dict(cls, d: dict) -> ImagePreprocess:
        return cls(int(d["channels"]), tuple(d["size"]), tuple(d["mean"]), tuple(d["std"]))

    def to_dict(self) -> dict:
        return {
            "channels": self.channels,
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` -> float32 normalised ``(B, C, H, W)`` on ``x``'s device."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of ``normalize`` to [0, 1] floats (for pictures)."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def to_uint8(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images (any mode, any size) -> uint8 ``(B, C, H, W)``.

        Converts to grey or RGB (alpha composited on black, as in the training data) and
        resizes with bilinear filtering when the size differs.
        """
        mode = "L" if self.channels == 1 else "RGB"
        h, w = self.size
        arrays = []
        for img in images:
            if img.mode in ("RGBA", "LA", "P"):
                img = img.convert("RGBA")
                bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
                img = Image.alpha_composite(bg, img)
            img = img.convert(mode)
            if img.size != (w, h):
                img = resize(img, (w, h), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
            arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        return torch.from_numpy(np.stack(arrays))

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> the normalised float batch the network takes."""
        return self.normalize(self.to_uint8(images))
