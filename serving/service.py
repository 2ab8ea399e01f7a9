"""The five sightline models as one BentoML service, one route prefix per model.

``bentoml serve serving.service:Sightline`` (from the repository root) or ``bentoml serve
sightline:latest`` (the packaged Bento). Models come from the BentoML model store (written by
``dvc repro package``) and are rebuilt with ``sightline.inference.load_module``: safetensors and
a JSON config, never a pickle. Preprocessing is the package's own, the same code training used.

Settings come from ``serving/params.yaml`` next to this file (batching, limits, GPU request).
Client mistakes are 4xx with a reason: validation (pydantic bounds, image decoding, email
parsing) happens per request, before any batching, so one bad request never fails another's.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated

import bentoml
import torch
from bentoml.exceptions import InvalidArgument
from PIL import Image as PILImage
from PIL.Image import Image
from pydantic import BaseModel, BeforeValidator, Field, PrivateAttr, model_validator

from sightline.data.captions import FASHION_TEMPLATES
from sightline.errors import InputError
from sightline.inference import load_module, select_device
from sightline.mail.ocr import available as ocr_available
from sightline.mail.ocr import read_texts
from sightline.packaging import MODELS, load_index, load_serving_config

CONFIG = load_serving_config(Path(__file__).with_name("params.yaml"))


def _model_tags() -> dict[str, str]:
    """The BentoML model versions to serve. A built Bento carries ``models.json`` (written by the
    package stage), which pins the versions it was built with: ``:latest`` would follow whatever
    a later package run (an experiment, say) added to the store. From a checkout: ``:latest``."""
    pinned = Path(__file__).with_name("models.json")
    tags = json.loads(pinned.read_text()) if pinned.is_file() else {}
    return {name: tags.get(name, f"{name}:latest") for name in MODELS}


MODEL_TAGS = _model_tags()
MAX_PIXELS = 4096 * 4096  # larger images are rejected before they are decoded in full


# --- errors -----------------------------------------------------------------------------------


@contextmanager
def client_errors():
    """A sightline ``InputError`` (the caller's mistake) becomes a 400 with its message."""
    try:
        yield
    except InputError as err:
        raise InvalidArgument(str(err)) from None


class RequestSizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 and never reaches an API.

    A declared ``Content-Length`` is checked up front; a chunked body is held up to the limit and
    replayed to the app. Memory stays bounded by the limit either way: the rest of a refused
    body is read and dropped, so the client gets the 413 instead of a connection reset.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _reject(self, receive, send, more: bool) -> None:
        # Read (and drop) what the client is still sending, up to a cap, so it sees the 413
        # rather than a connection reset in the middle of its upload.
        drained = 0
        while more and drained < 16 * self.max_bytes:
            message = await receive()
            drained += len(message.get("body", b""))
            more = message["type"] == "http.request" and message.get("more_body", False)
        body = b'{"error": "request body too large: the limit is %d bytes"}' % self.max_bytes
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await self._reject(receive, send, more=length.isdigit())
            return await self.app(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            more = message["type"] == "http.request" and message.get("more_body", False)
            if size > self.max_bytes:
                return await self._reject(receive, send, more)
            if not more:
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)


# --- request and response types ---------------------------------------------------------------


def decode_image(data: bytes, what: str = "image") -> Image:
    """Bytes -> a fully decoded PIL image; ``InputError`` naming ``what`` otherwise."""
    try:
        img = PILImage.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise InputError(f"{what}: {img.width}x{img.height} pixels is over the {MAX_PIXELS} limit")  # fmt: skip
        img.load()
    except InputError:
        raise
    except Exception as err:  # PIL raises many types for corrupt data
        raise InputError(f"{what}: not a decodable image ({type(err).__name__})") from None
    return img


def _open_upload(obj) -> Image:
    """A multipart upload -> a decoded image, before BentoML's own (lazy) decoding sees it."""
    from starlette.datastructures import UploadFile

    if isinstance(obj, Image):
        return obj
    if isinstance(obj, UploadFile):
        ctype = obj.content_type or "none"
        if not ctype.startswith("image/"):
            raise ValueError(f"Invalid content type {ctype}, expected image/*")
        obj = obj.file.read()
    if not isinstance(obj, bytes):
        raise ValueError("expected an image file")
    try:
        return decode_image(obj, "image")
    except InputError as err:
        raise ValueError(str(err)) from None


def b64_to_image(value: str) -> Image:
    """A base64 image (a ``data:`` URI is accepted) -> a decoded image; ``InputError`` if not."""
    try:
        raw = base64.b64decode(value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True)  # fmt: skip
    except (binascii.Error, ValueError):
        raise InputError("image: not valid base64") from None
    return decode_image(raw)


def image_to_b64(img: Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


ImageFile = Annotated[Image, BeforeValidator(_open_upload)]
"""An uploaded image (``image/*``), decoded in full while the request is validated."""
ImageFiles = Annotated[list[ImageFile], Field(min_length=1, max_length=CONFIG.max_images)]
B64Image = Annotated[str, Field(description="a PNG/JPEG/GIF image, base64 (a data: URI is accepted)")]  # fmt: skip
Text = Annotated[str, Field(max_length=CONFIG.max_text_chars)]
Count = Annotated[int, Field(ge=1, le=CONFIG.max_samples, description="how many images")]
Seed = Annotated[int, Field(ge=0, lt=2**63, description="the same seed gives the same images")]


class Label(BaseModel):
    label: str
    probability: float


class Message(BaseModel):
    """An email given as parts; at least one must be non-empty."""

    subject: Text = Field("", examples=["Get rich quick!!!"])
    body: Text = Field("", examples=["Earn $5,000 a week from home. Reply now."])
    images: list[B64Image] = Field(default_factory=list, max_length=CONFIG.max_images)

    _decoded: list[Image] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _decode(self) -> Message:
        """Refuse an empty message; decode the images once, while the request is validated."""
        if not (self.subject.strip() or self.body.strip() or self.images):
            raise ValueError("nothing to classify: subject, body and images are all empty")
        try:
            self._decoded = [b64_to_image(v) for v in self.images]
        except InputError as err:
            raise ValueError(str(err)) from None
        return self


class Modalities(BaseModel):
    text: bool
    images: int
    image_text: bool = Field(False, description="OCR read words in the images")


class SpamResult(BaseModel):
    spam_probability: float = Field(description="calibrated on the validation split")
    label: str = Field(description="`spam` when the probability reaches the threshold")
    threshold: float = Field(description="chosen on the validation split")
    modalities: Modalities
    parse_issues: dict[str, int] = Field(default_factory=dict)


class Images(BaseModel):
    seed: int
    images: list[str] = Field(description="PNG images, base64")


class Hit(BaseModel):
    index: int = Field(description="position in the held-out index; GET the image from /clip/index_image")  # fmt: skip
    caption: str
    score: float = Field(description="cosine similarity")


# --- the service -----------------------------------------------------------------------------


def _grid(images: torch.Tensor, nrow: int | None = None) -> Image:
    """Images in [0, 1] ``(N, C, H, W)`` -> one PNG-ready grid, square unless ``nrow`` is given."""
    from torchvision.utils import make_grid

    from sightline.generative import to_pil

    nrow = nrow or max(1, math.ceil(len(images) ** 0.5))
    return to_pil(make_grid(images.float().cpu(), nrow=nrow, padding=2, pad_value=1.0)[None])[0]


@bentoml.service(
    name=CONFIG.bento,
    workers=CONFIG.workers,
    resources={"gpu": CONFIG.gpu} if CONFIG.gpu else {},
    traffic={"timeout": CONFIG.timeout_s},
    labels={"project": "sightline"},
)
class Sightline:
    """Image classification, spam filtering, VAE and GAN generation, CLIP search."""

    classifier_model = bentoml.models.BentoModel(MODEL_TAGS["classifier"])
    spam_model = bentoml.models.BentoModel(MODEL_TAGS["spam"])
    vae_model = bentoml.models.BentoModel(MODEL_TAGS["vae"])
    gan_model = bentoml.models.BentoModel(MODEL_TAGS["gan"])
    clip_model = bentoml.models.BentoModel(MODEL_TAGS["clip"])

    def __init__(self) -> None:
        self.ready = False
        if CONFIG.threads:
            torch.set_num_threads(CONFIG.threads)
        self.device = select_device()
        self.half = CONFIG.half and self.device.type == "cuda"
        self.tags = {}
        for name in MODELS:
            stored = getattr(self, f"{name}_model")
            setattr(self, name, load_module(stored.path, name, self.device))
            self.tags[name] = str(stored.tag)
        tensors, meta = load_index(self.clip_model.path)
        self.index = tensors["embeddings"].to(self.device)
        self.index_images, self.index_captions = tensors["images"], meta["captions"]
        if self.spam.read is not None and not ocr_available():
            logging.getLogger("sightline").warning("spam: the tesseract command is missing; the words in images are not read (apt install tesseract-ocr)")  # fmt: skip
        self.ready = True

    def __is_ready__(self) -> bool:
        return self.ready

    @contextmanager
    def infer(self):
        """No autograd; float16 autocast on CUDA when ``half`` is set, else full precision."""
        with torch.inference_mode(), (torch.autocast("cuda", dtype=torch.float16) if self.half else nullcontext()):  # fmt: skip
            yield

    def _sample(self, model, n: int, seed: int) -> torch.Tensor:
        """``n`` seeded samples of a generative model (vae, gan), float images in [0, 1]."""
        with self.infer():
            return model.sample(n, torch.Generator().manual_seed(seed), check=False).float()

    def _pngs(self, model, n: int, seed: int) -> Images:
        return Images(seed=seed, images=[image_to_b64(i) for i in model.postprocess(self._sample(model, n, seed))])  # fmt: skip

    # classifier

    @bentoml.api(route="/classifier/predict", batchable=True, **CONFIG.batch("classifier"))
    def classifier_predict(self, images: ImageFiles) -> list[list[Label]]:
        """Each image (any size or mode; resized and converted as in training) -> its top-k
        Fashion-MNIST labels with probabilities."""
        m = self.classifier
        with self.infer():
            logits = m(m.preprocess(images).to(self.device))
        return m.postprocess(logits.float().cpu(), top_k=CONFIG.top_k)

    # spam

    @bentoml.api(route="/spam/predict", batchable=True, **CONFIG.batch("spam"))
    def spam_predict(
        self, messages: Annotated[list[Message], Field(min_length=1, max_length=64)]
    ) -> list[SpamResult]:
        """Messages as JSON parts -> calibrated spam probability, label and modalities."""
        m = self.spam
        with client_errors(), self.infer():
            texts = self._read_images([x._decoded for x in messages])
            examples = [m.encode(x.subject, x.body, x._decoded, image_texts=t) for x, t in zip(messages, texts, strict=True)]  # fmt: skip
            return [SpamResult(**r) for r in m.predict_batch(examples)]

    def _read_images(self, per_message: list[list[Image]]) -> list[list[str] | None]:
        """What OCR reads in each message's images (those the model reads, ``max_images``), all
        the batch's images at once, one Tesseract process per CPU; ``None`` where the model
        does not read them or Tesseract is missing (``encode`` then says so)."""
        m = self.spam
        if m.read is None or not ocr_available():
            return [None] * len(per_message)
        kept = [list(images)[: m.hparams.max_images] for images in per_message]
        flat = iter(read_texts([im for images in kept for im in images]))
        return [[next(flat) for _ in images] for images in kept]

    @bentoml.api(route="/spam/predict_email")
    def spam_predict_email(
        self, email: Annotated[Path, bentoml.validators.ContentType("message/rfc822")]
    ) -> SpamResult:
        """A raw RFC 822 email (an ``.eml`` upload) -> as ``/spam/predict``, plus what the parser
        had to drop (oversized or corrupt images, unknown charsets)."""
        with client_errors(), self.infer():
            return SpamResult(**self.spam.predict_email(Path(email).read_bytes()))

    # vae

    @bentoml.api(route="/vae/reconstruct", batchable=True, **CONFIG.batch("vae"))
    def vae_reconstruct(self, images: ImageFiles) -> list[str]:
        """Each image -> its reconstruction from the posterior mean (PNG, base64)."""
        m = self.vae
        with self.infer():
            out = m.reconstruct(m.preprocess(images).to(self.device))
        return [image_to_b64(i) for i in m.postprocess(out.float())]

    @bentoml.api(route="/vae/sample")
    def vae_sample(self, n: Count = 16, seed: Seed = 0) -> Images:
        """``n`` images decoded from z ~ N(0, I); PNGs, base64."""
        return self._pngs(self.vae, n, seed)

    @bentoml.api(route="/vae/sample_grid")
    def vae_sample_grid(self, n: Count = 16, seed: Seed = 0) -> Image:
        """As ``/vae/sample``, tiled into one PNG."""
        return _grid(self._sample(self.vae, n, seed))

    @bentoml.api(route="/vae/interpolate")
    def vae_interpolate(
        self, a: ImageFile, b: ImageFile,
        steps: Annotated[int, Field(ge=2, le=CONFIG.max_samples)] = 10,
    ) -> Image:  # fmt: skip
        """Decode ``steps`` points on the line between the latent means of ``a`` and ``b``; one
        PNG strip, ``a``'s reconstruction first."""
        m = self.vae
        x = m.preprocess([a, b]).to(self.device)
        with client_errors(), self.infer():
            return _grid(m.interpolate(x[0], x[1], steps), nrow=steps)

    # gan

    @bentoml.api(route="/gan/sample")
    def gan_sample(self, n: Count = 16, seed: Seed = 0) -> Images:
        """``n`` generated images; PNGs, base64."""
        return self._pngs(self.gan, n, seed)

    @bentoml.api(route="/gan/sample_grid")
    def gan_sample_grid(self, n: Count = 16, seed: Seed = 0) -> Image:
        """As ``/gan/sample``, tiled into one PNG."""
        return _grid(self._sample(self.gan, n, seed))

    # clip

    @bentoml.api(route="/clip/embed_images", batchable=True, **CONFIG.batch("clip"))
    def clip_embed_images(self, images: ImageFiles) -> list[list[float]]:
        """Each image -> its unit-norm CLIP embedding."""
        with self.infer():
            return self.clip.embed_images([i for i in images]).tolist()

    @bentoml.api(route="/clip/embed_texts", batchable=True, **CONFIG.batch("clip"))
    def clip_embed_texts(
        self, texts: Annotated[list[Text], Field(min_length=1, max_length=256)]
    ) -> list[list[float]]:
        """Each text -> its unit-norm CLIP embedding (long texts are truncated to the context)."""
        with client_errors(), self.infer():
            return self.clip.embed_texts(texts).tolist()

    @bentoml.api(route="/clip/zero_shot")
    def clip_zero_shot(
        self, image: ImageFile,
        labels: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(min_length=2, max_length=CONFIG.max_labels, examples=[["t-shirt", "sneaker", "bag"]])],
        templates: Annotated[list[Annotated[str, Field(pattern=r"\{\}")]], Field(min_length=1, max_length=16)] = FASHION_TEMPLATES,
        top_k: Annotated[int, Field(ge=1)] = 5,
    ) -> list[Label]:  # fmt: skip
        """Classify ``image`` against free-text ``labels``: each label's embedding is the mean over
        the prompt ``templates`` (each with one ``{}``)."""
        m = self.clip
        with client_errors(), self.infer():
            logits = m.embed_images([image]) @ m.class_embeddings(labels, templates).T
        return m.postprocess(logits, labels, top_k)[0]

    @bentoml.api(route="/clip/search")
    def clip_search(
        self, query: Annotated[str, Field(min_length=1, max_length=1000, examples=["a red heart"])],
        top_k: Annotated[int, Field(ge=1, le=100)] = 5,
    ) -> list[Hit]:  # fmt: skip
        """The held-out images (never seen in training) closest to ``query``."""
        with self.infer():
            q = self.clip.embed_texts([query]).to(self.index.device)
        scores, idx = (self.index @ q[0].float()).topk(min(top_k, len(self.index_captions)))
        return [Hit(index=int(i), caption=self.index_captions[int(i)], score=round(float(s), 6)) for s, i in zip(scores, idx, strict=True)]  # fmt: skip

    @bentoml.api(route="/clip/index_image")
    def clip_index_image(self, index: Annotated[int, Field(ge=0)]) -> Image:
        """One image of the search index, as PNG."""
        if index >= len(self.index_captions):
            raise InvalidArgument(f"index {index} out of range: the index holds {len(self.index_captions)} images")  # fmt: skip
        from sightline.data.captions import to_pil

        return to_pil(self.index_images[index].numpy())

    @bentoml.api(route="/models")
    def models(self) -> dict[str, str]:
        """The BentoML model tag each route prefix serves."""
        return self.tags


Sightline.add_asgi_middleware(RequestSizeLimit, max_bytes=CONFIG.max_request_bytes)
