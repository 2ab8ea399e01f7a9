"""The five sightline models behind one BentoML service, one route prefix per model.

``bentoml serve serving.service:Sightline`` (from the repository root) or ``bentoml serve
sightline:latest`` (the packaged Bento) starts this front service and, as separate processes,
one inference service per model and one for OCR (``serving.backends``), which load the models
from the BentoML model store (safetensors and a JSON config, never a pickle).

Settings come from ``serving/params.yaml`` next to this file (services, batching, budgets).
Client mistakes are 4xx with a reason: validation (pydantic bounds, image decoding, email
parsing) happens per request, before any batching, so one bad request never fails another's.
Every request is held to budgets (``serving.inputs``) and passes ``serving.guard`` first
(token, concurrency, body size, multipart parsing, error bodies).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.exceptions import InvalidArgument, NotFound
from PIL.Image import Image
from pydantic import Field

import sightline
from serving.backends import (
    MODEL_TAGS,
    SERVICES,
    ClassifierModel,
    ClipModel,
    GanModel,
    Ocr,
    SpamModel,
    TransferModel,
    VaeModel,
    network_size,
    spam_reads_images,
)
from serving.coalesce import Coalesce
from serving.guard import Guard, routes_of
from serving.inputs import (
    CONFIG,
    JSON,
    Captions,
    Count,
    Hit,
    ImageFile,
    ImageFiles,
    Images,
    Label,
    MailboxResult,
    Messages,
    Seed,
    SpamResult,
    Template,
    ZeroShotLabel,
    answered,
    check_network_pixels,
    check_request_chars,
    client_errors,
    decoded,
    read_mailbox,
)
from serving.metrics import bound_endpoint_labels
from serving.openapi import fix_spec
from sightline.data.captions import FASHION_TEMPLATES
from sightline.errors import InputError
from sightline.mail.ocr import available as ocr_available
from sightline.mail.parse import parse_email


async def ask(call, *args, **kwargs):
    """Call an inference service; a connection it dropped (an idle keep-alive connection closed
    under the caller, a restarting worker) is retried, twice at most: the calls are pure. Still
    unreachable: 503, so the client retries later."""
    from aiohttp import ClientConnectionError
    from bentoml.exceptions import ServiceUnavailable

    for attempt in range(3):
        try:
            return await call(*args, **kwargs)
        except ClientConnectionError as err:
            if attempt == 2:
                raise ServiceUnavailable(
                    f"an inference service is unreachable ({type(err).__name__})"
                ) from None
            await asyncio.sleep(0.01 * (attempt + 1))


bound_endpoint_labels()  # before BentoML builds any service's app, in every process

# The batchable endpoints of the inference services, as (service, api).
BATCHED = [(n, api) for n, s in SERVICES.items() for api, m in s.apis.items() if m.batchable]


SYSTEM_PACKAGES = ("tesseract-ocr", "tesseract-ocr-eng")  # OCR of the spam model's images
WHEEL = f"./wheels/sightline-{sightline.__version__}-py3-none-any.whl"  # built by the package stage

# The runtime, as a v2 Bento image: Debian with this interpreter's Python, Tesseract, and the
# sightline wheel with its dependencies. PyPI's torch wheels for Linux carry the CUDA runtime,
# so the same image runs on a GPU (`docker run --gpus all`) and on the CPU.
IMAGE = (
    bentoml.images.Image(
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        lock_python_packages=False,
    )
    .system_packages(*SYSTEM_PACKAGES)
    .python_packages(WHEEL)
)


@bentoml.service(
    name=CONFIG.bento,
    image=IMAGE,
    workers=CONFIG.workers,
    traffic={"timeout": CONFIG.timeout_s},
    labels={"project": "sightline"},
)
class Sightline:
    """Image classification, spam filtering, VAE and GAN generation, CLIP search.

    The front: it owns the routes, validates and decodes every request, and calls one
    inference service per model (``serving.backends``), which scale apart.
    """

    classifier = bentoml.depends(ClassifierModel)
    transfer = bentoml.depends(TransferModel)
    spam = bentoml.depends(SpamModel)
    vae = bentoml.depends(VaeModel)
    gan = bentoml.depends(GanModel)
    clip = bentoml.depends(ClipModel)
    ocr = bentoml.depends(Ocr)

    def __init__(self) -> None:
        self.tags = {name: str(bentoml.models.get(MODEL_TAGS[name]).tag) for name in MODEL_TAGS}
        self.spam_images = spam_reads_images()
        # the size each upload is resized to for its network: what an image costs
        self.network_sizes = {
            name: network_size(name) for name in ("classifier", "transfer", "vae")
        }
        # the services that decode JPEG uploads on their device get them undecoded
        self.decodes_jpeg = {name: CONFIG.service(name).decodes_jpeg for name in SERVICES}
        if self.spam_images and not ocr_available():
            logging.getLogger("sightline").warning(
                "spam: the tesseract command is missing; the words in images are not read (apt install tesseract-ocr)"
            )
            self.spam_images = 0
        # the batchable calls: concurrent requests' items go to the service together
        self.batched = {
            (name, api): Coalesce(
                lambda items, name=name, api=api: ask(
                    getattr(getattr(self, name).to_async, api), items
                ),
                max_items=CONFIG.batch(name)["max_batch_size"],
                in_flight=CONFIG.calls_in_flight * CONFIG.service(name).processes,
            )
            for name, api in BATCHED
        }

    # classifier

    @bentoml.api(route="/classifier/predict")
    async def classifier_predict(self, images: ImageFiles) -> Annotated[list[list[Label]], JSON]:
        """Each image (any size or mode; resized and converted as in training) -> its top-k
        Fashion-MNIST labels with probabilities."""
        check_network_pixels("classifier", len(images), self.network_sizes["classifier"])
        items = await decoded(images, keep_jpeg=self.decodes_jpeg["classifier"])
        return answered(await self.batched["classifier", "predict"](items))

    # transfer

    @bentoml.api(route="/transfer/predict")
    async def transfer_predict(self, images: ImageFiles) -> Annotated[list[list[Label]], JSON]:
        """Each image (any size or mode; resized to the training images' size, then as the
        backbone's ImageNet training did) -> its top-k CIFAR-10 labels with probabilities, from
        a head on a pretrained ImageNet backbone. At most ``max_network_pixels`` per request
        at the backbone's resolution (10 images at 224 x 224 by default)."""
        check_network_pixels("transfer", len(images), self.network_sizes["transfer"])
        items = await decoded(images, keep_jpeg=False)
        return answered(await self.batched["transfer", "predict"](items))

    # spam

    async def _read(self, per_message: list[list[Image]]) -> list[list[str] | None]:
        """What OCR reads in the images each message's model reads, all at once, one image per
        OCR process; ``None`` where the model does not read them."""
        if not self.spam_images:
            return [None] * len(per_message)
        kept = [list(images)[: self.spam_images] for images in per_message]
        texts = iter(
            await asyncio.gather(
                *(ask(self.ocr.to_async.read, im) for images in kept for im in images)
            )
        )
        return [[next(texts) for _ in images] for images in kept]

    async def _classify(self, messages: list[dict]) -> list[dict]:
        texts = await self._read([m["images"] for m in messages])
        return await self.batched["spam", "predict"](
            [{**m, "texts": t} for m, t in zip(messages, texts, strict=True)]
        )

    @bentoml.api(route="/spam/predict")
    async def spam_predict(self, messages: Messages) -> Annotated[list[SpamResult], JSON]:
        """Messages as JSON parts -> calibrated spam probability, label and modalities."""
        parts = [{"subject": x.subject, "body": x.body, "images": x._decoded} for x in messages]
        return [SpamResult(**r) for r in await self._classify(parts)]

    @bentoml.api(route="/spam/predict_email")
    async def spam_predict_email(
        self, email: Annotated[Path, bentoml.validators.ContentType("message/rfc822")]
    ) -> SpamResult:
        """A raw RFC 822 email (an ``.eml`` upload) -> as ``/spam/predict``, plus what the parser
        had to drop (oversized or corrupt images, unknown charsets, images over the budget)."""
        with client_errors():
            parsed = await asyncio.to_thread(
                parse_email,
                Path(email).read_bytes(),
                max_pixels=CONFIG.max_pixels,
                max_header_line=CONFIG.max_header_line,
                max_part_chars=CONFIG.max_email_part_chars,
                max_parts=CONFIG.max_email_parts,
            )
        if parsed.empty:
            raise InvalidArgument("nothing to classify: the email has no subject, text or images")
        out = await self._classify(
            [{"subject": parsed.subject, "body": parsed.text, "images": parsed.images}]
        )
        return SpamResult(**out[0], parse_issues=dict(parsed.issues))

    @bentoml.task(route="/spam/predict_mailbox")
    async def spam_predict_mailbox(
        self, mailbox: Annotated[Path, bentoml.validators.ContentType("application/mbox")]
    ) -> Annotated[list[MailboxResult], JSON]:
        """Bulk mail as a task: an mbox file -> one result per email, in order. Submit it to
        ``/spam/predict_mailbox/submit``, poll ``/spam/predict_mailbox/status?task_id=...``,
        read ``/spam/predict_mailbox/get?task_id=...``. An email that cannot be parsed or holds
        nothing to classify gets its reason in ``error``; the others are classified
        ``max_messages`` at a time, their images read by the OCR service in parallel."""
        with client_errors():
            raws = await asyncio.to_thread(read_mailbox, Path(mailbox))
        out: list[MailboxResult] = []
        for start in range(0, len(raws), CONFIG.max_messages):
            chunk = raws[start : start + CONFIG.max_messages]
            parsed = await asyncio.to_thread(lambda c=chunk: [_parse_or_error(raw) for raw in c])
            todo = [(i, p) for i, p in enumerate(parsed) if not isinstance(p, str)]
            scores = iter(
                await self._classify(
                    [{"subject": p.subject, "body": p.text, "images": p.images} for _, p in todo]
                )
                if todo
                else []
            )
            for i, p in enumerate(parsed):
                index = start + i
                if isinstance(p, str):
                    out.append(MailboxResult(index=index, subject="", error=p))
                else:
                    result = SpamResult(**next(scores), parse_issues=dict(p.issues))
                    out.append(MailboxResult(index=index, subject=p.subject[:200], result=result))
        return out

    # vae

    @bentoml.api(route="/vae/reconstruct")
    async def vae_reconstruct(self, images: ImageFiles) -> Annotated[list[str], JSON]:
        """Each image -> its reconstruction from the posterior mean (PNG, base64)."""
        check_network_pixels("vae", len(images), self.network_sizes["vae"])
        items = await decoded(images, keep_jpeg=self.decodes_jpeg["vae"])
        return answered(await self.batched["vae", "reconstruct"](items))

    @bentoml.api(route="/vae/sample")
    async def vae_sample(self, n: Count = 16, seed: Seed = 0) -> Images:
        """``n`` images decoded from z ~ N(0, I); PNGs, base64."""
        return Images(seed=seed, images=await ask(self.vae.to_async.sample, n=n, seed=seed))

    @bentoml.api(route="/vae/sample_grid")
    async def vae_sample_grid(self, n: Count = 16, seed: Seed = 0) -> Image:
        """As ``/vae/sample``, tiled into one PNG."""
        return await ask(self.vae.to_async.sample_grid, n=n, seed=seed)

    @bentoml.api(route="/vae/interpolate")
    async def vae_interpolate(
        self,
        a: ImageFile,
        b: ImageFile,
        steps: Annotated[int, Field(strict=True, ge=2, le=CONFIG.max_samples)] = 10,
    ) -> Image:
        """Decode ``steps`` points on the line between the latent means of ``a`` and ``b``; one
        PNG strip, ``a``'s reconstruction first."""
        a, b = await decoded([a, b])
        return await ask(self.vae.to_async.interpolate, a=a, b=b, steps=steps)

    # gan

    @bentoml.api(route="/gan/sample")
    async def gan_sample(self, n: Count = 16, seed: Seed = 0) -> Images:
        """``n`` generated images; PNGs, base64."""
        return Images(seed=seed, images=await ask(self.gan.to_async.sample, n=n, seed=seed))

    @bentoml.api(route="/gan/sample_grid")
    async def gan_sample_grid(self, n: Count = 16, seed: Seed = 0) -> Image:
        """As ``/gan/sample``, tiled into one PNG."""
        return await ask(self.gan.to_async.sample_grid, n=n, seed=seed)

    # clip

    @bentoml.api(route="/clip/embed_images")
    async def clip_embed_images(self, images: ImageFiles) -> Annotated[list[list[float]], JSON]:
        """Each image -> its unit-norm CLIP embedding."""
        return await self.batched["clip", "embed_images"](await decoded(images))

    @bentoml.api(route="/clip/embed_texts")
    async def clip_embed_texts(self, texts: Captions) -> Annotated[list[list[float]], JSON]:
        """Each text -> its unit-norm CLIP embedding (long texts are truncated to the context)."""
        return await self.batched["clip", "embed_texts"](texts)

    @bentoml.api(route="/clip/zero_shot")
    async def clip_zero_shot(
        self,
        image: ImageFile,
        labels: Annotated[
            list[ZeroShotLabel],
            Field(
                min_length=2, max_length=CONFIG.max_labels, examples=[["t-shirt", "sneaker", "bag"]]
            ),
        ],
        templates: Annotated[
            list[Template], Field(min_length=1, max_length=CONFIG.max_templates)
        ] = FASHION_TEMPLATES,
        top_k: Annotated[int, Field(strict=True, ge=1, le=CONFIG.max_labels)] = 5,
    ) -> Annotated[list[Label], JSON]:
        """Classify ``image`` against free-text ``labels``: each label's embedding is the mean over
        the prompt ``templates`` (each with exactly one bare ``{}``)."""
        check_request_chars([t.format(label) for label in labels for t in templates])
        (image,) = await decoded([image])
        return await ask(
            self.clip.to_async.zero_shot,
            image=image,
            labels=labels,
            templates=templates,
            top_k=top_k,
        )

    @bentoml.api(route="/clip/search")
    async def clip_search(
        self,
        query: Annotated[
            str, Field(min_length=1, max_length=CONFIG.max_caption_chars, examples=["a red heart"])
        ],
        top_k: Annotated[int, Field(strict=True, ge=1, le=100)] = 5,
    ) -> Annotated[list[Hit], JSON]:
        """The held-out images (never seen in training) closest to ``query``."""
        return [Hit(**h) for h in await ask(self.clip.to_async.search, query=query, top_k=top_k)]

    @bentoml.api(route="/clip/index_image")
    async def clip_index_image(self, index: Annotated[int, Field(strict=True, ge=0)]) -> Image:
        """One image of the search index, as PNG."""
        size = await ask(self.clip.to_async.index_size)
        if index >= size:
            raise NotFound(f"no image at index {index}: the index holds {size} images")
        return await ask(self.clip.to_async.index_image, index=index)

    @bentoml.api(route="/models")
    def models(self) -> Annotated[dict[str, str], JSON]:
        """The BentoML model tag each route prefix serves."""
        return self.tags


def _parse_or_error(raw: bytes):
    """A parsed email, or the reason it cannot be classified."""
    try:
        parsed = parse_email(
            raw,
            max_pixels=CONFIG.max_pixels,
            max_header_line=CONFIG.max_header_line,
            max_part_chars=CONFIG.max_email_part_chars,
            max_parts=CONFIG.max_email_parts,
        )
    except InputError as err:
        return str(err)
    return "nothing to classify: no subject, text or images" if parsed.empty else parsed


# every POST route with what its body may be, from the APIs' own input descriptors
ROUTES = routes_of(Sightline)
FILE_FIELDS = {path: route.files for path, route in ROUTES.items() if route.files}
Sightline.add_asgi_middleware(
    Guard, config=CONFIG, routes=ROUTES, fix_spec=lambda spec: fix_spec(spec, FILE_FIELDS)
)
