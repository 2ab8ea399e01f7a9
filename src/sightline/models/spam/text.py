"""What the text branch reads: the word tokenizer fitted on the training split, inverse
document frequencies, bags of words and hashed character n-grams."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

SPECIALS = ["[PAD]", "[UNK]", "[SEP]"]


def fit_tokenizer(texts, vocab_size: int, min_count: int = 2) -> str:
    """A lower-casing word-level tokenizer (``tokenizers``) over ``texts``, as its JSON.

    The vocabulary is the ``vocab_size - 3`` most frequent words (ties broken alphabetically,
    so the same texts always give the same tokenizer; the library's trainers break ties in hash
    order), plus ``[PAD]`` = 0, ``[UNK]`` and ``[SEP]``.
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for text in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    for special in SPECIALS:
        counts.pop(special.lower(), None)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words[: vocab_size - len(SPECIALS)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.add_special_tokens(SPECIALS)
    tok.normalizer, tok.pre_tokenizer = normalizer, pre
    return tok.to_str()


def fit_idf(texts, tokenizer: str) -> list[float]:
    """Smoothed inverse document frequency ``log((1 + N) / (1 + df))`` of every vocabulary id
    over ``texts`` (the training split); the special tokens get 0."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer)
    idf = smoothed_idf((tok.encode(text).ids for text in texts), tok.get_vocab_size())
    idf[: len(SPECIALS)] = 0.0
    return [round(float(v), 6) for v in idf]


def smoothed_idf(docs, size: int) -> torch.Tensor:
    """``log((1 + N) / (1 + df))`` of every id in ``range(size)`` over ``docs`` (id lists)."""
    df = torch.zeros(size, dtype=torch.float64)
    n = 0
    for ids in docs:
        df[torch.tensor(sorted(set(ids)), dtype=torch.long)] += 1
        n += 1
    return torch.log((1.0 + n) / (1.0 + df))


def bag_of_words(ids: list[int]) -> tuple[list[int], list[float]]:
    """``(distinct ids, 1 + log(count))``: the sublinear term frequencies of a message."""
    counts: dict[int, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    words = sorted(counts)
    return words, [1.0 + math.log(counts[w]) for w in words]


GRAM_SIZES = (3, 4, 5)


def char_grams(text: str, buckets: int) -> list[int]:
    """The character 3-, 4- and 5-grams of each lower-cased word padded with a space on both
    sides (scikit-learn's ``char_wb``), hashed into ``buckets`` (CRC-32: the same ids in every
    process). They catch what a word vocabulary fitted on earlier mail misses: new spellings,
    obfuscations (``v1agra``), new names and numbers."""
    import zlib

    out, specials = [], {t.lower() for t in SPECIALS}
    for word in text.lower().split():
        if word in specials:  # the [SEP] between subject and body is no word of the message
            continue
        w = f" {word} ".encode()
        out += [
            zlib.crc32(w[i : i + k]) % buckets for k in GRAM_SIZES for i in range(len(w) - k + 1)
        ]
    return out


def fit_gram_idf(texts, buckets: int) -> list[float]:
    """Smoothed inverse document frequency of every character n-gram bucket over ``texts``."""
    idf = smoothed_idf((char_grams(text, buckets) for text in texts), buckets)
    return [round(float(v), 6) for v in idf]


def message_text(subject: str, body: str) -> str:
    """What the text branch reads: the subject, a separator, the body."""
    return f"{subject} [SEP] {body}"


@dataclass
class Words:
    """Encoded words: the first ``max_tokens`` ids and the bag of all of them; the bag of the
    text's hashed character n-grams (``char_grams``, empty when off)."""

    ids: list[int]
    words: list[int]
    tf: list[float]
    grams: list[int] = field(default_factory=list)
    gram_tf: list[float] = field(default_factory=list)
