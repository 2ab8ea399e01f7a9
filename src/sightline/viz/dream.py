"""Activation maximisation: images optimised from noise to excite one class logit or one channel.

Unregularised, gradient ascent finds high-frequency patterns no photo has. Three standard
regularisers keep the images readable (Olah et al., "Feature Visualization", Distill 2017):
random jitter (a roll of a few pixels each step, so no single pixel alignment is exploited),
a small Gaussian blur every few steps, and an L2 penalty on the pixels. Images are optimised
as unbounded values squashed by a sigmoid into [0, 1].

``parameterisation="fourier"`` follows the same article further, for networks that see larger
images: the image is a spectrum scaled by 1/frequency (so gradient steps move low frequencies as
much as high ones, where pixel steps favour noise), colours are decorrelated with the square
root of ImageNet's colour covariance, and each step sees the image randomly shifted, scaled and
rotated, so only what survives those transformations is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# The square root of ImageNet's RGB covariance (Olah et al.): decorrelated values -> RGB.
COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


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


class FourierImage(nn.Module):
    """Images ``(N, C, H, W)`` in [0, 1] from a learned spectrum scaled by 1/frequency; three
    channels are decorrelated colours.

    Args:
        shape: ``(N, C, H, W)``.
        generator: seeds the initial spectrum (``sd`` times standard normal).
    """

    def __init__(self, shape, generator: torch.Generator, sd: float = 0.01) -> None:
        super().__init__()
        n, c, h, w = shape
        self.size = (h, w)
        freq = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None, :] ** 2).sqrt()
        self.register_buffer("scale", 1.0 / freq.clamp(min=1.0 / max(h, w)))  # (H, W // 2 + 1)
        self.spectrum = nn.Parameter(sd * torch.randn(n, c, h, w // 2 + 1, 2, generator=generator))
        colour = COLOUR_SQRT / COLOUR_SQRT.norm(dim=0).max()
        self.register_buffer("colour", colour if c == 3 else torch.eye(c))

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        x = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / 4.0  # (N, C, H, W)
        return torch.sigmoid(torch.einsum("nchw,dc->ndhw", x, self.colour))


def _random_view(x: torch.Tensor, g: torch.Generator, jitter: int) -> torch.Tensor:
    """``x`` shifted by up to ``jitter`` pixels, scaled by 0.9-1.1 and rotated by up to 10
    degrees (one draw for the batch; edges reflected)."""
    shift, scale, angle = torch.rand(3, generator=g) * 2 - 1
    angle, scale = math.radians(10) * angle, 1.0 + 0.1 * scale
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    h, w = x.shape[-2:]
    ux, uy = (float(v) for v in torch.rand(2, generator=g) * 2 - 1)
    dx, dy = 2 * jitter / w * ux, 2 * jitter / h * uy  # in affine_grid's [-1, 1] units
    theta = torch.tensor([[cos, -sin, dx], [sin, cos, dy]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)


def maximise_fourier(
    objective: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, int, int, int],
    steps: int = 128,
    lr: float = 0.05,
    jitter: int = 8,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """As ``maximise``, with images parameterised by ``FourierImage`` and seen through random
    shifts, scales and rotations (``_random_view``) at every step."""
    g = torch.Generator().manual_seed(seed)
    image = FourierImage(shape, g).to(device)
    opt = torch.optim.Adam(image.parameters(), lr=lr)
    for _ in range(steps):
        loss = -objective(_random_view(image(), g, jitter)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return image().cpu()


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
    parameterisation: str = "pixels",
    **options,
) -> torch.Tensor:
    """One image ``(C, H, W)`` per class maximising that class's logit (``forward``: images in
    [0, 1] -> logits), ``(classes, C, H, W)``; ``parameterisation`` ``"pixels"`` (``maximise``)
    or ``"fourier"`` (``maximise_fourier``)."""
    index = torch.arange(classes, device=device)
    run = {"pixels": maximise, "fourier": maximise_fourier}[parameterisation]
    return run(lambda x: forward(x)[index, index], (classes, *shape), device=device, **options)


def channel_images(
    layer_forward: Callable[[torch.Tensor], torch.Tensor],
    channels: list[int],
    shape: tuple[int, int, int],
    device: torch.device | str = "cpu",
    parameterisation: str = "pixels",
    **options,
) -> torch.Tensor:
    """One image per entry of ``channels`` maximising that channel's mean activation
    (``layer_forward``: images in [0, 1] -> the layer's output ``(N, C, h, w)``; the network
    above the layer need not run); ``parameterisation`` as in ``class_images``."""
    index = torch.arange(len(channels), device=device)
    chans = torch.tensor(channels, device=device)
    run = {"pixels": maximise, "fourier": maximise_fourier}[parameterisation]
    return run(
        lambda x: layer_forward(x)[index, chans].mean(dim=(-2, -1)),
        (len(channels), *shape),
        device=device,
        **options,
    )
