"""The five sightline models as one BentoML service, one route prefix per model.

``bentoml serve serving.service:Sightline`` (from the repository root) or ``bentoml serve
sightline:latest`` (the packaged Bento). Models come from the BentoML model store (written by
``dvc repro package``) and are rebuilt with ``sightline.inference.load_module``: safetensors and
a JSON config, never a pickle. Preprocessing is the package's own, the same code training used.

Settings come from ``serving/params.yaml`` next to this file (batching, limits, GPU request).
Client mistakes are 4xx with a reason: validation (pydantic bounds, image decoding, email
parsing) happens per request, before any batching, so one bad request never fails another's.
Every request is held to budgets (``serving.inputs``) and passes ``serving.guard`` first
(token, concurrency, body size, multipart parsing, error bodies).
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated

import bentoml
import torch
from bentoml.exceptions import InvalidArgument
from PIL.Image import Image
from pydantic import Field

from serving.guard import Guard
from serving.inputs import (
    CONFIG,
    Captions,
    Count,
    Hit,
    ImageFile,
    ImageFiles,
    Images,
    Label,
    Messages,
    Seed,
    SpamResult,
    Template,
    ZeroShotLabel,
    check_request_chars,
    client_errors,
    image_to_b64,
)  # fmt: skip
from serving.openapi import fix_spec
from sightline.data.captions import FASHION_TEMPLATES
from sightline.inference import load_module, select_device
from sightline.mail.ocr import available as ocr_available
from sightline.mail.ocr import read_texts
from sightline.mail.parse import parse_email
from sightline.packaging import MODELS, load_index


def _model_tags() -> dict[str, str]:
    """The BentoML model versions to serve. A built Bento carries ``models.json`` (written by the
    package stage), which pins the versions it was built with: ``:latest`` would follow whatever
    a later package run (an experiment, say) added to the store. From a checkout: ``:latest``."""
    pinned = Path(__file__).with_name("models.json")
    tags = json.loads(pinned.read_text()) if pinned.is_file() else {}
    return {name: tags.get(name, f"{name}:latest") for name in MODELS}


MODEL_TAGS = _model_tags()


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
        self._warm_up()
        self.ready = True

    def _warm_up(self) -> None:
        """One pass through every model (first calls allocate and pick kernels), so ``/readyz``
        turns 200 only when the first real request is as fast as the rest."""
        from PIL import Image as PILImage

        img = PILImage.new("RGB", (32, 32), (128, 128, 128))
        with self.infer():
            self.classifier(self.classifier.preprocess([img]).to(self.device))
            self.vae.reconstruct(self.vae.preprocess([img]).to(self.device))
            self._sample(self.vae, 1, 0)
            self._sample(self.gan, 1, 0)
            self.clip.embed_images([img])
            self.clip.embed_texts(["a photo"])
            self.spam.predict_batch([self.spam.encode("warm up", "", [], image_texts=[])])

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
    def spam_predict(self, messages: Messages) -> list[SpamResult]:
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
        deadline = time.monotonic() + CONFIG.timeout_s  # no Tesseract outlives the request
        flat = iter(read_texts([im for images in kept for im in images], deadline=deadline))
        return [[next(flat) for _ in images] for images in kept]

    @bentoml.api(route="/spam/predict_email")
    def spam_predict_email(
        self, email: Annotated[Path, bentoml.validators.ContentType("message/rfc822")]
    ) -> SpamResult:
        """A raw RFC 822 email (an ``.eml`` upload) -> as ``/spam/predict``, plus what the parser
        had to drop (oversized or corrupt images, unknown charsets, images over the budget)."""
        m = self.spam
        with client_errors(), self.infer():
            parsed = parse_email(
                Path(email).read_bytes(), max_pixels=CONFIG.max_pixels,
                max_header_line=CONFIG.max_header_line, max_part_chars=CONFIG.max_email_part_chars,
                max_parts=CONFIG.max_email_parts,
            )  # fmt: skip
            if parsed.empty:
                raise InvalidArgument("nothing to classify: the email has no subject, text or images")  # fmt: skip
            texts = self._read_images([parsed.images])[0]
            out = m.predict_batch([m.encode(parsed.subject, parsed.text, parsed.images, image_texts=texts)])[0]  # fmt: skip
            return SpamResult(**out, parse_issues=dict(parsed.issues))

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
        steps: Annotated[int, Field(strict=True, ge=2, le=CONFIG.max_samples)] = 10,
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
    def clip_embed_texts(self, texts: Captions) -> list[list[float]]:
        """Each text -> its unit-norm CLIP embedding (long texts are truncated to the context)."""
        with client_errors(), self.infer():
            return self.clip.embed_texts(texts).tolist()

    @bentoml.api(route="/clip/zero_shot")
    def clip_zero_shot(
        self, image: ImageFile,
        labels: Annotated[list[ZeroShotLabel], Field(min_length=2, max_length=CONFIG.max_labels, examples=[["t-shirt", "sneaker", "bag"]])],
        templates: Annotated[list[Template], Field(min_length=1, max_length=CONFIG.max_templates)] = FASHION_TEMPLATES,
        top_k: Annotated[int, Field(strict=True, ge=1, le=CONFIG.max_labels)] = 5,
    ) -> list[Label]:  # fmt: skip
        """Classify ``image`` against free-text ``labels``: each label's embedding is the mean over
        the prompt ``templates`` (each with exactly one bare ``{}``)."""
        m = self.clip
        check_request_chars([t.format(label) for label in labels for t in templates])
        with client_errors(), self.infer():
            logits = m.embed_images([image]) @ m.class_embeddings(labels, templates).T
        return m.postprocess(logits, labels, top_k)[0]

    @bentoml.api(route="/clip/search")
    def clip_search(
        self, query: Annotated[str, Field(min_length=1, max_length=CONFIG.max_caption_chars, examples=["a red heart"])],
        top_k: Annotated[int, Field(strict=True, ge=1, le=100)] = 5,
    ) -> list[Hit]:  # fmt: skip
        """The held-out images (never seen in training) closest to ``query``."""
        with self.infer():
            q = self.clip.embed_texts([query]).to(self.index.device)
        scores, idx = (self.index @ q[0].float()).topk(min(top_k, len(self.index_captions)))
        return [Hit(index=int(i), caption=self.index_captions[int(i)], score=round(float(s), 6)) for s, i in zip(scores, idx, strict=True)]  # fmt: skip

    @bentoml.api(route="/clip/index_image")
    def clip_index_image(self, index: Annotated[int, Field(strict=True, ge=0)]) -> Image:
        """One image of the search index, as PNG."""
        if index >= len(self.index_captions):
            raise InvalidArgument(f"index {index} out of range: the index holds {len(self.index_captions)} images")  # fmt: skip
        from sightline.data.captions import to_pil

        return to_pil(self.index_images[index].numpy())

    @bentoml.api(route="/models")
    def models(self) -> dict[str, str]:
        """The BentoML model tag each route prefix serves."""
        return self.tags


def _file_fields() -> dict[str, dict[str, str]]:
    """``{route: {field: content type}}`` of every multipart file field of the service."""
    out = {}
    for api in Sightline.apis.values():
        fields = getattr(api.input_spec, "multipart_fields", [])
        if fields:
            out[api.route] = {f: "message/rfc822" if f == "email" else "image/*" for f in fields}
    return out


FILE_FIELDS = _file_fields()
Sightline.add_asgi_middleware(Guard, config=CONFIG, file_fields=FILE_FIELDS, fix_spec=lambda spec: fix_spec(spec, FILE_FIELDS))  # fmt: skip
