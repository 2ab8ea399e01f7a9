"""Request and response types of the service, and decoding within the per-request budgets.

Every image is sized from its header before it is decoded: one over ``max_pixels`` is refused
without decoding, and ``serving.guard`` refuses a multipart request whose images add up to more
before any of them reaches this module. JSON requests (``/spam/predict``) are summed here.
Refusals over a budget are 413 (``TooLarge``), malformed input is 400.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import os
import re
import string
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

from bentoml.exceptions import BentoMLException, InvalidArgument
from bentoml.validators import ContentType
from PIL.Image import Image
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    PrivateAttr,
    WrapSerializer,
    model_validator,
)
from pydantic_core import core_schema

from serving.settings import load_serving_config
from sightline.data import decode
from sightline.errors import BudgetError, InputError

# serving/params.yaml beside this file (inside the Bento too); SIGHTLINE_SERVING_PARAMS names
# another file, e.g. to try gpu: 1 without rebuilding.
CONFIG = load_serving_config(
    os.environ.get("SIGHTLINE_SERVING_PARAMS") or Path(__file__).with_name("params.yaml")
)


# A result's media type, named in each API's return annotation (``Annotated[list[...], JSON]``).
# Unnamed, BentoML works a list, dict, number or text result's media type out of its JSON Schema,
# built again for every response (about 0.25 ms per response on each side of every call here).
JSON = ContentType("application/json")
TEXT = ContentType("text/plain")


def _as_is_when_pickled(value, encode, info):
    return value if info.mode == "python" else encode(value)


# A decoded image the front passes to a model service. BentoML's ``Image`` is saved again in
# its own format for every call between services (a JPEG or WebP upload re-encoded lossily, at
# the encoder's default quality) and decoded again on the other side; this one crosses the local
# socket pickled as it is, pixels unchanged. Its schema is ``Image``'s.
Decoded = Annotated[Image, WrapSerializer(_as_is_when_pickled)]


class Jpeg:
    """A JPEG upload the front has sized from its header but not decoded: a model service that
    decodes on its device (``services.<name>.decode``) gets its bytes, and decodes the batch
    there (``serving.decoding.upload_pixels``). It crosses the socket pickled as it is."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        return core_schema.is_instance_schema(cls)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema, handler):
        return {"type": "string", "format": "binary", "description": "a JPEG file's bytes"}


Upload = Decoded | Jpeg  # what a batchable image endpoint of a model service takes


