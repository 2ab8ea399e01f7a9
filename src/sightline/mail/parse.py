"""Raw RFC 822 bytes -> what a recipient's filter sees: the subject, the body as text, images.

Only the ``Subject`` header is read. Headers that relays and filters add (``Received``,
``X-Spam-*``, ...) would leak how the message was labelled, so none of them reach the model.

- ``text/plain`` parts are decoded with their charset (an unknown charset falls back to UTF-8
  with replacement characters and is counted);
- ``text/html`` parts become text marked ``[html]``: scripts and styles dropped, block tags
  become line breaks, an ``<img>`` keeps its alt text, a link keeps its text plus a token for
  its domain;
- URLs anywhere become ``[url example.com]`` and addresses ``[email example.com]``;
- ``image/*`` parts and inline ``data:image/...;base64`` images are decoded; corrupt,
  oversized and 1x1 tracking images are dropped and counted, never fatal.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from html import unescape
from html.parser import HTMLParser

from PIL import Image

from sightline.data.decode import MAX_PIXELS, load_image, open_image
from sightline.errors import BudgetError, InputError

MAX_IMAGE_BYTES = 2 * 1024 * 1024  # per attached image; larger ones are dropped
MAX_IMAGES = 8  # per message; further images are dropped
MAX_TEXT_CHARS = 100_000  # body text kept per message
TRACKING_SIDE = 2  # images whose shorter side is at most this many pixels are web bugs

URL = re.compile(r"(?:https?://|ftp://|www\.)([\w.-]+)[^\s<>\"')\]]*", re.IGNORECASE)
ADDRESS = re.compile(r"\b[\w.+-]+@([\w-]+(?:\.[\w-]+)+)\b")
BLANKS = re.compile(r"[ \t\r\f\v]+")
LINES = re.compile(r"\n\s*\n\s*(?:\n\s*)+")
HTML_MARK = "[html]"  # starts the text of an HTML part: the format is something a filter sees
BLOCK_TAGS = {
    "p",
    "br",
    "div",
    "tr",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "hr",
    "blockquote",
    "pre",
    "title",
}
HIDDEN_TAGS = {"script", "style", "head"}


class NotAnEmail(InputError):
    """The bytes are not an RFC 822 message."""


@dataclass
class ParsedEmail:
    """A message as the model sees it; ``issues`` counts what was dropped or repaired."""

    subject: str
    text: str
    images: list[Image.Image] = field(default_factory=list)
    issues: Counter = field(default_factory=Counter)

    @property
    def empty(self) -> bool:
        return not (self.subject.strip() or self.text.strip() or self.images)


def reduce_urls(text: str) -> str:
    """Replace URLs by ``[url <domain>]`` and addresses by ``[email <domain>]``."""
    text = URL.sub(lambda m: f" [url {m.group(1).lower().removeprefix('www.').rstrip('.')}] ", text)
    return ADDRESS.sub(lambda m: f" [email {m.group(1).lower()}] ", text)


def tidy(text: str) -> str:
    """Collapse runs of blanks and of empty lines."""
    lines = (BLANKS.sub(" ", line).strip() for line in text.replace("\r\n", "\n").split("\n"))
    return LINES.sub("\n\n", "\n".join(lines)).strip()


def decode_image(
    data: bytes, issues: Counter, max_bytes: int = MAX_IMAGE_BYTES
) -> Image.Image | None:
    """Bytes -> an RGB image, or ``None`` (counted in ``issues``) when it is too large, does not
    decode, or is a tracking pixel."""
    if len(data) > max_bytes:
        issues["image_too_large"] += 1
        return None
    try:
        im = load_image(open_image(data, MAX_PIXELS))
    except BudgetError:
        issues["image_too_large"] += 1
        return None
    except InputError:
        issues["corrupt_image"] += 1
        return None
    if min(im.size) <= TRACKING_SIDE:
        issues["tracking_image"] += 1
        return None
    if im.mode in (
        "RGBA",
        "LA",
        "P",
    ):  # composite transparency onto white, as a mail client shows it
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(canvas, rgba)
    return im.convert("RGB")


class _HTMLText(HTMLParser):
    """HTML -> text with alt texts, link domains and inline data-URI images."""

    def __init__(self, issues: Counter) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.payloads: list[bytes] = []  # inline images, decoded by the caller
        self.hidden = 0
        self.issues = issues

    def handle_starttag(self, tag: str, attrs) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag in HIDDEN_TAGS:
            self.hidden += 1
        elif tag in BLOCK_TAGS:
            self.parts.append("\n")
        elif tag == "img":
            if a.get("alt"):
                self.parts.append(f" {a['alt']} ")
            src = a.get("src", "")
            if src.startswith("data:image/") and ";base64," in src:
                try:
                    data = base64.b64decode(src.split(",", 1)[1], validate=False)
                except (binascii.Error, ValueError):
                    self.issues["corrupt_image"] += 1
                else:
                    self.payloads.append(data)
        elif tag == "a" and a.get("href", "").lower().startswith(("http", "www", "ftp")):
            self.parts.append(f" {a['href']} ")

    def handle_endtag(self, tag: str) -> None:
        if tag in HIDDEN_TAGS:
            self.hidden = max(0, self.hidden - 1)
        elif tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def _html_parts(html: str, issues: Counter) -> tuple[str, list[bytes]]:
    """Visible text of an HTML body and the bytes of its inline data-URI images."""
    parser = _HTMLText(issues)
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # pathological markup: keep what was read
        parser.issues["malformed_html"] += 1
    return unescape("".join(parser.parts)), parser.payloads


def html_to_text(html: str, issues: Counter | None = None) -> tuple[str, list[Image.Image]]:
    """Visible text of an HTML body and its inline data-URI images."""
    issues = issues if issues is not None else Counter()
    text, payloads = _html_parts(html, issues)
    return text, [im for data in payloads if (im := decode_image(data, issues)) is not None]


def _part_text(part, issues: Counter) -> str:
    try:
        return part.get_content()
    except (LookupError, UnicodeError):  # unknown or wrong charset: decode leniently
        issues["unknown_charset"] += 1
    except Exception:  # noqa: BLE001 - the email package raises assorted errors on broken parts
        issues["malformed_part"] += 1
    payload = part.get_payload(decode=True) or b""
    return payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else str(payload)


def _collect(
    part, texts: list[str], images: list[bytes], issues: Counter, max_chars: int | None = None
) -> None:
    """Depth-first over the MIME tree; of a ``multipart/alternative`` only the plain text is
    read when it has one (the HTML twin says the same)."""
    if part.is_multipart():
        children = list(part.iter_parts())
        if part.get_content_subtype() == "alternative":
            plain = [c for c in children if c.get_content_type() == "text/plain"]
            if plain:
                children = plain + [
                    c for c in children if c.get_content_maintype() not in ("text", "multipart")
                ]
        for child in children:
            _collect(child, texts, images, issues, max_chars)
        return
    ctype = part.get_content_type()
    if ctype in ("text/plain", "text/html"):
        raw_text = _part_text(part, issues)
        if max_chars is not None and len(raw_text) > max_chars:
            issues["text_truncated"] += 1
            raw_text = raw_text[:max_chars]
    if ctype == "text/plain":
        texts.append(raw_text)
    elif ctype == "text/html":
        text, inline = _html_parts(raw_text, issues)
        texts.append(f"{HTML_MARK} {text}")
        images.extend(inline)
    elif part.get_content_maintype() == "image":
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes) or not data:
            issues["corrupt_image"] += 1
        else:
            images.append(data)


def _looks_like_email(msg, raw: bytes) -> bool:
    if b"\x00" in raw[:4096]:
        return False
    return len(msg.keys()) > 0


def check_header_lines(raw: bytes, limit: int) -> None:
    """Refuse (``BudgetError``) a message whose header section has a line over ``limit`` bytes,
    before the email package spends time on it (its header parsing is slow on long lines)."""
    end = min((i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0), default=len(raw))
    longest = max((len(line) for line in raw[:end].split(b"\n")), default=0)
    if longest > limit:
        raise BudgetError(f"email: a header line is {longest} bytes; the limit is {limit}")


BOUNDARY = re.compile(rb'boundary\s*=\s*"?([^";\r\n]{1,200})', re.IGNORECASE)


def count_parts(raw: bytes) -> int:
    """How many MIME parts the message declares, counted on the raw bytes (delimiter lines of
    every boundary it names) without parsing it: the email package takes seconds per 10,000."""
    boundaries = set(BOUNDARY.findall(raw))
    return sum(raw.count(b"\n--" + b.strip()) for b in boundaries)


def _decode_within(
    payloads: list[bytes], issues: Counter, max_image_bytes: int, max_images: int, max_pixels: int
) -> list[Image.Image]:
    """Decode the first ``max_images`` usable images whose headers fit, together, in
    ``max_pixels``; the rest are counted and never decoded."""
    images: list[Image.Image] = []
    used = 0
    for i, data in enumerate(payloads):
        if len(images) == max_images:
            issues["images_dropped"] += len(payloads) - i
            break
        try:
            with Image.open(io.BytesIO(data)) as head:
                pixels = head.width * head.height
        except Exception:  # noqa: BLE001 - PIL raises many types for corrupt data
            issues["corrupt_image"] += 1
            continue
        if used + pixels > max_pixels:
            issues["images_over_budget"] += 1
            continue
        if (im := decode_image(data, issues, max_image_bytes)) is not None:
            images.append(im)
            used += pixels
    return images


def parse_email(
    raw: bytes,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    max_images: int = MAX_IMAGES,
    max_pixels: int | None = None,
    max_header_line: int | None = None,
    max_part_chars: int | None = None,
    max_parts: int | None = None,
) -> ParsedEmail:
    """Parse raw message bytes.

    Args:
        raw: the message, as received.
        max_image_bytes: larger image attachments are dropped (counted).
        max_images: images kept per message; the rest are dropped (counted).
        max_pixels: a budget for serving: only images whose headers fit in it together are
            decoded, and decoding stops at ``max_images``; ``None`` decodes every image.
        max_header_line: a budget for serving: a longer header line is a ``BudgetError``.
        max_part_chars: a budget for serving: each text part is cut to this many characters
            before its HTML is parsed (counted as ``text_truncated``).
        max_parts: a budget for serving: a message declaring more MIME parts is a
            ``BudgetError``, before it is parsed.

    Raises:
        NotAnEmail: the bytes have no header section (binary data, plain text, an image...).
        BudgetError: over ``max_header_line`` or ``max_parts``.
    """
    if not isinstance(raw, bytes | bytearray) or not raw.strip():
        raise NotAnEmail("empty input: expected the raw bytes of an RFC 822 email")
    if raw.startswith(b"From ") and b"\n" in raw:  # mbox "From " separator line
        raw = raw.split(b"\n", 1)[1]
    if max_header_line is not None:
        check_header_lines(bytes(raw), max_header_line)
    if max_parts is not None and (parts := count_parts(bytes(raw))) > max_parts:
        raise BudgetError(f"email: {parts} MIME parts; the limit is {max_parts}")
    msg = email.message_from_bytes(bytes(raw), policy=email.policy.default)
    if not _looks_like_email(msg, raw):
        raise NotAnEmail("not an email: no RFC 822 header fields found")
    issues: Counter = Counter()
    if msg.defects:
        issues["malformed"] += 1
    try:
        subject = str(msg.get("subject", "") or "")
    except Exception:  # noqa: BLE001 - undecodable encoded-words
        issues["malformed_subject"] += 1
        subject = ""
    texts: list[str] = []
    payloads: list[bytes] = []
    _collect(msg, texts, payloads, issues, max_part_chars)
    if max_pixels is not None:
        images = _decode_within(payloads, issues, max_image_bytes, max_images, max_pixels)
    else:
        images = [
            im
            for data in payloads
            if (im := decode_image(data, issues, max_image_bytes)) is not None
        ]
        if len(images) > max_images:
            issues["images_dropped"] += len(images) - max_images
            images = images[:max_images]
    text = tidy(reduce_urls("\n\n".join(t for t in texts if t)))[:MAX_TEXT_CHARS]
    return ParsedEmail(tidy(reduce_urls(subject)), text, images, issues)
