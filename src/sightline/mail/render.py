"""Synthetic image spam: text rendered into a picture, as spammers do to get past text filters.

The styles vary (DejaVu sans/serif/mono faces in regular, bold and oblique, sizes, widths,
light or dark backgrounds, coloured text, pixel noise, stray lines) and are drawn the same way
for ham and spam, so only the rendered words can tell them apart.
"""

from __future__ import annotations

import textwrap
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
)
MAX_HEIGHT = 1024


@cache
def font_paths() -> tuple[str, ...]:
    """The TrueType faces (matplotlib ships them, so every install has the same ones)."""
    import matplotlib

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return tuple(str(root / f) for f in FONT_FILES if (root / f).is_file())


@cache
def _font(path: str | None, size: int) -> ImageFont.ImageFont:
    if path is None:
        return ImageFont.load_default(size)
    return ImageFont.truetype(
        path, size, layout_engine=ImageFont.Layout.BASIC
    )  # no shaping library needed


def render_text(text: str, rng: np.random.Generator) -> Image.Image:
    """Draw ``text`` (wrapped) in a random style; an RGB image at most ``MAX_HEIGHT`` tall."""
    faces = font_paths() or (None,)
    face = faces[int(rng.integers(len(faces)))]
    size = int(rng.integers(11, 23))
    font = _font(face, size)
    width = int(rng.integers(300, 601))
    char_w = max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz") / 26)
    columns = max(10, int((width - 20) / char_w))
    text = "".join(c if c.isprintable() or c == "\n" else " " for c in text)
    lines = [w for para in text.split("\n") for w in (textwrap.wrap(para, columns) or [""])]
    line_h = int(size * 1.35)
    lines = lines[: max(1, (MAX_HEIGHT - 20) // line_h)]
    height = min(MAX_HEIGHT, 20 + line_h * len(lines))
    dark = rng.random() < 0.2
    bg = rng.integers(0, 60, 3) if dark else rng.integers(190, 256, 3)
    fg = rng.integers(190, 256, 3) if dark else rng.integers(0, 110, 3)
    if rng.random() < 0.3:  # a loud colour for the text
        fg = np.array([rng.integers(150, 256), rng.integers(0, 80), rng.integers(0, 80)])[
            rng.permutation(3)
        ]
    im = Image.new("RGB", (width, height), tuple(int(v) for v in bg))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(0, 4))):  # stray lines
        xy = [int(v) for v in rng.integers(0, [width, height, width, height])]
        draw.line(
            xy, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 3))
        )
    x0 = int(rng.integers(6, 14))
    for i, line in enumerate(lines):
        draw.text((x0, 10 + i * line_h), line, font=font, fill=tuple(int(v) for v in fg))
    sigma = float(rng.uniform(0, 14))
    if sigma > 1:
        noisy = np.asarray(im, dtype=np.float32) + rng.normal(0, sigma, (height, width, 1))
        im = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return im


def snap_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen ``[start, end)`` to whole words."""
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return start, end


def hide_in_image(
    text: str, rng: np.random.Generator, min_share: float, max_share: float, max_chars: int
) -> tuple[str, str]:
    """Pick a span of whole words, ``min_share..max_share`` of the text and at most
    ``max_chars`` long; return ``(text without it, the span)``."""
    n = len(text)
    length = min(max_chars, max(1, int(round(n * rng.uniform(min_share, max_share)))))
    start = int(rng.integers(0, n - length + 1))
    start, end = snap_span(text, start, start + length)
    return (text[:start].rstrip() + "\n" + text[end:].lstrip()).strip(), text[start:end].strip()
