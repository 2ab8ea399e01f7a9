"""Text in pictures: Tesseract OCR, the way a filter reads image spam.

The ``tesseract`` command (Debian/Ubuntu ``apt install tesseract-ocr``, macOS ``brew install
tesseract``) reads a PNG from stdin. ``prepare@spam`` reads every image once and stores the text
with the message; serving reads the uploaded images with the same function, so training and
serving see the same words for the same pixels.

Settings: page segmentation mode 6 (one block of text: rendered spam is a block of lines; it
read 86% of the words of 24 synthetic renders, mode 3 read 80%), English, one thread per call
(``OMP_THREAD_LIMIT=1``: calls run side by side instead, and the output does not depend on the
thread count).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from PIL import Image

from sightline.errors import DataError
from sightline.progress import Progress

COMMAND = "tesseract"
ARGS = ("stdin", "stdout", "--psm", "6", "-l", "eng")
MAX_SIDE = 2000  # larger pictures are scaled down first: the time grows with the pixels
TIMEOUT_S = 60.0


class OcrUnavailable(DataError):
    """The ``tesseract`` command is not installed."""


@cache
def tesseract() -> str | None:
    """The path of the ``tesseract`` command, or ``None``."""
    return shutil.which(COMMAND)


def available() -> bool:
    return tesseract() is not None


@cache
def version() -> str:
    """``"tesseract 5.3.0"``: the first line of ``tesseract --version`` (``""`` if missing)."""
    if not available():
        return ""
    done = subprocess.run([tesseract(), "--version"], capture_output=True, check=False)
    return (done.stdout or done.stderr).decode(errors="replace").strip().split("\n")[0]


def read_text(image: Image.Image, timeout: float = TIMEOUT_S) -> str:
    """The words Tesseract reads in ``image``, whitespace collapsed to single spaces; ``""`` for
    a picture without text, one Tesseract fails on, or one it cannot read within ``timeout``.

    Raises ``OcrUnavailable`` when the ``tesseract`` command is missing.
    """
    exe = tesseract()
    if exe is None:
        raise OcrUnavailable(
            "reading text in images needs the tesseract command: apt install tesseract-ocr (or brew install tesseract)"
        )
    im = image.convert("L")
    if max(im.size) > MAX_SIDE:
        scale = MAX_SIDE / max(im.size)
        im = im.resize(
            (max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR
        )
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    try:
        done = subprocess.run(
            [exe, *ARGS],
            input=buf.getvalue(),
            capture_output=True,
            timeout=timeout,
            env={**os.environ, "OMP_THREAD_LIMIT": "1"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ""
    if done.returncode != 0:
        return ""
    return " ".join(done.stdout.decode("utf-8", errors="replace").split())


def read_texts(
    images: list[Image.Image],
    workers: int | None = None,
    deadline: float | None = None,
    progress: Progress | None = None,
) -> list[str]:
    """``read_text`` of each image, ``workers`` Tesseract processes at a time (default: the
    CPUs this process may use). ``deadline`` (a ``time.monotonic()`` value) bounds the whole
    call: a Tesseract process still running then is killed, and images not started read ``""``.
    ``progress`` is told of each image read.
    """
    if not images:
        return []
    if workers is None:
        workers = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )

    def one(im: Image.Image) -> str:
        if deadline is None:
            return read_text(im)
        left = deadline - time.monotonic()
        return read_text(im, timeout=left) if left > 0 else ""

    texts = []
    if workers <= 1 or len(images) == 1:
        results = map(one, images)
    else:
        pool = ThreadPoolExecutor(workers)
        results = pool.map(one, images)
    try:
        for text in results:
            texts.append(text)
            if progress is not None:
                progress.update()
    finally:
        if workers > 1 and len(images) > 1:
            pool.shutdown()
    return texts


def read_texts_or_none(images: list[Image.Image]) -> list[str]:
    """``read_texts``; without the tesseract command, no words (warned once): a model that reads
    the words in images still runs, reading none."""
    if not available():
        _warn_no_ocr()
        return ["" for _ in images]
    return read_texts(images)


@cache
def _warn_no_ocr() -> None:
    import warnings

    warnings.warn(
        "spam: the tesseract command is missing, so the words in images are not read (apt install tesseract-ocr)",
        RuntimeWarning,
        stacklevel=3,
    )
