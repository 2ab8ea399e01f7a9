"""``spam``: a multimodal email classifier. Raw email in, calibrated spam probability out.

A text branch (a Transformer over the first words and a TF-IDF bag of every word), an image
branch (a CNN over each image plus the words OCR reads in it), a wide TF-IDF vote per word, a
dense head over both, and a temperature and threshold fitted on validation after every epoch.
The design and the measurements behind it are in the README ("The spam model").

Parts: ``params`` (schema and defaults), ``text`` (tokenizer, IDF, n-grams), ``batch``
(encoded messages, collation), ``net`` (branches), ``calibration``, ``module``
(``SpamModule``), ``data`` (``EmailDataModule``). ``predict_email(raw_bytes)`` and
``predict(subject, body, images)`` share ``SpamModule.encode`` with the DataModule: training
and serving preprocess identically.
"""

from __future__ import annotations

from sightline.errors import ConfigError
from sightline.models.spam.batch import Example, collate, to_device
from sightline.models.spam.calibration import best_threshold, fit_temperature
from sightline.models.spam.data import EmailDataModule, MessageDataset
from sightline.models.spam.module import SpamModule
from sightline.models.spam.params import SpamConfig, SpamDataConfig, SpamParams
from sightline.models.spam.text import (
    bag_of_words,
    char_grams,
    fit_gram_idf,
    fit_idf,
    fit_tokenizer,
    message_text,
    smoothed_idf,
)
from sightline.spec import ModelSpec

__all__ = [
    "EmailDataModule",
    "Example",
    "MessageDataset",
    "SPEC",
    "SpamConfig",
    "SpamDataConfig",
    "SpamModule",
    "SpamParams",
    "bag_of_words",
    "best_threshold",
    "char_grams",
    "collate",
    "fit_gram_idf",
    "fit_idf",
    "fit_temperature",
    "fit_tokenizer",
    "message_text",
    "smoothed_idf",
    "to_device",
]


def _datamodule(section: SpamParams, data_dir, seed: int):
    d = section.data
    return EmailDataModule(data_dir, d.batch_size, d.eval_batch_size, d.num_workers, seed)


def _module_kwargs(section: SpamParams, dm) -> dict:
    m = section.model
    rows = dm.rows("train")
    spam = sum(r["label"] for r in rows)
    if spam == 0 or spam == len(rows):
        raise ConfigError("datasets.spam: the training split needs both ham and spam")
    texts = [
        message_text(
            r["subject"], " ".join([r["text"], *(r.get("ocr", []) if m.image_text else [])])
        )
        for r in rows
    ]
    tokenizer = fit_tokenizer(texts, m.vocab_size)
    gram_idf = fit_gram_idf(texts, m.char_grams) if m.wide and m.char_grams else None
    return {
        "tokenizer": tokenizer,
        "idf": fit_idf(texts, tokenizer),
        "gram_idf": gram_idf,
        "class_names": dm.class_names,
        "pos_weight": round((len(rows) - spam) / spam, 6),
        **m.model_dump(),
    }


SPEC = ModelSpec(
    name="spam",
    module=SpamModule,
    params=SpamParams,
    datamodule=_datamodule,
    module_kwargs=_module_kwargs,
    monitor="val/epoch",  # the last epoch; see the module docstring
    mode="max",
)
