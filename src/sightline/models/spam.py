"""``spam``: a multimodal email classifier. Raw email in, calibrated spam probability out.

- Text branch: a word-level tokenizer fitted on the training split only (``tokenizers``), then
  two readings of the words, concatenated and projected: token + position embeddings through a
  small pre-norm Transformer encoder over the first ``max_tokens`` (masked mean and max
  pooling), and a bag of every word of the message (an ``EmbeddingBag`` weighted by sublinear
  term frequency x inverse document frequency of the training split, L2-normalised per
  message). The bag sees text past the Transformer's window and carries over between
  collections better; it has its own learning rate and weight decay.
- Image branch: a small CNN over each of the message's 0..N images (grey, width-fitted onto a
  square), averaged; plus (``image_text``) what the images say: the words OCR reads in them
  (``sightline.mail.ocr``, Tesseract; cached by ``prepare@spam``, read live when serving)
  through the text branch's encoder and a linear map of their own. A learned "no image" vector
  stands in when there is no image. A CNN trained on spam/ham labels alone does not learn to read
  the words of image spam; OCR does, and keeps the branch a reading of the images only, so the
  text-only and image-only ablations still mean what they say.
- Reading the images' words with the text (``text_reads_images``): when both branches are
  used, the text branch reads the subject, the body and then the words OCR found in the images,
  as the recipient reads the message. A word means the same in a picture as in the body, and
  this way the text branch's training on every message carries over to the words of the
  images; the text-only ablation (no images) reads the subject and body alone.
- Wide part (``wide``): a linear TF-IDF model over the words, added to the logit: one learned
  vote per vocabulary word, the same whether the word is in the message's text or read in its
  images. It reads the words of the branches in use: the text's, the images', or both as one
  bag. A word-level logistic regression ranks the later collection better than the deep
  branches trained on the earlier one's 345 spam; the deep part adds what the pixels and the
  word order say. It has its own learning rate (``bag_lr_scale``) and no weight decay.
- Fusion: the two vectors are concatenated and a dense head gives one logit. Each branch is
  also trained alone through the same head (the other replaced by its learned "absent"
  vector, an extra loss term), and modality dropout blanks a branch of the fused input now
  and then, so each branch works alone: that is how the text-only and image-only ablations
  are scored.
- Calibration: after every validation epoch a temperature is fitted on the validation logits
  and the decision threshold is set where at most ``max_ham_fpr`` of the validation ham is
  called spam (the operating point of a mail filter: its false-positive rate). Both are
  buffers, so each checkpoint carries its own.
- The checkpoint kept is the last epoch's (the cosine schedule has ended): the earlier
  collection's validation split (49 spam) separates within a few epochs, after which its loss
  moves within noise and picking by it picks by chance.

``predict_email(raw_bytes)`` and ``predict(subject, body, images)`` share ``encode`` with the
DataModule: training and serving preprocess identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from PIL import Image
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from sightline.config import ModelParams, Strict, TrainerConfig
from sightline.errors import ConfigError, InputError
from sightline.registry import ModelSpec, register_model

SPECIALS = ["[PAD]", "[UNK]", "[SEP]"]


class SpamDataConfig(Strict):
    """``models.spam.data``."""

    dataset: Literal["spam"] = "spam"
    batch_size: int = Field(32, gt=1)
    eval_batch_size: int = Field(128, gt=0)
    num_workers: int = Field(0, ge=0)


class SpamConfig(Strict):
    """``models.spam.model``: every key is a ``SpamModule`` argument (the tokenizer is fitted)."""

    vocab_size: int = Field(8000, ge=16)
    max_tokens: int = Field(256, ge=8, le=4096)
    dim: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    image_size: int = Field(192, ge=16)
    image_channels: list[int] = [16, 32, 64, 128]
    max_images: int = Field(4, ge=1)  # per message; further images are ignored
    modality_dropout: float = Field(0.1, ge=0.0, lt=1.0)  # fused input: a branch read as absent
    branch_loss: float = Field(0.5, ge=0.0)  # weight of each branch's own loss (alone, same head)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # attention weights (slow on CPU)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_steps: int = Field(50, ge=0)
    bag_lr_scale: float = Field(10.0, gt=0.0)  # the word bag's learning rate: lr x this
    bag_weight_decay: float = Field(0.5, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # training targets eps/2, 1 - eps/2
    max_ham_fpr: float = Field(0.01, ge=0.0, lt=1.0)  # threshold: share of val ham flagged
    image_text: bool = True  # the image branch reads the words in the images (OCR)
    wide: bool = True  # + a linear TF-IDF vote per word, shared by the text and the image words
    text_reads_images: bool = True  # fused: the text branch reads the words in the images too
    char_grams: int = Field(0, ge=0)  # wide part: hashed character n-gram buckets (0: words only)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SpamConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not self.image_channels:
            raise ValueError("image_channels must name at least one stage")
        return self


class SpamParams(ModelParams):
    upstream: str = "data/prepared/spam"
    data: SpamDataConfig = SpamDataConfig()
    model: SpamConfig = SpamConfig()
    trainer: TrainerConfig = TrainerConfig()


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
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))  # fmt: skip
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
        out += [zlib.crc32(w[i : i + k]) % buckets for k in GRAM_SIZES for i in range(len(w) - k + 1)]  # fmt: skip
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
    return torch.cat([torch.zeros(0, dtype=torch.long), *(torch.full((n,), i, dtype=torch.long) for i, n in enumerate(sizes))])  # fmt: skip


def _collate_words(items: list[Words], prefix: str = "") -> dict[str, torch.Tensor]:
    """Padded ids ``(N, L >= 1)``; the bags flattened, with the index of their item."""
    ids = torch.zeros(len(items), max([1, *(len(w.ids) for w in items)]), dtype=torch.long)
    for i, w in enumerate(items):
        ids[i, : len(w.ids)] = torch.tensor(w.ids, dtype=torch.long)
    return {
        f"{prefix}ids": ids, f"{prefix}words": torch.tensor([x for w in items for x in w.words], dtype=torch.long),
        f"{prefix}tf": torch.tensor([x for w in items for x in w.tf], dtype=torch.float32),
        f"{prefix}word_owner": _owners(len(w.words) for w in items),
        f"{prefix}grams": torch.tensor([x for w in items for x in w.grams], dtype=torch.long),
        f"{prefix}gram_tf": torch.tensor([x for w in items for x in w.gram_tf], dtype=torch.float32),
        f"{prefix}gram_owner": _owners(len(w.grams) for w in items),
    }  # fmt: skip


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
        "images": torch.cat([e.images for e in examples]), "owner": _owners(len(e.images) for e in examples),
        "labels": torch.tensor([e.label for e in examples]),
    }  # fmt: skip


def read_image_texts(images: list[Image.Image]) -> list[str]:
    """``sightline.mail.ocr.read_texts``; without the tesseract command, no words (warned once)."""
    from sightline.mail import ocr

    if not ocr.available():
        _warn_no_ocr()
        return ["" for _ in images]
    return ocr.read_texts(images)


@cache
def _warn_no_ocr() -> None:
    import warnings

    warnings.warn("spam: the tesseract command is missing, so the words in images are not read (apt install tesseract-ocr)", RuntimeWarning, stacklevel=3)  # fmt: skip


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, low: float = 0.05, high: float = 20.0) -> float:  # fmt: skip
    """The temperature ``T`` in ``[low, high]`` minimising the log loss of
    ``sigmoid(logits / T)``: the best of 801 log-spaced values (steps of 0.75%). A search, not a
    gradient method: on logits that separate the classes perfectly the loss falls towards
    ``T = 0`` and an unbounded optimiser diverges."""
    logits, labels = logits.detach().double().cpu(), labels.double().cpu()
    temps = torch.logspace(math.log10(low), math.log10(high), 801, dtype=torch.float64)
    z = logits.unsqueeze(0) / temps.unsqueeze(1)
    loss = F.binary_cross_entropy_with_logits(z, labels.expand_as(z), reduction="none").mean(1)
    return float(temps[int(loss.argmin())])


def best_threshold(probs: torch.Tensor, labels: torch.Tensor, max_ham_fpr: float = 0.01) -> float:
    """The lowest probability threshold (spam when ``p >= threshold``) that calls at most
    ``max_ham_fpr`` of the ham in ``(probs, labels)`` spam.

    It rests on the ham alone (400 messages in the earlier collection's validation split, not
    its 49 spam) and does not depend on the share of spam, which moves between collections (13%
    in the earlier, 43% in the later). Youden's J, tried first, is flat wherever validation
    separates the classes and its first maximum then sits just under the lowest-scored spam.
    """
    ham = probs.float()[labels == 0].sort(descending=True).values
    if not len(ham):
        return 0.5
    allowed = int(math.floor(max_ham_fpr * len(ham) + 1e-9))  # ham that may score >= threshold
    if allowed >= len(ham):
        return 0.0
    return float(torch.nextafter(ham[allowed], torch.tensor(2.0)).clamp(0.0, 1.0))


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

    def logits(self, module: SpamModule, use_text: bool = True, use_image: bool = True) -> torch.Tensor:  # fmt: skip
        """The logit with a branch absent or not: both read the message's words together; one
        alone reads its own; a missing branch is its learned "absent" vector and no vote."""
        if use_text and use_image:
            return module.fuse(self.text_with_images, self.image) + self.vote_both
        b = self.text.shape[0]
        if use_text:
            return module.fuse(self.text, module.no_image.expand(b, -1)) + self.vote_text
        return module.fuse(module.no_text.expand(b, -1), self.image) + self.vote_image


class ImageBranch(nn.Module):
    """Per image: stride-2 Conv-BN-ReLU + Conv-BN-ReLU stages, global average pool, linear."""

    def __init__(self, channels: list[int], dim: int) -> None:
        super().__init__()
        layers, c_in = [], 1
        for c in channels:
            layers += [
                nn.Conv2d(c_in, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            ]  # fmt: skip
            c_in = c
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(c_in, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(x))


def tfidf_weights(w: torch.Tensor, owner: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(weights, offsets)`` for an ``EmbeddingBag`` over ``n`` flattened bags: the tf x idf
    weights ``w`` scaled to unit L2 norm per bag (``owner``: the bag of each entry)."""
    norm = torch.zeros(n, device=w.device, dtype=w.dtype).index_add_(0, owner, w * w).sqrt()
    offsets = torch.zeros(n, dtype=torch.long, device=w.device)
    offsets[1:] = torch.bincount(owner, minlength=n).cumsum(0)[:-1]
    return w / norm.clamp_min(1e-6)[owner], offsets


