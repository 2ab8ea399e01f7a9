"""``vae``: the DataModule and the constructor arguments a params section gives."""

from __future__ import annotations

from sightline.data.images import ImageDataModule
from sightline.models.generative import (
    check_downsampling,
    image_datamodule,
)
from sightline.models.vae.params import VAEParams


def _datamodule(section: VAEParams, data_dir, seed: int) -> ImageDataModule:
    return image_datamodule(section.data, data_dir, seed, pixel_range=(0.0, 1.0))


def _module_kwargs(section: VAEParams, dm: ImageDataModule) -> dict:
    m = section.model
    check_downsampling(
        dm.preprocess.size, len(m.channels), "models.vae.model.channels", section.data.dataset
    )
    return {**m.model_dump(), "class_names": dm.class_names, "preprocess": dm.preprocess.to_dict()}
