"""One BentoML service per model, and one for OCR: the services the front (``serving.service``)
calls with ``bentoml.depends``.

Each model service loads only its own model, on the device found at run time, and has its own
``resources``, ``workers`` and batching from ``serving/params.yaml`` (``services.<name>``), so a
GPU model gets GPU workers and one model's load never stalls another's. OCR (Tesseract, a CPU
program) is its own service with one process per core, off every model's request path. The
front has already validated and decoded every input; these services trust their caller and are
not exposed on their own (``bentoml serve`` binds them to local sockets).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated

import bentoml
import torch
from PIL import Image as PILImage
from PIL.Image import Image

from serving.decoding import jpeg_decoder, pixels, upload_pixels
from serving.inputs import CONFIG, JSON, TEXT, Decoded, Jpeg, Upload, image_to_b64
from sightline.inference import load_module, select_device
from sightline.packaging import load_index
from sightline.registry import served_models

log = logging.getLogger("sightline.serving")


def _model_tags() -> dict[str, str]:
    """The BentoML model versions to serve. A built Bento carries ``models.json`` (written by the
    package stage), which pins the versions it was built with: ``:latest`` would follow whatever
    a later package run (an experiment, say) added to the store. From a checkout: ``:latest``."""
    pinned = Path(__file__).with_name("models.json")
    tags = json.loads(pinned.read_text()) if pinned.is_file() else {}
    return {name: tags.get(name, f"{name}:latest") for name in served_models()}


MODEL_TAGS = _model_tags()


def packaged_hparams(name: str) -> dict:
    """The packaged model ``name``'s hyper-parameters (its ``config.json``)."""
    path = Path(bentoml.models.get(MODEL_TAGS[name]).path) / "config.json"
    return json.loads(path.read_text())["hyper_parameters"]


def network_size(name: str) -> tuple[int, int]:
    """The ``(H, W)`` each upload of the packaged model ``name`` reaches its network at, from its
    saved preprocess: ``input_size`` where the dataset's images are resized again for a
    pretrained backbone (transfer), else ``size``. What one image costs, whatever its upload."""
    preprocess = packaged_hparams(name)["preprocess"]
    h, w = preprocess.get("input_size", preprocess["size"])
    return int(h), int(w)


def spam_reads_images() -> int:
    """How many images per message the packaged spam model reads with OCR (0: none)."""
    hparams = packaged_hparams("spam")
    return int(hparams["max_images"]) if hparams.get("image_text") else 0


def options(name: str) -> dict:
    """``bentoml.service`` keyword arguments of the service ``name`` (its params section)."""
    svc = CONFIG.service(name)
    return {
        "name": f"{CONFIG.bento}-{name}",
        "workers": svc.workers,
        "resources": {"gpu": svc.gpu} if svc.gpu else {},
        "traffic": {"timeout": CONFIG.timeout_s},
    }


def grid(images: torch.Tensor, nrow: int | None = None) -> Image:
    """Images in [0, 1] ``(N, C, H, W)`` -> one PNG-ready grid, square unless ``nrow`` is given."""
    from torchvision.utils import make_grid

    from sightline.models.generative import samples_to_pil

    nrow = nrow or max(1, math.ceil(len(images) ** 0.5))
    return samples_to_pil(
        make_grid(images.float().cpu(), nrow=nrow, padding=2, pad_value=1.0)[None]
    )[0]


def step_back(name: str) -> None:
    """Raise this worker process's niceness to ``services.<name>.nice``: the kernel then gives
    the cores to the other services first. Tesseract, started by the OCR worker, inherits it."""
    if not hasattr(os, "nice"):  # Windows
        return
    nice, now = CONFIG.service(name).nice, os.nice(0)
    if nice > now:  # only upward: lowering it needs privileges
        os.nice(nice - now)


