"""Encoded messages and their batches: token ids, bags of words, images, and the index of the
message each item belongs to."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from sightline.data.decode import WHOLE, resize
from sightline.models.spam.text import Words


@dataclass
class Example:
    """One encoded message."""

    ids: list[int]  # the first max_tokens word ids (the Transformer's input)
    images: torch.Tensor  # (k, 1, S, S), k may be 0
    label: float = 0.0
    words: list[int] = field(default_factory=list)  # every distinct word id of the message
    tf: list[float] = field(default_factory=list)  # their sublinear term frequencies
    grams: list[int] = field(default_factory=list)  # hashed character n-gram buckets
    gram_tf: list[float] = field(default_factory=list)
    image_text: Words | None = None  # the words read in the images; None: not read (no images)
    seen: Words | None = None  # subject, body and the words read in the images; None: no such words


def _owners(sizes) -> torch.Tensor:
    """``[2, 0, 1]`` -> ``[0, 0, 2]``: for each item, the index of the group it belongs to."""
    return torch.cat(
        [
            torch.zeros(0, dtype=torch.long),
            *(torch.full((n,), i, dtype=torch.long) for i, n in enumerate(sizes)),
        ]
    )


def _collate_words(items: list[Words], prefix: str = "") -> dict[str, torch.Tensor]:
    """Padded ids ``(N, L >= 1)``; the bags flattened, with the index of their item."""
    ids = torch.zeros(len(items), max([1, *(len(w.ids) for w in items)]), dtype=torch.long)
    for i, w in enumerate(items):
        ids[i, : len(w.ids)] = torch.tensor(w.ids, dtype=torch.long)
    return {
        f"{prefix}ids": ids,
        f"{prefix}words": torch.tensor([x for w in items for x in w.words], dtype=torch.long),
        f"{prefix}tf": torch.tensor([x for w in items for x in w.tf], dtype=torch.float32),
        f"{prefix}word_owner": _owners(len(w.words) for w in items),
        f"{prefix}grams": torch.tensor([x for w in items for x in w.grams], dtype=torch.long),
        f"{prefix}gram_tf": torch.tensor(
            [x for w in items for x in w.gram_tf], dtype=torch.float32
        ),
        f"{prefix}gram_owner": _owners(len(w.grams) for w in items),
    }


def collate(examples: list[Example]) -> dict[str, torch.Tensor]:
    """Pad token ids; flatten the bags of words and stack every image, each with the index of
    the message it belongs to; the words read in the images (``image_text``) and the message
    read with them (``seen``) likewise, with ``image_text_owner`` / ``seen_owner`` the message
    of each."""
    read = [i for i, e in enumerate(examples) if e.image_text is not None]
    seen = [i for i, e in enumerate(examples) if e.seen is not None]
    return {
        **_collate_words([Words(e.ids, e.words, e.tf, e.grams, e.gram_tf) for e in examples]),
        **_collate_words([examples[i].image_text for i in read], "image_text_"),
        "image_text_owner": torch.tensor(read, dtype=torch.long),
        **_collate_words([examples[i].seen for i in seen], "seen_"),
        "seen_owner": torch.tensor(seen, dtype=torch.long),
        "images": torch.cat([e.images for e in examples]),
        "owner": _owners(len(e.images) for e in examples),
        "labels": torch.tensor([e.label for e in examples]),
    }


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@dataclass
class Reading:
    """What the branches make of a batch, each ``(B, D)`` vector or ``(B,)`` vote once.

    ``text``: the subject and body alone; ``text_with_images``: the same read with the words in
    the images (``text_reads_images``); ``image``: the image branch; ``vote_*``: the wide part
    on the text's words, the images' words, and both together.
    """

    text: torch.Tensor
    text_with_images: torch.Tensor
    image: torch.Tensor
    has_image: torch.Tensor
    vote_text: torch.Tensor
    vote_image: torch.Tensor
    vote_both: torch.Tensor

    def logits(self, module, use_text: bool = True, use_image: bool = True) -> torch.Tensor:
        """The logit with a branch absent or not: both read the message's words together; one
        alone reads its own; a missing branch is its learned "absent" vector and no vote."""
        if use_text and use_image:
            return module.fuse(self.text_with_images, self.image) + self.vote_both
        b = self.text.shape[0]
        if use_text:
            return module.fuse(self.text, module.no_image.expand(b, -1)) + self.vote_text
        return module.fuse(module.no_text.expand(b, -1), self.image) + self.vote_image


def square_top(image: Image.Image, s: int) -> torch.Tensor:
    """Any PIL image -> ``(1, s, s)`` in [-1, 1]: grey, scaled to the width ``s`` (aspect kept),
    pasted at the top of a white square (a taller picture is cut at the bottom)."""
    im = image.convert("L")
    h = max(1, round(im.height * s / im.width))  # the height once scaled to the width s
    kept = min(h, s)
    if h <= WHOLE * s:  # the whole picture, cut: the pixels training has always used
        im = resize(im, (s, h), Image.BILINEAR).crop((0, 0, s, kept))
    else:  # only the rows that stay (PIL's box), so 1 x 100,000 costs s x s, not s x 6.4 M
        im = resize(im, (s, kept), Image.BILINEAR, box=(0, 0, im.width, kept * im.height / h))
    canvas = Image.new("L", (s, s), 255)
    canvas.paste(im, (0, 0))
    x = torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(1, s, s)
    return x.float().div(127.5).sub(1.0)