class TextBranch(nn.Module):
    """Token + learned position embeddings, pre-norm Transformer encoder, then the masked mean
    and max over tokens; with the TF-IDF-weighted bag of all the words, projected to ``dim``."""

    def __init__(self, vocab: int, max_tokens: int, dim: int, layers: int, heads: int, dropout: float, attention_dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim, mode="sum")
        self.register_buffer("idf", torch.ones(vocab))
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)  # fmt: skip
        layer.self_attn.dropout = attention_dropout  # ``dropout`` stays on the residual paths
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(3 * dim, dim)

    def tfidf(self, tf: torch.Tensor, words: torch.Tensor, owner: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """``(weights, offsets)`` for an ``EmbeddingBag`` over flattened bags: tf x idf, scaled
        to unit L2 norm per message."""
        return tfidf_weights(tf * self.idf[words], owner, n)

    def bag_vectors(self, words: torch.Tensor, tf: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:  # fmt: skip
        """Per message the sum of its words' embeddings, weighted by tf x idf scaled to unit
        L2 norm; zero for a message without words."""
        w, offsets = self.tfidf(tf, words, owner, n)
        return self.bag(words, offsets, per_sample_weights=w)

    def forward(self, ids: torch.Tensor, words: torch.Tensor, tf: torch.Tensor, word_owner: torch.Tensor) -> torch.Tensor:  # fmt: skip
        pad = ids == 0
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        attend = pad.clone()
        attend[:, 0] &= ~pad.all(1)  # a text without words (an image OCR found none in): no NaN
        h = self.norm(self.encoder(h, src_key_padding_mask=attend))
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        mean = (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        peak = h.masked_fill(pad.unsqueeze(-1), float("-inf")).amax(1).nan_to_num(0.0, neginf=0.0)
        bag = self.bag_vectors(words, tf, word_owner, ids.shape[0]).to(h.dtype)
        return self.proj(torch.cat([mean, peak, bag], dim=1))


class SpamModule(L.LightningModule):
    """Text + image branches, concatenated, a dense head: one spam logit per message.

    Args:
        tokenizer: the fitted tokenizer's JSON (saved with the hyperparameters, so a checkpoint
            reloads it exactly).
        class_names: ``["ham", "spam"]``.
        pos_weight: weight of the spam term in the training loss (ham/spam ratio of the data).
        idf: the word bag's inverse document frequencies (``fit_idf``). Not a hyperparameter: it
            is the buffer ``text.idf``, saved with the weights.
        gram_idf: likewise for the character n-gram buckets (``fit_gram_idf``), ``gram_idf``.
        The rest: ``SpamConfig``.
    """

    def __init__(
        self, tokenizer: str, class_names: list[str] | None = None, pos_weight: float = 1.0,
        vocab_size: int = 8000, max_tokens: int = 256, dim: int = 128, layers: int = 2,
        heads: int = 4, image_size: int = 192, image_channels: list[int] | None = None,
        max_images: int = 4, modality_dropout: float = 0.1, branch_loss: float = 0.5, dropout: float = 0.1,
        attention_dropout: float = 0.0, lr: float = 1e-3,
        weight_decay: float = 0.01, warmup_steps: int = 50, bag_lr_scale: float = 10.0,
        bag_weight_decay: float = 0.5, label_smoothing: float = 0.0, max_ham_fpr: float = 0.01, image_text: bool = False,
        wide: bool = False, text_reads_images: bool = False, char_grams: int = 0,
        idf: list[float] | None = None, gram_idf: list[float] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.save_hyperparameters(ignore=["idf", "gram_idf"])
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer)  # no truncation: the bag reads every word
        self.class_names = list(class_names or ["ham", "spam"])
        self.max_ham_fpr = max_ham_fpr
        vocab = self.tokenizer.get_vocab_size()
        self.text = TextBranch(vocab, max_tokens, dim, layers, heads, dropout, attention_dropout)
        if idf is not None:
            if len(idf) != vocab:
                raise ConfigError(f"idf has {len(idf)} entries for a vocabulary of {vocab}")
            self.text.idf.copy_(torch.tensor(idf))
        self.image = ImageBranch(list(image_channels or [16, 32, 64, 128]), dim)
        self.read = nn.Linear(dim, dim) if image_text else None  # the text branch's reading of OCR
        self.wide = nn.EmbeddingBag(vocab, 1, mode="sum") if wide else None  # a word's vote
        if self.wide is not None:
            nn.init.zeros_(self.wide.weight)
        self.wide_grams = nn.EmbeddingBag(char_grams, 1, mode="sum") if wide and char_grams else None  # fmt: skip
        if self.wide_grams is not None:
            nn.init.zeros_(self.wide_grams.weight)
            self.register_buffer("gram_idf", torch.ones(char_grams))
            if gram_idf is not None:
                if len(gram_idf) != char_grams:
                    raise ConfigError(f"gram_idf has {len(gram_idf)} entries for {char_grams} buckets")  # fmt: skip
                self.gram_idf.copy_(torch.tensor(gram_idf))
        self.no_text = nn.Parameter(torch.zeros(dim))
        self.no_image = nn.Parameter(torch.zeros(dim))
        self.head = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, 1))  # fmt: skip
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("threshold", torch.full((), 0.5))
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    # preprocessing: one path for the DataModule and for serving
    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """Any PIL image -> ``(1, S, S)`` in [-1, 1]: grey, scaled to the width ``S`` (aspect
        kept), pasted at the top of a white square (a taller picture is cut at the bottom)."""
        s = self.hparams.image_size
        im = image.convert("L")
        h = max(1, round(im.height * s / im.width))
        im = im.resize((s, h), Image.BILINEAR)
        canvas = Image.new("L", (s, s), 255)
        canvas.paste(im.crop((0, 0, s, min(h, s))), (0, 0))
        x = torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(1, s, s)
        return x.float().div(127.5).sub(1.0)

    def encode(self, subject: str, body: str, images: list[Image.Image], label: float = 0.0, image_texts: list[str] | None = None) -> Example:  # fmt: skip
        """A message as the model reads it. ``image_texts``: what OCR read in each image, as
        ``prepare@spam`` stored it; ``None`` reads the images now (``sightline.mail.ocr``)."""
        images = list(images)[: self.hparams.max_images]
        s = self.hparams.image_size
        stack = torch.stack([self.preprocess_image(im) for im in images]) if images else torch.zeros(0, 1, s, s)  # fmt: skip
        read = seen = None
        subject, body = subject or "", body or ""
        if self.read is not None and images:
            texts = list(image_texts)[: len(images)] if image_texts is not None else read_image_texts(images)  # fmt: skip
            said = " ".join(t for t in texts if t)
            read = self.words(said)
            if said and self.hparams.text_reads_images:
                seen = self.words(message_text(subject, f"{body} [SEP] {said}"))
        e = self.words(message_text(subject, body))
        return Example(e.ids, stack, float(label), e.words, e.tf, e.grams, e.gram_tf, read, seen)

    def words(self, text: str) -> Words:
        """A text -> the Transformer's first ``max_tokens`` word ids, the bag of all its words
        and, with ``char_grams``, the bag of its hashed character n-grams."""
        ids = self.tokenizer.encode(text).ids
        grams = bag_of_words(char_grams(text, self.hparams.char_grams)) if self.wide_grams is not None else ([], [])  # fmt: skip
        return Words(ids[: self.hparams.max_tokens], *bag_of_words(ids), *grams)

    # model
    def read_batch(self, batch: dict[str, torch.Tensor], use_text: bool = True, use_image: bool = True) -> Reading:  # fmt: skip
        """Every branch vector and wide vote of a ``collate`` batch, computed once
        (``Reading``); an unused branch is left out and reads as absent."""
        ids = batch["ids"]
        b = ids.shape[0]
        zero = torch.zeros(b, device=ids.device)
        text = with_images = self.no_text.expand(b, -1)
        vote_text = vote_both = vote_image = zero
        if use_text:
            text = with_images = self.read_words(batch)
            vote_text = vote_both = self.vote(batch) if self.wide is not None else zero
            seen = batch.get("seen_owner")
            if use_image and seen is not None and seen.numel():
                said = self.read_words(batch, "seen_")
                with_images = text.index_copy(0, seen, said.to(text.dtype))
                if self.wide is not None:
                    vote_both = vote_text.index_copy(0, seen, self.vote(batch, "seen_"))
        image, has = self.image_vectors(batch) if use_image else (self.no_image.expand(b, -1), torch.zeros(b, dtype=torch.bool, device=ids.device))  # fmt: skip
        read = batch.get("image_text_owner")
        if use_image and self.wide is not None and read is not None and read.numel():
            vote_image = zero.index_add(0, read, self.vote(batch, "image_text_"))
        return Reading(text, with_images, image, has, vote_text, vote_image, vote_both)

    def image_vectors(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image vectors (B, D), has_image (B,))``: per message the mean of its images' CNN
        vectors plus the reading of the words in them; the "no image" vector where none."""
        images, owner = batch["images"], batch["owner"]
        b = batch["ids"].shape[0]
        has = torch.zeros(b, dtype=torch.bool, device=images.device)
        v = self.no_image.expand(b, -1)
        if not images.shape[0]:
            return v, has
        feats = self.image(images)
        total = torch.zeros(b, feats.shape[1], device=feats.device, dtype=feats.dtype).index_add_(0, owner, feats)  # fmt: skip
        count = torch.bincount(owner, minlength=b)
        has = count > 0
        total = total / count.clamp_min(1).unsqueeze(1)
        read = batch.get("image_text_owner")
        if self.read is not None and read is not None and read.numel():
            said = self.read(self.read_words(batch, "image_text_"))
            total = total.index_add(0, read, said.to(total.dtype))
        return torch.where(has.unsqueeze(1), total, v.to(total.dtype)), has

    def read_words(self, batch: dict[str, torch.Tensor], prefix: str = "") -> torch.Tensor:
        """The text branch's vectors of the ``prefix`` texts of a batch (see ``vote``)."""
        return self.text(*(batch[f"{prefix}{k}"] for k in ("ids", "words", "tf", "word_owner")))

    def fuse(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([t, v.to(t.dtype)], dim=1)).squeeze(1)

    def vote(self, batch: dict[str, torch.Tensor], prefix: str = "") -> torch.Tensor:
        """The wide part's score of each bag of ``batch``: ``prefix`` "" the messages' own
        words, ``"image_text_"`` the words read in their images (one per message read),
        ``"seen_"`` both together (one per message with words in its images)."""
        words, n = batch[f"{prefix}words"], batch[f"{prefix}ids"].shape[0]
        w, offsets = self.text.tfidf(batch[f"{prefix}tf"], words, batch[f"{prefix}word_owner"], n)
        out = self.wide(words, offsets, per_sample_weights=w).squeeze(1).float()
        if self.wide_grams is not None:
            grams = batch[f"{prefix}grams"]
            gw = batch[f"{prefix}gram_tf"] * self.gram_idf[grams]
            gw, offsets = tfidf_weights(gw, batch[f"{prefix}gram_owner"], n)
            out = out + self.wide_grams(grams, offsets, per_sample_weights=gw).squeeze(1).float()
        return out

    def forward(self, batch: dict[str, torch.Tensor], use_text: bool = True, use_image: bool = True) -> torch.Tensor:  # fmt: skip
        """Logits ``(B,)`` of a ``collate`` batch. ``use_text`` / ``use_image`` False: that
        branch reads as absent."""
        return self.read_batch(batch, use_text, use_image).logits(self, use_text, use_image)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated spam probabilities."""
        return torch.sigmoid(logits.float() / self.temperature.float())

    def _loss(self, logits, labels) -> torch.Tensor:
        """Training loss: class-weighted, with smoothed targets (bounds how far a message with
        two sources of evidence, text and the words in its images, is pushed)."""
        pos = torch.tensor(self.hparams.pos_weight, device=logits.device)
        eps = self.hparams.label_smoothing
        target = labels.float() * (1.0 - eps) + 0.5 * eps
        return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pos)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Fused loss, plus ``branch_loss`` x the loss of each branch alone through the same head
        (image-only on messages that have images); modality dropout on the fused input."""
        y = batch["labels"]
        r = self.read_batch(batch)
        b, p, has = len(y), self.hparams.modality_dropout, r.has_image
        no_t, no_v = self.no_text.expand(b, -1), self.no_image.expand(b, -1).to(r.image.dtype)
        drop_t = torch.rand(b, device=y.device) < p
        drop_v = (torch.rand(b, device=y.device) < p) & has & ~drop_t
        t = torch.where(drop_t.unsqueeze(1), no_t, torch.where(drop_v.unsqueeze(1), r.text, r.text_with_images))  # fmt: skip
        vote = torch.where(drop_t, r.vote_image, torch.where(drop_v, r.vote_text, r.vote_both))
        fused = self.fuse(t, torch.where(drop_v.unsqueeze(1), no_v, r.image)) + vote
        loss = fused_loss = self._loss(fused, y)
        w = self.hparams.branch_loss
        if w > 0:
            loss = loss + w * self._loss(r.logits(self, use_image=False), y)
            if has.any():
                loss = loss + w * self._loss(r.logits(self, use_text=False)[has], y[has])
        self.log_dict({"train/loss": loss, "train/fused_loss": fused_loss}, on_step=True, on_epoch=True, prog_bar=True, batch_size=b)  # fmt: skip
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch, batch_idx: int) -> None:
        logits = self(batch)
        self._val.append((logits.float(), batch["labels"]))

    def on_validation_epoch_end(self) -> None:
        """Validation loss, then calibration (temperature, threshold) and the scores it gives."""
        from torchmetrics.functional.classification import binary_average_precision, binary_f1_score

        if not self._val:
            return
        logits, labels = (torch.cat(t) for t in zip(*self._val, strict=True))
        self._val = []
        if self.trainer.world_size > 1:
            logits, labels = (self.all_gather(t).flatten() for t in (logits, labels))
        self.log("val/loss", F.binary_cross_entropy_with_logits(logits, labels.float()), sync_dist=False)  # fmt: skip
        self.log("val/epoch", float(self.current_epoch))  # what selects the checkpoint: the last
        if self.trainer.sanity_checking or labels.unique().numel() < 2:
            return
        self.temperature.fill_(fit_temperature(logits, labels))
        probs = self.probabilities(logits)
        self.threshold.fill_(best_threshold(probs.cpu(), labels.cpu(), self.max_ham_fpr))
        y = labels.long()
        self.log_dict({
            "val/f1": binary_f1_score(probs, y, threshold=float(self.threshold)),
            "val/pr_auc": binary_average_precision(probs, y),
            "val/temperature": self.temperature, "val/threshold": self.threshold,
        })  # fmt: skip

    def configure_optimizers(self):
        hp = self.hparams
        bag = [self.text.bag.weight]
        wide = [m.weight for m in (self.wide, self.wide_grams) if m is not None]
        decay = [p for n, p in self.named_parameters() if p.ndim >= 2 and "pos" not in n and "embed" not in n and "bag" not in n and not n.startswith("wide")]  # fmt: skip
        ids = {id(p) for p in decay + bag + wide}
        rest = [p for p in self.parameters() if id(p) not in ids]
        opt = torch.optim.AdamW([
            {"params": decay, "weight_decay": hp.weight_decay}, {"params": rest, "weight_decay": 0.0},
            {"params": bag, "weight_decay": hp.bag_weight_decay, "lr": hp.lr * hp.bag_lr_scale},
            {"params": wide, "weight_decay": 0.0, "lr": hp.lr * hp.bag_lr_scale},  # a logistic regression: converged, not shrunk
        ], lr=hp.lr)  # fmt: skip
        total, warm = max(1, int(self.trainer.estimated_stepping_batches)), hp.warmup_steps

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # inference
    @torch.no_grad()
    def predict_batch(self, examples: list[Example]) -> list[dict]:
        """Encoded messages -> per message the calibrated probability, label and modalities."""
        if not examples:
            raise InputError("no messages given")
        batch = collate(examples)
        logits = self(to_device(batch, self.device))
        probs = self.probabilities(logits).cpu().tolist()
        threshold = float(self.threshold)
        return [
            {
                "spam_probability": round(p, 6), "label": self.class_names[int(p >= threshold)],
                "threshold": round(threshold, 6),
                "modalities": {"text": len(e.ids) > 1, "images": int(e.images.shape[0]), "image_text": bool(e.image_text and e.image_text.ids)},
            }
            for p, e in zip(probs, examples, strict=True)
        ]  # fmt: skip

    def predict(self, subject: str = "", body: str = "", images: list[Image.Image] | None = None) -> dict:  # fmt: skip
        """Classify a message given as parts; at least one part must be non-empty."""
        images = list(images or [])
        if not (str(subject).strip() or str(body).strip() or images):
            raise InputError("nothing to classify: subject, body and images are all empty")
        return self.predict_batch([self.encode(str(subject), str(body), images)])[0]

    def predict_email(self, raw: bytes) -> dict:
        """Classify raw RFC 822 bytes (an ``.eml`` file); ``InputError`` if it is no email."""
        from sightline.mail.parse import parse_email

        parsed = parse_email(raw)
        out = self.predict(parsed.subject, parsed.text, parsed.images)
        return {**out, "parse_issues": dict(parsed.issues)}


