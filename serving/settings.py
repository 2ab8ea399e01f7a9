"""The serving settings, ``serving/params.yaml``: their schema, defaults and checks.

Read by the ``package`` stage (which refuses a bad file before it builds anything) and by the
service when it is imported, so they travel inside the Bento.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from sightline.config import Strict, validate
from sightline.data.decode import MAX_PIXELS
from sightline.errors import ConfigError
from sightline.registry import served_models

DEVICE_DECODING = ("classifier", "vae")  # services that may decode JPEG uploads on their device


class BatchingConfig(Strict):
    """Adaptive batching of one model's per-item endpoints."""

    max_batch_size: int = Field(64, ge=1, le=4096)
    max_latency_ms: int = Field(50, ge=1)


class ServiceConfig(Strict):
    """One inference service: its processes and GPUs, how far its processes step back when
    the CPU is short (``nice``: their niceness, 0 to 19; a process with a higher one gets the
    cores only when the others leave them idle), and where its JPEG uploads are decoded
    (``decode``: ``front``, with the other formats; ``device``, by the model service on its
    device; ``auto``, on the device when the service has a GPU). A key left out of
    ``services.<name>`` takes the service's default (``ServingConfig.service``)."""

    workers: int | Literal["cpu_count"] = 1
    gpu: int = Field(0, ge=0)
    nice: int = Field(0, ge=0, le=19)
    decode: Literal["auto", "front", "device"] = "auto"

    @property
    def decodes_jpeg(self) -> bool:
        """Whether this service decodes the JPEG uploads itself, on its device."""
        return self.decode == "device" or (self.decode == "auto" and self.gpu > 0)

    @property
    def processes(self) -> int:
        """``workers`` as a number (``cpu_count``: this machine's cores)."""
        return (os.cpu_count() or 1) if self.workers == "cpu_count" else self.workers


class ServingConfig(Strict):
    """``serving/params.yaml``: read by the package stage and by the service at import time.

    The request limits are budgets: each bounds the memory or CPU time one request may take, and
    each is checked before the work it bounds (image headers before decoding, characters before
    tokenizing). A list a batched route accepts is never longer than that route's
    ``max_batch_size``, so a valid request always fits in one batch.
    """

    bento: str = Field("sightline", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    gpu: int = Field(0, ge=0)  # GPUs each model service requests; the device is chosen at run time
    half: bool = False  # float16 autocast when the service runs on CUDA
    workers: int | Literal["cpu_count"] = 1  # processes of the front service (routes, decoding)
    services: dict[str, ServiceConfig] = {}  # per model service (and "ocr"): workers, gpu
    calls_in_flight: int = Field(1, ge=1)  # per front worker and model-service worker
    threads: int = Field(0, ge=0)  # torch intra-op threads per worker; 0: torch's default
    timeout_s: int = Field(60, ge=1)
    body_timeout_s: float = Field(10.0, gt=0)  # the whole request body must arrive within this
    max_concurrency: int = Field(64, ge=1)  # requests in flight per worker; more get 503 at once
    retry_after_s: int = Field(1, ge=1)  # the Retry-After of an overload 503
    max_request_bytes: int = Field(10 * 2**20, gt=0)
    max_images: int = Field(16, ge=1)  # images per request
    max_pixels: int = Field(MAX_PIXELS, ge=1)  # decoded pixels per request, from image headers
    # pixels a model's network sees per request, after the model's resize
    max_network_pixels: int = Field(2**19, ge=1)
    max_messages: int = Field(16, ge=1)  # messages per /spam/predict request
    max_samples: int = Field(64, ge=1)  # n for the generative endpoints
    max_labels: int = Field(64, ge=2)  # zero-shot labels per request
    max_templates: int = Field(16, ge=1)  # zero-shot prompt templates per request
    max_texts: int = Field(64, ge=1)  # texts per /clip/embed_texts request
    max_text_chars: int = Field(100_000, ge=1)  # an email subject or body
    max_caption_chars: int = Field(1000, ge=1)  # a text the clip tokenizer reads
    max_request_chars: int = Field(65_536, ge=1)  # all the text clip tokenizes for one request
    max_header_line: int = Field(8192, ge=998)  # an email header line (RFC 5322 allows 998)
    max_email_part_chars: int = Field(400_000, ge=1)  # an email's text part, cut before parsing
    max_email_parts: int = Field(256, ge=1)  # MIME parts of an email, counted before parsing
    max_mailbox_messages: int = Field(1000, ge=1)  # emails in one /spam/predict_mailbox task
    top_k: int = Field(5, ge=1)
    batching: dict[str, BatchingConfig] = {}  # per model; the defaults above when not given

    @model_validator(mode="after")
    def _lists_fit_in_a_batch(self) -> ServingConfig:
        """A request longer than its route's batch would be refused (503) by BentoML's batching;
        refuse such a configuration instead, naming the keys."""
        for key, model in (
            ("max_images", "classifier"),
            ("max_images", "transfer"),
            ("max_images", "vae"),
            ("max_images", "clip"),
            ("max_texts", "clip"),
            ("max_messages", "spam"),
        ):
            size = self.batch(model)["max_batch_size"]
            if getattr(self, key) > size:
                raise ValueError(
                    f"{key} ({getattr(self, key)}) is over batching.{model}.max_batch_size ({size}): such a request could never be batched"
                )
        return self

    @model_validator(mode="after")
    def _decoding_services(self) -> ServingConfig:
        """Only the models whose uploads go straight into their network (classifier, vae)
        decode JPEGs on their device; clip's open_clip transforms take PIL images."""
        for name, svc in self.services.items():
            if svc.decode == "device" and name not in DEVICE_DECODING:
                raise ValueError(
                    f"services.{name}.decode: only {' and '.join(DEVICE_DECODING)} decode their uploads on the device"
                )
        return self

    @model_validator(mode="after")
    def _known_services(self) -> ServingConfig:
        served = served_models()
        for key, names in (("services", self.services), ("batching", self.batching)):
            unknown = sorted(set(names) - {*served, "ocr"})
            if unknown:
                raise ValueError(
                    f"{key}.{unknown[0]}: not a served model (served: {', '.join(served)}, and ocr)"
                )
        return self

    def service(self, name: str) -> ServiceConfig:
        """The resources of service ``name``: a model inherits the top-level ``gpu`` and runs at
        normal priority; OCR runs on the CPU, one process per core and at niceness 10 unless set,
        so bulk OCR takes the cores the model services leave idle. Only ``DEVICE_DECODING``
        services decode JPEGs themselves; the front decodes every other service's uploads."""
        default = (
            ServiceConfig(workers="cpu_count", gpu=0, nice=10)
            if name == "ocr"
            else ServiceConfig(gpu=self.gpu)
        )
        given = self.services.get(name)
        svc = default.model_copy(update=given.model_dump(exclude_unset=True) if given else {})
        if name not in DEVICE_DECODING:  # auto never means the device for the others
            svc = svc.model_copy(update={"decode": "front"})
        return svc

    def batch(self, name: str) -> dict[str, int]:
        """``bentoml.api`` keyword arguments for ``name``'s batchable endpoints."""
        return self.batching.get(name, BatchingConfig()).model_dump()


def load_serving_config(path: str | Path) -> ServingConfig:
    """Read and validate ``serving/params.yaml``; a bad key is a ``ConfigError`` naming it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: serving params not found") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML") from None
    try:
        return validate(ServingConfig, raw, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
