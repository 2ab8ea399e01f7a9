"""``gan``: the DataModule and the constructor arguments a params section gives."""

from __future__ import annotations

import lightning as L

from sightline.data.images import ImageDataModule
from sightline.models.gan.module import FixedNoiseProgress, ValidationFID
from sightline.models.gan.params import GANParams
from sightline.models.generative import (
    check_downsampling,
    image_datamodule,
)


def _datamodule(section: GANParams, data_dir, seed: int) -> ImageDataModule:
    return image_datamodule(section.data, data_dir, seed, pixel_range=(-1.0, 1.0))


def _module_kwargs(section: GANParams, dm: ImageDataModule) -> dict:
    m, size, dataset = section.model, dm.preprocess.size, section.data.dataset
    check_downsampling(
        size, len(m.generator_channels), "models.gan.model.generator_channels", dataset
    )
    check_downsampling(
        size, len(m.discriminator_channels), "models.gan.model.discriminator_channels", dataset
    )
    return {**m.model_dump(), "class_names": dm.class_names, "preprocess": dm.preprocess.to_dict()}


def _callbacks(section: GANParams, dm: ImageDataModule, seed: int) -> list:
    """Validation FID and the fixed noise's samples; with ``ema_decay``, Lightning's EMA of the
    weights (and BatchNorm statistics) last, so that both callbacks see the average (it is
    swapped in before validation and back after every other callback's epoch end), the
    checkpoints hold it and training ends with it."""
    s = section.score
    callbacks: list[L.Callback] = [
        ValidationFID(section.upstream, s.val_samples, s.batch_size, seed),
        FixedNoiseProgress(section.model.fixed_samples, seed),
    ]
    if section.model.ema_decay > 0.0:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        callbacks.append(EMAWeightAveraging(decay=section.model.ema_decay))
    return callbacks