class MessageDataset(torch.utils.data.Dataset):
    """Prepared messages, encoded by the module's ``encode`` on first access and then cached."""

    def __init__(self, rows: list[dict], data_dir: Path, encode) -> None:
        self.rows, self.data_dir, self.encode = rows, data_dir, encode
        self.cache: dict[int, Example] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Example:
        if i not in self.cache:
            r = self.rows[i]
            images = []
            for name in r["images"]:
                with Image.open(self.data_dir / name) as im:
                    images.append(im.convert("RGB"))
            self.cache[i] = self.encode(
                r["subject"], r["text"], images, float(r["label"]), r.get("ocr")
            )
        return self.cache[i]


class EmailDataModule(L.LightningDataModule):
    """Batches of prepared emails (``prepare@spam``) as ``collate`` dicts.

    Encoding uses the module being trained (``attach``): its tokenizer and image preprocessing.
    """

    def __init__(self, data_dir, batch_size: int = 32, eval_batch_size: int = 128, num_workers: int = 0, seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        from sightline.data.prepare import load_meta

        self.data_dir = Path(data_dir)
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = batch_size, eval_batch_size, num_workers, seed  # fmt: skip
        self.meta = load_meta(self.data_dir)
        self.encode = None
        self._rows: dict[str, list[dict]] = {}
        self._sets: dict[str, MessageDataset] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["classes"])

    def rows(self, split: str) -> list[dict]:
        """The prepared rows of a split: id, label, subject, text, images, evasion."""
        if split not in self._rows:
            from sightline.mail.corpus import load_messages

            self._rows[split] = load_messages(self.data_dir, split)
        return self._rows[split]

    def attach(self, module) -> EmailDataModule:
        self.encode, self._sets = module.encode, {}
        return self

    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            self.attach(self.trainer.lightning_module)

    def dataset(self, split: str) -> MessageDataset:
        if split not in self._sets:
            self._sets[split] = MessageDataset(self.rows(split), self.data_dir, self.encode)
        return self._sets[split]

    def loader(self, split: str, shuffle: bool = False) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.dataset(split), batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle, collate_fn=collate, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )  # fmt: skip

    def train_dataloader(self):
        return self.loader("train", shuffle=True)

    def val_dataloader(self):
        return self.loader("val")

    def test_dataloader(self):
        return self.loader("test")


