"""``vae``: a convolutional variational autoencoder (beta-VAE) over pixels in [0, 1].

Parts: ``params``, ``net``, ``module``, ``data``; the ``SPEC`` that registers it is here.
"""

from __future__ import annotations

from sightline.models.vae.data import _datamodule, _module_kwargs
from sightline.models.vae.module import VAEModule
from sightline.models.vae.net import VAENet, kl_divergence, reparameterize
from sightline.models.vae.params import VAEConfig, VAEParams
from sightline.spec import ModelSpec

__all__ = [
    "SPEC",
    "VAEConfig",
    "VAEModule",
    "VAENet",
    "VAEParams",
    "kl_divergence",
    "reparameterize",
]


SPEC = ModelSpec(
    name="vae",
    module=VAEModule,
    params=VAEParams,
    datamodule=_datamodule,
    module_kwargs=_module_kwargs,
    monitor="val/nelbo",
    mode="min",
)