class Loaded:
    """Loads ``name``'s packaged model (its class attribute ``stored``) and warms it up, so the
    service reports ready only when the first real request is as fast as the rest."""

    name: str

    def __init__(self) -> None:
        step_back(self.name)
        if CONFIG.threads:
            torch.set_num_threads(CONFIG.threads)
        self.device = select_device()
        self.half = CONFIG.half and self.device.type == "cuda"
        self.m = load_module(self.stored.path, self.name, self.device)
        if hasattr(self.m, "for_device"):  # a precision the device runs natively (transfer)
            log.info("%s: runs in %s on %s", self.name, self.m.for_device(self.device), self.device)
        self.ready = False
        with self.infer():
            self.warm_up(PILImage.new("RGB", (32, 32), (128, 128, 128)))
        self.ready = True

    def __is_ready__(self) -> bool:
        return self.ready

    def warm_up(self, img: Image) -> None:
        raise NotImplementedError

    def uploads(self, img: Image) -> list[Upload]:
        """Warm-up uploads: ``img``, and as a JPEG too where this service decodes JPEGs on its
        device (the decoder's first call initialises it: nvJPEG on CUDA)."""
        if not CONFIG.service(self.name).decodes_jpeg:
            return [img]
        try:  # a decoder that fails here would answer every JPEG upload with a 400
            decoder = jpeg_decoder(self.device)
        except RuntimeError as err:
            raise RuntimeError(
                f"services.{self.name}.decode: JPEGs cannot be decoded on {self.device} ({err}); set decode: front"
            ) from err
        log.info("%s: JPEG uploads decoded on %s with %s", self.name, self.device, decoder)
        buf = io.BytesIO()
        img.save(buf, format="JPEG")
        return [img, Jpeg(buf.getvalue())]

    @contextmanager
    def infer(self):
        """No autograd; float16 autocast on CUDA when ``half`` is set, else full precision."""
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=torch.float16) if self.half else nullcontext(),
        ):
            yield


def top_labels(svc: Loaded, images: list[Upload]) -> list[list[dict] | dict]:
    """An image classifier's answer (``classifier``, ``transfer``): per image its top-k
    ``{label, probability}``, or ``{"error": reason}`` for a JPEG that does not decode."""
    m = svc.m
    x, errors = upload_pixels(m, images, svc.device)
    with svc.infer():
        logits = m(m.preprocess.normalize(x))
    top = m.postprocess(logits.float().cpu(), top_k=CONFIG.top_k)
    return [{"error": e} if e else t for t, e in zip(top, errors, strict=True)]


@bentoml.service(**options("classifier"))
class ClassifierModel(Loaded):
    name = "classifier"
    stored = bentoml.models.BentoModel(MODEL_TAGS["classifier"])

    def warm_up(self, img: Image) -> None:
        self.predict(self.uploads(img))

    @bentoml.api(batchable=True, **CONFIG.batch("classifier"))
    def predict(self, images: list[Upload]) -> Annotated[list[list[dict] | dict], JSON]:
        """Images (decoded, or JPEG bytes) -> per image its top-k ``{label, probability}``, or
        ``{"error": reason}`` for a JPEG that does not decode."""
        return top_labels(self, images)


@bentoml.service(**options("transfer"))
class TransferModel(Loaded):
    name = "transfer"
    stored = bentoml.models.BentoModel(MODEL_TAGS["transfer"])

    def warm_up(self, img: Image) -> None:
        self.predict([img])

    @bentoml.api(batchable=True, **CONFIG.batch("transfer"))
    def predict(self, images: list[Upload]) -> Annotated[list[list[dict] | dict], JSON]:
        """Decoded images -> per image its top-k ``{label, probability}``: resized to the
        training images' size, then the whole backbone and the head."""
        return top_labels(self, images)


@bentoml.service(**options("spam"))
class SpamModel(Loaded):
    name = "spam"
    stored = bentoml.models.BentoModel(MODEL_TAGS["spam"])

    def warm_up(self, img: Image) -> None:
        self.predict([{"subject": "warm up", "body": "", "images": [], "texts": []}])

    @bentoml.api(batchable=True, **CONFIG.batch("spam"))
    def predict(self, messages: list[dict]) -> Annotated[list[dict], JSON]:
        """``{subject, body, images, texts}`` (``texts``: what OCR read in each image, or
        ``None``) -> per message the calibrated probability, label and modalities."""
        m = self.m
        with self.infer():
            examples = [
                m.encode(x["subject"], x["body"], x["images"], image_texts=x["texts"])
                for x in messages
            ]
            return m.predict_batch(examples)


class Sampler(Loaded):
    """The sampling routes of a generative model (vae, gan)."""

    def _sample(self, n: int, seed: int) -> torch.Tensor:
        with self.infer():
            return self.m.sample(n, torch.Generator().manual_seed(seed), check=False).float()

    @bentoml.api
    def sample(self, n: int, seed: int) -> Annotated[list[str], JSON]:
        """``n`` seeded samples, base64 PNGs."""
        return [image_to_b64(i) for i in self.m.postprocess(self._sample(n, seed))]

    @bentoml.api
    def sample_grid(self, n: int, seed: int) -> Image:
        """As ``sample``, tiled into one image."""
        return grid(self._sample(n, seed))


