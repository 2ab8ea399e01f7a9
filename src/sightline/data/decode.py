"""Images from bytes and back: header-first opening with a pixel budget (uploads, email
attachments), and uint8 arrays as PIL images."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from sightline.errors import BudgetError, InputError


def to_pil(array: np.ndarray) -> Image.Image:
    """uint8 ``(C, H, W)`` -> a PIL image (grey or RGB): the inverse of the arrays ``prepare``
    stores, for pictures, the clip index and generated samples."""
    return Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))


MAX_PIXELS = 4096 * 4096  # one image's decompression-bomb guard; the default request budget too


def open_image(data: bytes, max_pixels: int = MAX_PIXELS, what: str = "image") -> Image.Image:
    """Bytes -> an opened PIL image, only its header read, so its size is known before any
    decoding. ``InputError`` naming ``what`` when it is not an image; ``BudgetError`` when it
    has more than ``max_pixels`` pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise InputError(f"{what}: not a decodable image ({type(err).__name__})") from None
    if img.width * img.height > max_pixels:
        raise BudgetError(
            f"{what}: {img.width}x{img.height} pixels is over the {max_pixels}-pixel limit"
        )
    return img


def load_image(img: Image.Image, what: str = "image") -> Image.Image:
    """Decode an opened image in full; ``InputError`` when the data is corrupt or truncated."""
    try:
        img.load()
    except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise InputError(f"{what}: not a decodable image ({type(err).__name__})") from None
    return img


def on_white(img: Image.Image) -> Image.Image:
    """An RGB image; a transparent one (RGBA, LA, or a palette with transparency) is
    alpha-composited onto white first, as the emoji are in ``prepare@emoji``. A plain
    ``convert("RGB")`` would give transparent pixels the colour stored under them (often
    black)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")
