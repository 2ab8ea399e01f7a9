"""Activation maximisation: the objective rises from noise, seeded runs repeat, the Fourier
parameterisation gives valid images whose spectrum falls with frequency."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sightline.viz.dream import FourierImage, _random_view, channel_images, class_images


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


@pytest.mark.parametrize("parameterisation", ["pixels", "fourier"])
def test_class_images_raise_their_logit_above_noise(parameterisation):
    net = _tiny_net()
    images = class_images(net, 4, (3, 24, 24), steps=40, parameterisation=parameterisation)
    assert images.shape == (4, 3, 24, 24) and images.min() >= 0 and images.max() <= 1
    noise = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        own, base = net(images).diagonal(), net(noise).diagonal()
    assert (own > base).all()
    again = class_images(net, 4, (3, 24, 24), steps=40, parameterisation=parameterisation)
    assert torch.equal(images, again)  # seeded


def test_channel_images_excite_their_channel():
    trunk = _tiny_net()[:2]
    images = channel_images(trunk, [0, 5], (3, 24, 24), steps=30, parameterisation="fourier")
    with torch.no_grad():
        act = trunk(images).mean(dim=(-2, -1))
        grey = trunk(torch.full((2, 3, 24, 24), 0.5)).mean(dim=(-2, -1))
    assert act[0, 0] > grey[0, 0] and act[1, 5] > grey[1, 5]


def test_fourier_image_is_valid_and_its_spectrum_falls_with_frequency():
    image = FourierImage((2, 3, 64, 64), torch.Generator().manual_seed(0), sd=0.5)
    with torch.no_grad():
        x = image()
    assert x.shape == (2, 3, 64, 64) and x.min() > 0 and x.max() < 1
    power = torch.fft.rfft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs().pow(2).mean(dim=(0, 1))
    assert power[1:4, 1:4].mean() > 10 * power[16:32, 16:32].mean()


def test_random_view_keeps_shape_and_a_flat_image_flat():
    g = torch.Generator().manual_seed(0)
    flat = torch.full((3, 3, 20, 20), 0.3)
    view = _random_view(flat, g, jitter=4)
    assert view.shape == flat.shape and torch.allclose(view, flat, atol=1e-6)
