"""``models.spam``: the params schema, and the one place the model's defaults live."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sightline.config import ModelParams, Strict, TrainerConfig


class SpamDataConfig(Strict):
    """``models.spam.data``."""

    dataset: Literal["spam"] = "spam"
    batch_size: int = Field(32, gt=1)
    eval_batch_size: int = Field(128, gt=0)
    num_workers: int = Field(0, ge=0)


class SpamConfig(Strict):
    """``models.spam.model``: every key is a ``SpamModule`` argument (the tokenizer is fitted)."""

    vocab_size: int = Field(8000, ge=16)
    max_tokens: int = Field(256, ge=8, le=4096)
    dim: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    image_size: int = Field(192, ge=16)
    image_channels: list[int] = [16, 32, 64, 128]
    max_images: int = Field(4, ge=1)  # per message; further images are ignored
    modality_dropout: float = Field(0.1, ge=0.0, lt=1.0)  # fused input: a branch read as absent
    branch_loss: float = Field(0.5, ge=0.0)  # weight of each branch's own loss (alone, same head)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # attention weights (slow on CPU)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_steps: int = Field(50, ge=0)
    bag_lr_scale: float = Field(10.0, gt=0.0)  # the word bag's learning rate: lr x this
    bag_weight_decay: float = Field(0.5, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # training targets eps/2, 1 - eps/2
    max_ham_fpr: float = Field(0.01, ge=0.0, lt=1.0)  # threshold: share of val ham flagged
    image_text: bool = True  # the image branch reads the words in the images (OCR)
    wide: bool = True  # + a linear TF-IDF vote per word, shared by the text and the image words
    text_reads_images: bool = True  # fused: the text branch reads the words in the images too
    char_grams: int = Field(0, ge=0)  # wide part: hashed character n-gram buckets (0: words only)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SpamConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not self.image_channels:
            raise ValueError("image_channels must name at least one stage")
        return self


class SpamParams(ModelParams):
    upstream: str = "data/prepared/spam"
    data: SpamDataConfig = SpamDataConfig()
    model: SpamConfig = SpamConfig()
    trainer: TrainerConfig = TrainerConfig()
