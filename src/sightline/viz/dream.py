"""Activation maximisation: images optimised from noise to excite one class logit or one channel.

Unregularised, gradient ascent finds high-frequency patterns no photo has. Three standard
regularisers keep the images readable (Olah et al., "Feature Visualization", Distill 2017):
random jitter (a roll of a few pixels each step, so no single pixel alignment is exploited),
a small Gaussian blur every few steps, and an L2 penalty on the pixels. Images are optimised
as unbounded values squashed by a sigmoid into [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    w = torch.exp(-(k**2) / (2 * sigma**2))
    w = w / w.sum()
    c = x.shape[1]
    x = F.conv2d(
        F.pad(x, (2, 2, 0, 0), mode="reflect"), w.view(1, 1, 1, 5).repeat(c, 1, 1, 1), groups=c
    )
    return F.conv2d(
        F.pad(x, (0, 0, 2, 2), mode="reflect"), w.view(1, 1, 5, 1).repeat(c, 1, 1, 1), groups=c
    )


def maximise(
    objective: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, int, int, int],
    steps: int = 128,
    lr: float = 0.05,
    jitter: int = 2,
    blur_every: int = 4,
    sigma: float = 0.5,
    l2: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Images in [0, 1] of ``shape`` ``(N, C, H, W)`` that maximise ``objective`` (images ->
    one score per image, to be raised), from seeded low-amplitude noise."""
    g = torch.Generator().manual_seed(seed)
    z = (0.1 * torch.randn(shape, generator=g)).to(device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for step in range(steps):
        dx, dy = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=g))
        x = torch.sigmoid(z).roll((dy, dx), dims=(-2, -1))
        loss = -objective(x).sum() + l2 * (x - 0.5).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if blur_every and (step + 1) % blur_every == 0:
            with torch.no_grad():
                z.copy_(torch.logit(_blur(torch.sigmoid(z), sigma).clamp(1e-4, 1 - 1e-4)))
    return torch.sigmoid(z).detach().cpu()


def class_images(
    forward: Callable[[torch.Tensor], torch.Tensor],
    classes: int,
    shape: tuple[int, int, int],
    device: torch.device | str = "cpu",
    **options,
) -> torch.Tensor:
    """One image ``(C, H, W)`` per class maximising that class's logit (``forward``: images in
    [0, 1] -> logits), ``(classes, C, H, W)``."""
    index = torch.arange(classes, device=device)
    return maximise(lambda x: forward(x)[index, index], (classes, *shape), device=device, **options)


def channel_images(
    layer_forward: Callable[[torch.Tensor], torch.Tensor],
    channels: list[int],
    shape: tuple[int, int, int],
    device: torch.device | str = "cpu",
    **options,
) -> torch.Tensor:
    """One image per entry of ``channels`` maximising that channel's mean activation
    (``layer_forward``: images in [0, 1] -> the layer's output ``(N, C, h, w)``; the network
    above the layer need not run)."""
    index = torch.arange(len(channels), device=device)
    chans = torch.tensor(channels, device=device)
    return maximise(
        lambda x: layer_forward(x)[index, chans].mean(dim=(-2, -1)),
        (len(channels), *shape),
        device=device,
        **options,
    )
