"""``classifier``: a CNN image classifier (Conv-BN-activation blocks, downsampling stages).

Today's defaults are a plain Conv-BN-LeakyReLU net trained with AdamW. The options after
``channels_last`` in ``ClassifierConfig`` build a faster-learning net for harder data (the
CIFAR-10 profile in ``params/cifar10.yaml``): a patch-whitening stem initialised from the
training images, max-pool downsampling, identity-initialised convolutions, GELU, global max
pooling straight into the output layer, SGD with a larger learning rate on BatchNorm biases,
an exponential moving average of the weights and flip/shift test-time augmentation. Each
defaults to today's behaviour.

Parts: ``params``, ``net``, ``module``, ``data``; the ``SPEC`` that registers it is here.
"""

from __future__ import annotations

from sightline.models.classifier.data import _callbacks, _datamodule, _module_kwargs
from sightline.models.classifier.module import ClassifierModule
from sightline.models.classifier.net import (
    ClassifierNet,
    ScaledLinear,
    WhiteningStem,
    activation_layer,
    conv_block,
    out_size,
)
from sightline.models.classifier.params import (
    ClassifierConfig,
    ClassifierParams,
    stage_block_counts,
)
from sightline.spec import ModelSpec

__all__ = [
    "ClassifierConfig",
    "ClassifierModule",
    "ClassifierNet",
    "ClassifierParams",
    "SPEC",
    "ScaledLinear",
    "WhiteningStem",
    "activation_layer",
    "conv_block",
    "out_size",
    "stage_block_counts",
]


SPEC = ModelSpec(
    name="classifier",
    module=ClassifierModule,
    params=ClassifierParams,
    datamodule=_datamodule,
    module_kwargs=_module_kwargs,
    monitor="val/acc",
    mode="max",
    callbacks=_callbacks,
)
