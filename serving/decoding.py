"""JPEG uploads decoded on a model service's device (nvJPEG on CUDA), and the uint8 pixels an
image model takes, converted and resized there as ``ImagePreprocess`` does on the CPU.

``jpeg_decoder`` chooses, once per device, the first of ``JPEG_DECODERS`` that decodes a JPEG
there (TorchCodec, else ``torchvision.io``); ``upload_pixels`` and ``pixels`` turn a batch of
uploads (decoded images, ``Jpeg`` bytes) into the model's input.
"""

from __future__ import annotations

import io
import logging

import torch
from PIL import Image as PILImage

from serving.inputs import Jpeg, Upload
from sightline.errors import InputError

log = logging.getLogger("sightline.serving")


def _grey(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 ``(3, H, W)`` -> ``(1, H, W)`` with PIL's ``convert("L")`` integer arithmetic (ITU-R
    601-2 luma, rounded), so a grey model sees the values training's preprocessing gives it."""
    r, g, b = rgb.to(torch.int32)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)[None]


def _torchcodec(datas: list[bytes], device: torch.device) -> list[torch.Tensor]:
    from torchcodec.decoders import decode_jpeg

    return list(decode_jpeg(datas, mode="RGB", device=device))


def _torchvision(datas: list[bytes], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))


# In order of preference. TorchCodec's image decoders (0.16 and later) succeed torchvision.io's,
# deprecated since torchvision 0.29, with the same libjpeg-turbo and nvJPEG underneath. A
# TorchCodec release runs only beside the torch it was built for, while torchvision always
# matches its torch: where TorchCodec does not load, or cannot decode on the device,
# torchvision.io decodes.
JPEG_DECODERS = {"torchcodec": _torchcodec, "torchvision": _torchvision}
_chosen: dict[str, str] = {}


def jpeg_decoder(device: torch.device) -> str:
    """The name of the first of ``JPEG_DECODERS`` that decodes a JPEG on ``device``, chosen once
    per device in this process. Raises ``RuntimeError`` with each one's reason if none does."""
    key = str(device)
    if key not in _chosen:
        buf = io.BytesIO()
        PILImage.new("RGB", (16, 16), (128, 64, 32)).save(buf, format="JPEG")
        reasons = []
        for name, decode in JPEG_DECODERS.items():
            try:
                decode([buf.getvalue()], device)
            except Exception as err:  # noqa: BLE001 -- a library that does not load: the next
                reasons.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0]}")
                continue
            _chosen[key] = name
            if reasons:  # a better decoder is installed but unusable here: say why
                log.warning("JPEGs on %s: decoded with %s (%s)", key, name, "; ".join(reasons))
            break
        else:
            raise RuntimeError("; ".join(reasons))
    return _chosen[key]


def _decode_jpegs(datas: list[bytes], device: torch.device) -> list[torch.Tensor | str]:
    """RGB uint8 ``(3, H, W)`` tensors on ``device`` (nvJPEG on CUDA, in one call), or for a
    JPEG that does not decode, the reason."""
    decode = JPEG_DECODERS[jpeg_decoder(device)]
    try:
        return decode(datas, device)
    except RuntimeError:  # one bad JPEG fails the call: find which, decode the rest
        out: list[torch.Tensor | str] = []
        for data in datas:
            try:
                out.append(decode([data], device)[0])
            except RuntimeError as err:
                out.append(f"not a decodable image ({type(err).__name__})")
        return out


def upload_pixels(
    m, items: list[Upload], device: torch.device
) -> tuple[torch.Tensor, list[str | None]]:
    """An image model's uint8 input batch on ``device``, and per item the reason it could not be
    decoded (``None`` where it was; its row is then zeros). Decoded images go through the
    training preprocessing's ``to_uint8``; JPEG bytes are decoded on the device and converted
    and resized there the same way (grey as PIL's ``convert("L")``, antialiased bilinear as
    PIL's ``resize``): within one grey level of the CPU path."""
    from torchvision.transforms.v2.functional import InterpolationMode, resize

    p = m.preprocess
    errors: list[str | None] = [None] * len(items)
    jpegs = [i for i, x in enumerate(items) if isinstance(x, Jpeg)]
    if not jpegs:  # the uint8 pixels cross to the device: a quarter of a float batch's bytes
        return p.to_uint8(items).to(device), errors
    (h, w), c = p.size, p.channels
    out = torch.zeros((len(items), c, h, w), dtype=torch.uint8, device=device)
    pil = [i for i, x in enumerate(items) if not isinstance(x, Jpeg)]
    if pil:
        out[pil] = p.to_uint8([items[i] for i in pil]).to(device)
    for i, img in zip(jpegs, _decode_jpegs([items[i].data for i in jpegs], device), strict=True):
        if isinstance(img, str):
            errors[i] = img
            continue
        img = _grey(img) if c == 1 else img
        if img.shape[1:] != (h, w):
            img = resize(img, [h, w], InterpolationMode.BILINEAR, antialias=True)
        out[i] = img
    return out, errors


def pixels(m, images: list[Upload], device: torch.device) -> torch.Tensor:
    """An image model's normalised input batch on ``device``, normalised there; on the CPU,
    for decoded images, it equals ``m.preprocess(images)``. Raises ``InputError`` for a JPEG
    that does not decode (the batched endpoints answer per image instead)."""
    x, errors = upload_pixels(m, images, device)
    bad = next((e for e in errors if e), None)
    if bad:
        raise InputError(f"image: {bad}")
    return m.preprocess.normalize(x)
