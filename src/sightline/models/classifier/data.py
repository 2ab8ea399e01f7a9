"""``classifier``: the DataModule and the constructor arguments a params section gives."""

from __future__ import annotations

from sightline.data.images import ImageDataModule
from sightline.models.classifier.params import (
    ClassifierParams,
)


def _datamodule(section: ClassifierParams, data_dir, seed: int) -> ImageDataModule:
    d = section.data
    return ImageDataModule(
        data_dir,
        d.batch_size,
        d.eval_batch_size,
        d.num_workers,
        d.augment.model_dump(),
        d.train_subset,
        seed,
    )


def _module_kwargs(section: ClassifierParams, dm: ImageDataModule) -> dict:
    return {
        **section.model.model_dump(),
        "class_names": dm.class_names,
        "preprocess": dm.preprocess.to_dict(),
    }


def _callbacks(section: ClassifierParams, dm: ImageDataModule, seed: int) -> list:
    """With ``ema_decay``: Lightning's EMA of the weights (and BatchNorm statistics), which
    validation scores, the checkpoints hold and training ends with."""
    decay = section.model.ema_decay
    if decay == 0.0:
        return []
    from lightning.pytorch.callbacks import EMAWeightAveraging

    return [EMAWeightAveraging(decay=decay)]
