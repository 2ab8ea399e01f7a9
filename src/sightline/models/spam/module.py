"""``SpamModule``: the branches fused by a dense head, trained with each branch also alone, and
calibrated after every validation epoch. See ``sightline.models.spam`` for the design."""

from __future__ import annotations

import lightning as L
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from sightline.errors import ConfigError, InputError
from sightline.mail.ocr import read_texts_or_none
from sightline.models.spam.batch import Example, Reading, collate, square_top, to_device
from sightline.models.spam.calibration import best_threshold, fit_temperature
from sightline.models.spam.net import ImageBranch, TextBranch, tfidf_weights
from sightline.models.spam.params import SpamConfig
from sightline.models.spam.text import Words, bag_of_words, char_grams, message_text
from sightline.schedules import warmup_cosine

_D = SpamConfig()  # the defaults: the params schema is their one source


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
        The rest: ``SpamConfig`` (the params schema), whose defaults these are.
    """

    def __init__(
        self,
        tokenizer: str,
        class_names: list[str] | None = None,
        pos_weight: float = 1.0,
        vocab_size: int = _D.vocab_size,
        max_tokens: int = _D.max_tokens,
        dim: int = _D.dim,
        layers: int = _D.layers,
        heads: int = _D.heads,
        image_size: int = _D.image_size,
        image_channels: list[int] | None = None,
        max_images: int = _D.max_images,
        modality_dropout: float = _D.modality_dropout,
        branch_loss: float = _D.branch_loss,
        dropout: float = _D.dropout,
        attention_dropout: float = _D.attention_dropout,
        lr: float = _D.lr,
        weight_decay: float = _D.weight_decay,
        warmup_steps: int = _D.warmup_steps,
        bag_lr_scale: float = _D.bag_lr_scale,
        bag_weight_decay: float = _D.bag_weight_decay,
        label_smoothing: float = _D.label_smoothing,
        max_ham_fpr: float = _D.max_ham_fpr,
        image_text: bool = _D.image_text,
        wide: bool = _D.wide,
        text_reads_images: bool = _D.text_reads_images,
        char_grams: int = _D.char_grams,
        idf: list[float] | None = None,
        gram_idf: list[float] | None = None,
    ) -> None:
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
        self.image = ImageBranch(list(image_channels or _D.image_channels), dim)
        self.read = nn.Linear(dim, dim) if image_text else None  # the text branch's reading of OCR
        self.wide = nn.EmbeddingBag(vocab, 1, mode="sum") if wide else None  # a word's vote
        if self.wide is not None:
            nn.init.zeros_(self.wide.weight)
        self.wide_grams = (
            nn.EmbeddingBag(char_grams, 1, mode="sum") if wide and char_grams else None
        )
        if self.wide_grams is not None:
            nn.init.zeros_(self.wide_grams.weight)
            self.register_buffer("gram_idf", torch.ones(char_grams))
            if gram_idf is not None:
                if len(gram_idf) != char_grams:
                    raise ConfigError(
                        f"gram_idf has {len(gram_idf)} entries for {char_grams} buckets"
                    )
                self.gram_idf.copy_(torch.tensor(gram_idf))
        self.no_text = nn.Parameter(torch.zeros(dim))
        self.no_image = nn.Parameter(torch.zeros(dim))
        self.head = nn.Sequential(
            nn.Linear(2 * dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, 1)
        )
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("threshold", torch.full((), 0.5))
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    # preprocessing: one path for the DataModule and for serving
    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """Any PIL image -> ``(1, S, S)`` in [-1, 1]: grey, scaled to the width ``S`` (aspect
        kept), pasted at the top of a white square (a taller picture is cut at the bottom)."""
        return square_top(image, self.hparams.image_size)

    def encode(
        self,
        subject: str,
        body: str,
        images: list[Image.Image],
        label: float = 0.0,
        image_texts: list[str] | None = None,
    ) -> Example:
        """A message as the model reads it. ``image_texts``: what OCR read in each image, as
        ``prepare@spam`` stored it; ``None`` reads the images now (``sightline.mail.ocr``)."""
        images = list(images)[: self.hparams.max_images]
        s = self.hparams.image_size
        stack = (
            torch.stack([self.preprocess_image(im) for im in images])
            if images
            else torch.zeros(0, 1, s, s)
        )
        read = seen = None
        subject, body = subject or "", body or ""
        if self.read is not None and images:
            texts = (
                list(image_texts)[: len(images)]
                if image_texts is not None
                else read_texts_or_none(images)
            )
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
        grams = (
            bag_of_words(char_grams(text, self.hparams.char_grams))
            if self.wide_grams is not None
            else ([], [])
        )
        return Words(ids[: self.hparams.max_tokens], *bag_of_words(ids), *grams)

    # model
    def read_batch(
        self, batch: dict[str, torch.Tensor], use_text: bool = True, use_image: bool = True
    ) -> Reading:
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
        image, has = (
            self.image_vectors(batch)
            if use_image
            else (self.no_image.expand(b, -1), torch.zeros(b, dtype=torch.bool, device=ids.device))
        )
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
        total = torch.zeros(b, feats.shape[1], device=feats.device, dtype=feats.dtype).index_add_(
            0, owner, feats
        )
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

    def forward(
        self, batch: dict[str, torch.Tensor], use_text: bool = True, use_image: bool = True
    ) -> torch.Tensor:
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
        t = torch.where(
            drop_t.unsqueeze(1), no_t, torch.where(drop_v.unsqueeze(1), r.text, r.text_with_images)
        )
        vote = torch.where(drop_t, r.vote_image, torch.where(drop_v, r.vote_text, r.vote_both))
        fused = self.fuse(t, torch.where(drop_v.unsqueeze(1), no_v, r.image)) + vote
        loss = fused_loss = self._loss(fused, y)
        w = self.hparams.branch_loss
        if w > 0:
            loss = loss + w * self._loss(r.logits(self, use_image=False), y)
            if has.any():
                loss = loss + w * self._loss(r.logits(self, use_text=False)[has], y[has])
        self.log_dict(
            {"train/loss": loss, "train/fused_loss": fused_loss},
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=b,
        )
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
        self.log(
            "val/loss", F.binary_cross_entropy_with_logits(logits, labels.float()), sync_dist=False
        )
        self.log("val/epoch", float(self.current_epoch))  # what selects the checkpoint: the last
        if self.trainer.sanity_checking or labels.unique().numel() < 2:
            return
        self.temperature.fill_(fit_temperature(logits, labels))
        probs = self.probabilities(logits)
        self.threshold.fill_(best_threshold(probs.cpu(), labels.cpu(), self.max_ham_fpr))
        y = labels.long()
        self.log_dict(
            {
                "val/f1": binary_f1_score(probs, y, threshold=float(self.threshold)),
                "val/pr_auc": binary_average_precision(probs, y),
                "val/temperature": self.temperature,
                "val/threshold": self.threshold,
            }
        )

    def configure_optimizers(self):
        hp = self.hparams
        bag = [self.text.bag.weight]
        wide = [m.weight for m in (self.wide, self.wide_grams) if m is not None]
        decay = [
            p
            for n, p in self.named_parameters()
            if p.ndim >= 2
            and "pos" not in n
            and "embed" not in n
            and "bag" not in n
            and not n.startswith("wide")
        ]
        ids = {id(p) for p in decay + bag + wide}
        rest = [p for p in self.parameters() if id(p) not in ids]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": hp.weight_decay},
                {"params": rest, "weight_decay": 0.0},
                {"params": bag, "weight_decay": hp.bag_weight_decay, "lr": hp.lr * hp.bag_lr_scale},
                {
                    "params": wide,
                    "weight_decay": 0.0,
                    "lr": hp.lr * hp.bag_lr_scale,
                },  # a logistic regression: converged, not shrunk
            ],
            lr=hp.lr,
        )
        steps = self.trainer.estimated_stepping_batches
        return {"optimizer": opt, "lr_scheduler": warmup_cosine(opt, hp.warmup_steps, steps)}

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
                "spam_probability": round(p, 6),
                "label": self.class_names[int(p >= threshold)],
                "threshold": round(threshold, 6),
                "modalities": {
                    "text": len(e.ids) > 1,
                    "images": int(e.images.shape[0]),
                    "image_text": bool(e.image_text and e.image_text.ids),
                },
            }
            for p, e in zip(probs, examples, strict=True)
        ]

    def predict(
        self, subject: str = "", body: str = "", images: list[Image.Image] | None = None
    ) -> dict:
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
