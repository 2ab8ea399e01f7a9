"""Augmentation on whole batches of tensors, on whatever device the batch is on."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image by a random integer offset in ``[-max_shift, max_shift]``.

    Zero padded (zero = the normalised mean after ``normalize``), like pad + random crop.
    """
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), device=x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)[None]  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)[None]  # (B, W)
    idx_b = torch.arange(b, device=x.device)[:, None, None]
    # (B, H, W, C) gather, then back to (B, C, H, W)
    out = padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_erase(x: torch.Tensor, p: float, max_frac: float = 0.4) -> torch.Tensor:
    """Zero a random rectangle (side up to ``max_frac`` of the image) with probability ``p``."""
    if p <= 0:
        return x
    b, _, h, w = x.shape
    dev = x.device
    eh = (torch.rand(b, device=dev) * max_frac * h).long() + 1
    ew = (torch.rand(b, device=dev) * max_frac * w).long() + 1
    y0 = (torch.rand(b, device=dev) * (h - eh + 1)).long()
    x0 = (torch.rand(b, device=dev) * (w - ew + 1)).long()
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    box = (ys >= y0[:, None, None]) & (ys < (y0 + eh)[:, None, None])
    box = box & (xs >= x0[:, None, None]) & (xs < (x0 + ew)[:, None, None])
    apply = (torch.rand(b, device=dev) < p)[:, None, None]
    return x.masked_fill((box & apply)[:, None], 0.0)


def augment_batch(x: torch.Tensor, shift: int, hflip: bool, erase: float) -> torch.Tensor:
    """Apply the configured augmentations to a normalised batch ``(B, C, H, W)``."""
    x = random_shift(x, shift)
    if hflip:
        x = random_hflip(x)
    return random_erase(x, erase)