@bentoml.service(**options("vae"))
class VaeModel(Sampler):
    name = "vae"
    stored = bentoml.models.BentoModel(MODEL_TAGS["vae"])

    def warm_up(self, img: Image) -> None:
        self.reconstruct(self.uploads(img))
        self.sample(1, 0)

    @bentoml.api(batchable=True, **CONFIG.batch("vae"))
    def reconstruct(self, images: list[Upload]) -> Annotated[list[str | dict], JSON]:
        """Each image (decoded, or JPEG bytes) -> its reconstruction from the posterior mean,
        base64 PNG, or ``{"error": reason}`` for a JPEG that does not decode."""
        m = self.m
        x, errors = upload_pixels(m, images, self.device)
        with self.infer():
            out = m.reconstruct(m.preprocess.normalize(x))
        pngs = [image_to_b64(i) for i in m.postprocess(out.float())]
        return [{"error": e} if e else png for png, e in zip(pngs, errors, strict=True)]

    @bentoml.api
    def interpolate(self, a: Decoded, b: Decoded, steps: int) -> Image:
        """``steps`` decodings on the line between the latent means of ``a`` and ``b``."""
        m = self.m
        x = pixels(m, [a, b], self.device)
        with self.infer():
            return grid(m.interpolate(x[0], x[1], steps), nrow=steps)


@bentoml.service(**options("gan"))
class GanModel(Sampler):
    name = "gan"
    stored = bentoml.models.BentoModel(MODEL_TAGS["gan"])

    def warm_up(self, img: Image) -> None:
        self.sample(1, 0)


@bentoml.service(**options("clip"))
class ClipModel(Loaded):
    name = "clip"
    stored = bentoml.models.BentoModel(MODEL_TAGS["clip"])

    def __init__(self) -> None:
        super().__init__()
        tensors, meta = load_index(self.stored.path)
        self.index = tensors["embeddings"].to(self.device)
        self.index_images, self.index_captions = tensors["images"], meta["captions"]

    def warm_up(self, img: Image) -> None:
        self.embed_images([img])
        self.embed_texts(["a photo"])

    @bentoml.api(batchable=True, **CONFIG.batch("clip"))
    def embed_images(self, images: list[Decoded]) -> Annotated[list[list[float]], JSON]:
        with self.infer():
            return self.m.embed_images(images).tolist()

    @bentoml.api(batchable=True, **CONFIG.batch("clip"))
    def embed_texts(self, texts: list[str]) -> Annotated[list[list[float]], JSON]:
        with self.infer():
            return self.m.embed_texts(texts).tolist()

    @bentoml.api
    def zero_shot(
        self, image: Decoded, labels: list[str], templates: list[str], top_k: int
    ) -> Annotated[list[dict], JSON]:
        m = self.m
        with self.infer():
            logits = m.embed_images([image]) @ m.class_embeddings(labels, templates).T
        return m.postprocess(logits, labels, top_k)[0]

    @bentoml.api
    def search(self, query: str, top_k: int) -> Annotated[list[dict], JSON]:
        """The held-out images closest to ``query``: ``{index, caption, score}``."""
        with self.infer():
            q = self.m.embed_texts([query]).to(self.index.device)
        scores, idx = (self.index @ q[0].float()).topk(min(top_k, len(self.index_captions)))
        return [
            {"index": int(i), "caption": self.index_captions[int(i)], "score": round(float(s), 6)}
            for s, i in zip(scores, idx, strict=True)
        ]

    @bentoml.api
    def index_size(self) -> Annotated[int, JSON]:
        return len(self.index_captions)

    @bentoml.api
    def index_image(self, index: int) -> Image:
        """One image of the search index (the caller checks ``index < index_size()``)."""
        from sightline.data.decode import to_pil

        return to_pil(self.index_images[index].numpy())


@bentoml.service(**options("ocr"))
class Ocr:
    """The words Tesseract reads in one image; one Tesseract at a time per worker process."""

    def __init__(self) -> None:
        step_back("ocr")

    @bentoml.api
    def read(self, image: Decoded) -> Annotated[str, TEXT]:
        from sightline.mail.ocr import read_text

        return read_text(image, timeout=CONFIG.timeout_s)


SERVICES = {
    "classifier": ClassifierModel,
    "transfer": TransferModel,
    "spam": SpamModel,
    "vae": VaeModel,
    "gan": GanModel,
    "clip": ClipModel,
}
