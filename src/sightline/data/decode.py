"""Images from bytes and back: header-first opening with a pixel budget (uploads, email
attachments), and uint8 arrays as PIL images."""

from __future__ import annotations

import io
import math
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
        with warnings.catch_warnings():  # the size is checked below, against max_pixels
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise BudgetError(
            f"{what}: over PIL's decompression-bomb limit, far over the {max_pixels}-pixel limit"
        ) from None
    except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise InputError(f"{what}: not a decodable image ({type(err).__name__})") from None
    if img.width * img.height > max_pixels:
        raise BudgetError(
            f"{what}: {img.width}x{img.height} pixels is over the {max_pixels}-pixel limit"
        )
    return img


LONG_SIDE = 1 << 16  # a source side past this is box-averaged down before it is resampled
REDUCING_GAP = 3.0  # PIL's: reduce by integer factors until within 3x of the result
# a model's resize that keeps part of its result (a crop) computes the whole result when that
# is at most WHOLE times the part kept, pixel for pixel as before; beyond, only the part kept
WHOLE = 4


def resize(
    img: Image.Image,
    size: tuple[int, int],
    resample: int = Image.BILINEAR,
    box: tuple[float, float, float, float] | None = None,
) -> Image.Image:
    """PIL's ``img.resize(size, resample, box=box)``, without PIL's worst cases in memory.

    Two costs of a PIL resize grow with the shape of the source, not its pixel count, so a
    small image can cost gigabytes:

    - PIL holds its filter weights per output pixel, about ``2 x support x`` the source side
      long in all; for a side of 16 million pixels, hundreds of megabytes. A source side over
      ``LONG_SIDE`` is first box-averaged by an integer factor (PIL's ``reducing_gap``).
    - PIL resizes rows first, into an image ``size[0]`` wide and as tall as the source: 28 times
      the decoded image for one of 1 x 100,000 pixels made 28 x 28. Such a source is resized
      columns first, so no intermediate is larger than the source or the result.

    Every other resize is PIL's own call, pixel for pixel.

    Args:
        img: a decoded image.
        size: ``(width, height)`` of the result.
        resample: a PIL filter.
        box: the source region ``(left, top, right, bottom)``, as PIL's (pixels just outside it
            weigh in); the whole image if ``None``.

    Returns:
        The resized image.
    """
    box = box or (0.0, 0.0, float(img.width), float(img.height))
    w, h = size
    if max(box[2] - box[0], box[3] - box[1]) > LONG_SIDE:
        return img.resize(size, resample, box=box, reducing_gap=REDUCING_GAP)
    rows = math.ceil(box[3]) - math.floor(box[1])  # the source rows the first pass widens
    if w * rows <= max(img.width * img.height, w * h) or h >= rows:
        return img.resize(size, resample, box=box)
    tall = img.resize((img.width, h), resample, box=(0, box[1], img.width, box[3]))  # (W, h)
    return tall.resize((w, h), resample, box=(box[0], 0, box[2], h))


def resize_centre_crop(img: Image.Image, side: int, resample: int) -> Image.Image:
    """torchvision's ``Resize(side)`` (the shorter side to ``side``, the aspect kept) then
    ``CenterCrop(side)``, without building the whole resized picture when it is large.

    The two steps first build the whole resized picture: for an image of 1 x 400,000 pixels
    and ``side`` 32, one of 32 x 12,800,000. Where that picture would be over ``WHOLE`` times
    the kept square, only the square is computed, as one resize of the region the crop keeps
    (PIL weighs the source pixels just outside the region in, as it did before the crop; the
    pixels differ from the two steps' by the rounding of the region's bounds, a grey level or
    so). Any other image is returned as it is: the two steps then give exactly their pixels.
    """
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(side * long / short)  # torchvision's arithmetic, so the crop is its crop
    if new_long <= WHOLE * side:
        return img
    new_w, new_h = (side, new_long) if w <= h else (new_long, side)
    top, left = int(round((new_h - side) / 2.0)), int(round((new_w - side) / 2.0))
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + side) * sx, (top + side) * sy)
    return resize(img, (side, side), resample, box=box)


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
