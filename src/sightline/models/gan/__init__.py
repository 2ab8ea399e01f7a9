"""``gan``: a DCGAN trained with Lightning manual optimisation; best checkpoint by validation FID.

Today's defaults are the DCGAN of Radford et al. (BatchNorm in both networks, the
non-saturating loss). Three options are there for a steadier game on harder data: a
spectrally normalised discriminator instead of BatchNorm (``discriminator_norm: spectral``,
SNGAN), the hinge loss, and an exponential moving average of the weights that validation,
checkpoints and sampling use (``ema_decay``). Each default keeps today's networks and training;
the README says what they did to the CIFAR-10 profile's 10-epoch run (they slowed it down).
A fourth, ``conditional``, makes both networks see the label (a projection discriminator); the
evaluation then adds an FID per class.

Parts: ``params``, ``net``, ``module``, ``data``; the ``SPEC`` that registers it is here.
"""

from __future__ import annotations

from sightline.models.gan.data import _callbacks, _datamodule, _module_kwargs
from sightline.models.gan.module import FixedNoiseProgress, GANModule, ValidationFID
from sightline.models.gan.net import Discriminator, Generator
from sightline.models.gan.params import PROGRESS, GANConfig, GANParams
from sightline.spec import ModelSpec

__all__ = [
    "Discriminator",
    "FixedNoiseProgress",
    "GANConfig",
    "GANModule",
    "GANParams",
    "Generator",
    "PROGRESS",
    "SPEC",
    "ValidationFID",
]


SPEC = ModelSpec(
    name="gan",
    module=GANModule,
    params=GANParams,
    datamodule=_datamodule,
    module_kwargs=_module_kwargs,
    monitor="val/fid",
    mode="min",
    callbacks=_callbacks,
)