def _datamodule(section: SpamParams, data_dir, seed: int):
    d = section.data
    return EmailDataModule(data_dir, d.batch_size, d.eval_batch_size, d.num_workers, seed)


def _module_kwargs(section: SpamParams, dm) -> dict:
    m = section.model
    rows = dm.rows("train")
    spam = sum(r["label"] for r in rows)
    if spam == 0 or spam == len(rows):
        raise ConfigError("datasets.spam: the training split needs both ham and spam")
    texts = [message_text(r["subject"], " ".join([r["text"], *(r.get("ocr", []) if m.image_text else [])])) for r in rows]  # fmt: skip
    tokenizer = fit_tokenizer(texts, m.vocab_size)
    gram_idf = fit_gram_idf(texts, m.char_grams) if m.wide and m.char_grams else None
    return {"tokenizer": tokenizer, "idf": fit_idf(texts, tokenizer), "gram_idf": gram_idf, "class_names": dm.class_names, "pos_weight": round((len(rows) - spam) / spam, 6), **m.model_dump()}  # fmt: skip


def _evaluate(*args, **kwargs) -> dict:
    from sightline.metrics.spam import evaluate_spam

    return evaluate_spam(*args, **kwargs)


register_model(
    ModelSpec(
        name="spam",
        module=SpamModule,
        params=SpamParams,
        datamodule=_datamodule,
        module_kwargs=_module_kwargs,
        evaluate=_evaluate,
        monitor="val/epoch",  # the last epoch; see the module docstring
        mode="max",
    )
)