class TooLarge(BentoMLException):
    """A request over one of its budgets: 413 with the limit in the reason."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


@contextmanager
def client_errors():
    """A sightline ``InputError`` (the caller's mistake) becomes a 400 with its message, a
    ``BudgetError`` a 413."""
    try:
        yield
    except BudgetError as err:
        raise TooLarge(str(err)) from None
    except InputError as err:
        raise InvalidArgument(str(err)) from None


# --- images -----------------------------------------------------------------------------------


def open_image(data: bytes, what: str = "image") -> Image:
    """Bytes -> a lazily opened PIL image (only its header read); ``InputError`` naming ``what``
    when it is not an image, ``BudgetError`` when it has more than ``max_pixels`` pixels."""
    try:
        return decode.open_image(data, CONFIG.max_pixels, what)
    except BudgetError as err:
        raise BudgetError(f"{err} per request") from None


load_image = decode.load_image


def _open_upload(obj) -> Image:
    """A multipart upload -> an opened image (header read, sized), before BentoML's own decoding
    sees it; ``decoded`` decodes it, off the event loop."""
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
        return open_image(obj, "image")
    except BudgetError as err:
        raise TooLarge(str(err)) from None
    except InputError as err:
        raise ValueError(str(err)) from None


def image_name(i: int, n: int) -> str:
    """How an error names the ``i``-th (from 0) of a request's ``n`` images."""
    return f"image {i + 1}" if n > 1 else "image"


def jpeg_bytes(img: Image) -> bytes | None:
    """The bytes of an opened, not yet decoded, grey or RGB JPEG upload; ``None`` for any other
    (a CMYK JPEG, another format), which the front decodes."""
    fp = getattr(img, "fp", None)
    if img.format != "JPEG" or img.mode not in ("L", "RGB") or not isinstance(fp, io.BytesIO):
        return None
    return fp.getvalue()


async def decoded(images: list[Image], keep_jpeg: bool = False) -> list[Image | Jpeg]:
    """Decode opened uploads in full in a worker thread (PIL releases the GIL while it decodes),
    so the event loop keeps serving other requests; a corrupt one is a 400. ``keep_jpeg``: grey
    and RGB JPEGs stay encoded (``Jpeg``), for a service that decodes them on its device."""

    def load_all() -> list[Image | Jpeg]:
        out: list[Image | Jpeg] = []
        for i, im in enumerate(images):
            data = jpeg_bytes(im) if keep_jpeg else None
            out.append(Jpeg(data=data) if data else load_image(im, image_name(i, len(images))))
        return out

    with client_errors():
        return await asyncio.to_thread(load_all)


def answered(results: list) -> list:
    """A model service's answers to one request's images; the first image it could not decode
    (``{"error": reason}`` in its place) is the request's 400."""
    for i, r in enumerate(results):
        if isinstance(r, dict) and "error" in r:
            raise InvalidArgument(f"{image_name(i, len(results))}: {r['error']}")
    return results


def b64_bytes(value: str) -> bytes:
    """A base64 string (a ``data:`` URI is accepted) -> bytes; ``InputError`` if it is not."""
    try:
        return base64.b64decode(
            value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True
        )
    except (binascii.Error, ValueError):
        raise InputError("image: not valid base64") from None


def image_to_b64(img: Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def check_network_pixels(model: str, n: int, size: tuple[int, int]) -> None:
    """``n`` images, each resized to ``size`` (H, W) for ``model``'s network: over
    ``max_network_pixels`` is a 413 naming the most images that fit. Checked before decoding, as
    the work a request costs is its images' count at the network's resolution, not their bytes."""
    work = n * size[0] * size[1]
    if work > CONFIG.max_network_pixels:
        fit = CONFIG.max_network_pixels // (size[0] * size[1])
        raise TooLarge(
            f"images: {n} images are {work} pixels at the {model} network's {size[0]}x{size[1]};"
            f" the limit per request is {CONFIG.max_network_pixels} ({fit} images)"
        )


ImageFile = Annotated[Image, BeforeValidator(_open_upload)]
"""An uploaded image (``image/*``), sized from its header while the request is validated."""
ImageFiles = Annotated[list[ImageFile], Field(min_length=1, max_length=CONFIG.max_images)]
B64Image = Annotated[
    str, Field(description="a PNG/JPEG/GIF image, base64 (a data: URI is accepted)")
]
Text = Annotated[str, Field(max_length=CONFIG.max_text_chars)]
# Integers are strict: JSON ``true`` or ``1.0`` is not a count (the schema says integer).
Count = Annotated[
    int, Field(strict=True, ge=1, le=CONFIG.max_samples, description="how many images")
]
Seed = Annotated[
    int, Field(strict=True, ge=0, le=2**63 - 1, description="the same seed gives the same images")
]


# --- spam -------------------------------------------------------------------------------------


class Message(BaseModel):
    """An email given as parts; at least one must be non-empty."""

    subject: Text = Field("", examples=["Get rich quick!!!"])
    body: Text = Field("", examples=["Earn $5,000 a week from home. Reply now."])
    images: list[B64Image] = Field(default_factory=list, max_length=CONFIG.max_images)

    _opened: list[Image] = PrivateAttr(default_factory=list)
    _decoded: list[Image] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _open(self) -> Message:
        """Refuse an empty message; read the images' headers (``decode_messages`` decodes them
        once the whole request is known to fit its pixel budget)."""
        if not (self.subject.strip() or self.body.strip() or self.images):
            raise ValueError("nothing to classify: subject, body and images are all empty")
        try:
            self._opened = [open_image(b64_bytes(v)) for v in self.images]
        except BudgetError as err:
            raise TooLarge(str(err)) from None
        except InputError as err:
            raise ValueError(str(err)) from None
        return self


def decode_messages(messages: list[Message]) -> list[Message]:
    """Decode every message's images once the request's images are known to fit in
    ``max_images`` and ``max_pixels`` together."""
    opened = [im for m in messages for im in m._opened]
    if len(opened) > CONFIG.max_images:
        raise TooLarge(
            f"messages: {len(opened)} images in one request; the limit is {CONFIG.max_images}"
        )
    pixels = sum(im.width * im.height for im in opened)
    if pixels > CONFIG.max_pixels:
        raise TooLarge(
            f"messages: the images hold {pixels} pixels; the limit per request is {CONFIG.max_pixels}"
        )
    try:
        for m in messages:
            m._decoded = [load_image(im) for im in m._opened]
    except InputError as err:
        raise ValueError(str(err)) from None
    return messages


Messages = Annotated[
    list[Message],
    Field(min_length=1, max_length=CONFIG.max_messages),
    AfterValidator(decode_messages),
]


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


def read_mailbox(path: Path) -> list[bytes]:
    """The raw emails of an mbox file, in order, ``From`` lines unquoted; ``InputError`` when it
    holds none, ``BudgetError`` over ``max_mailbox_messages``."""
    import mailbox

    box = mailbox.mbox(path, create=False)
    keys = list(box.keys())
    if not keys:
        raise InputError(
            "no emails in the mailbox: an mbox file starts each one with a 'From ' line"
        )
    if len(keys) > CONFIG.max_mailbox_messages:
        raise BudgetError(
            f"{len(keys)} emails in the mailbox: at most {CONFIG.max_mailbox_messages} per task"
        )
    # mboxrd: a body line ">From " (">>From ", ...) was "From " (">From ") before it was stored
    return [re.sub(rb"(?m)^>(>*From )", rb"\1", box.get_bytes(key)) for key in keys]


class MailboxResult(BaseModel):
    index: int = Field(description="the email's position in the mailbox, from 0")
    subject: str = Field(description="its subject, cut to 200 characters")
    result: SpamResult | None = Field(None, description="as /spam/predict_email; null on error")
    error: str | None = Field(None, description="why this email could not be classified")


# --- clip -------------------------------------------------------------------------------------


def check_template(template: str) -> str:
    """A zero-shot prompt template: literal text with exactly one bare ``{}`` (``{{`` and ``}}``
    are literal braces); no field names, conversions or format specs, which ``str.format``
    would act on."""
    try:
        fields = [
            (name, spec, conv)
            for _, name, spec, conv in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as err:
        raise ValueError(f"template {template[:40]!r}: {err}") from None
    if len(fields) != 1 or fields[0] != ("", "", None):
        raise ValueError(
            f"template {template[:40]!r}: needs exactly one bare {{}} (no names, no format specs), found {len(fields)} field(s)"
        )
    return template


def check_request_chars(texts: list[str]) -> list[str]:
    """Refuse (413) a request whose texts add up to more than ``max_request_chars``."""
    total = sum(len(t) for t in texts)
    if total > CONFIG.max_request_chars:
        raise TooLarge(
            f"texts: {total} characters in one request; the limit is {CONFIG.max_request_chars}"
        )
    return texts


Caption = Annotated[str, Field(min_length=1, max_length=CONFIG.max_caption_chars)]
Captions = Annotated[
    list[Caption],
    Field(min_length=1, max_length=CONFIG.max_texts, examples=[["a red heart", "a smiling face"]]),
    AfterValidator(check_request_chars),
]
ZeroShotLabel = Annotated[str, Field(min_length=1, max_length=200)]
Template = Annotated[
    str,
    Field(min_length=2, max_length=200, examples=["a photo of a {}."]),
    AfterValidator(check_template),
]


class Label(BaseModel):
    label: str
    probability: float


class Images(BaseModel):
    seed: int
    images: list[str] = Field(description="PNG images, base64")


class Hit(BaseModel):
    index: int = Field(
        description="position in the held-out index; GET the image from /clip/index_image"
    )
    caption: str
    score: float = Field(description="cosine similarity")
