"""Encoded messages and their batches: token ids, bags of words, images, and the index of the
message each item belongs to."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
