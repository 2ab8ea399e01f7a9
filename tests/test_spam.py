"""The multimodal spam model: email parsing, the corpus and its split, the model, bad input."""

from __future__ import annotations

import base64
import io
import json
import math
import tarfile
from email.message import EmailMessage

import pytest
import torch
from conftest import fixed_batch_losses, make_email, png_bytes, tiny_section
from PIL import Image

from sightline.errors import ConfigError, InputError
from sightline.mail.corpus import group_label, load_messages, read_corpus
from sightline.mail.parse import NotAnEmail, html_to_text, parse_email
from sightline.registry import get_model

# parsing


def test_multipart_plain_and_html_alternative_reads_the_plain_text_once():
    msg = EmailMessage()
    msg["Subject"] = "quarterly report"
    msg.set_content("numbers are in the attached sheet")
    msg.add_alternative("<p>numbers are in the <b>attached</b> sheet</p>", subtype="html")
    parsed = parse_email(msg.as_bytes())
    assert parsed.subject == "quarterly report"
    assert parsed.text.count("numbers are in the") == 1 and parsed.images == []


def test_html_only_body_keeps_alt_text_link_domains_and_inline_images():
    data = base64.b64encode(png_bytes((20, 10))).decode()
    html = f"""<html><head><style>p {{color: red}}</style><script>var x = 1;</script></head><body>
    <p>Act <b>now</b>&amp; save</p><img alt="GET RICH QUICK" src="data:image/png;base64,{data}">
    <a href="http://www.Example.COM/buy?id=3">click here</a> or mail sales@shop.example.net</body></html>"""
    raw = make_email("offer", html, html=True)
    parsed = parse_email(raw)
    assert "Act now& save" in parsed.text and "GET RICH QUICK" in parsed.text
    assert "[url example.com]" in parsed.text and "[email shop.example.net]" in parsed.text
    assert "color" not in parsed.text and "var x" not in parsed.text and "http" not in parsed.text
    assert len(parsed.images) == 1 and parsed.images[0].size == (20, 10)


@pytest.mark.parametrize("cte", ["base64", "quoted-printable"])
def test_transfer_encodings_are_decoded(cte):
    msg = EmailMessage()
    msg["Subject"] = "caf\u00e9 menu"
    msg.set_content("d\u00e9jeuner \u00e0 midi, prix 12\u20ac " * 3, cte=cte)
    assert cte in msg.as_string().lower()
    parsed = parse_email(msg.as_bytes())
    assert (
        parsed.subject == "caf\u00e9 menu"
        and "d\u00e9jeuner \u00e0 midi, prix 12\u20ac" in parsed.text
    )


def test_non_utf8_and_unknown_charsets_decode_without_error():
    latin = make_email(
        "gr\u00fc\u00dfe", "sch\u00f6ne gr\u00fc\u00dfe aus m\u00fcnchen", charset="iso-8859-1"
    )
    assert b"iso-8859-1" in latin
    assert "sch\u00f6ne gr\u00fc\u00dfe" in parse_email(latin).text
    unknown = latin.replace(b"iso-8859-1", b"x-no-such-charset")
    parsed = parse_email(unknown)
    assert parsed.issues["unknown_charset"] == 1 and "sch" in parsed.text


def test_image_attachment_is_decoded_and_tracking_pixels_and_broken_images_are_counted():
    raw = make_email(
        "pics", "see attached", images=[png_bytes((50, 40)), png_bytes((1, 1)), b"\x89PNG broken"]
    )
    parsed = parse_email(raw)
    assert [im.size for im in parsed.images] == [(50, 40)] and parsed.images[0].mode == "RGB"
    assert parsed.issues["tracking_image"] == 1 and parsed.issues["corrupt_image"] == 1


def test_oversized_attachment_is_dropped_not_fatal():
    parsed = parse_email(
        make_email("big", "x", images=[png_bytes((300, 300))]), max_image_bytes=100
    )
    assert parsed.images == [] and parsed.issues["image_too_large"] == 1


def test_message_without_body_has_its_subject_only():
    parsed = parse_email(b"Subject: hello there\r\nFrom: a@example.org\r\n\r\n")
    assert parsed.subject == "hello there" and parsed.text == "" and not parsed.empty


@pytest.mark.parametrize(
    "raw",
    [b"", b"   \n", b"just some words, no headers at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"],
)
def test_bytes_that_are_not_an_email_are_rejected_with_a_reason(raw):
    with pytest.raises(NotAnEmail, match="email"):
        parse_email(raw)
    assert issubclass(NotAnEmail, InputError)


def test_html_parser_survives_broken_markup():
    text, images = html_to_text(
        "<p>unclosed <b>bold <img src='data:image/png;base64,!!!'> <a href="
    )
    assert "unclosed" in text and images == []


# corpus and split


def test_folder_names_give_label_and_collection():
    assert group_label("easy_ham") == (0, 1) and group_label("hard-ham-1") == (0, 1)
    assert group_label("spam_2") == (1, 2) and group_label("easy-ham-2") == (0, 2)
    assert group_label("spam.mbox") == (1, 1) and group_label("misc") is None


def test_corpus_reads_folders_archives_and_mbox(spam_corpus, tmp_path):
    folder, _ = read_corpus(spam_corpus, False, tmp_path)
    archive = tmp_path / "corpus.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tar:
        tar.add(spam_corpus, arcname="package/data")
    packed, _ = read_corpus(archive, False, tmp_path)
    assert [(m.id, m.label, m.collection) for m in packed] == [
        (m.id, m.label, m.collection) for m in folder
    ]
    assert not any(m.id.endswith("/cmds") for m in folder)
    mbox_dir = tmp_path / "mboxes"
    mbox_dir.mkdir()
    for name, label in (("ham.mbox", "ham"), ("spam.mbox", "spam")):
        msgs = [make_email(f"{label} {i}", f"body {i}") for i in range(3)]
        (mbox_dir / name).write_bytes(
            b"".join(b"From x@y Mon Jan  1 00:00:00 2024\n" + m + b"\n" for m in msgs)
        )
    boxed, _ = read_corpus(mbox_dir, False, tmp_path)
    assert sorted(m.label for m in boxed) == [0, 0, 0, 1, 1, 1]
    assert parse_email(boxed[0].raw).subject == "ham 0"


def test_unlabelled_or_one_class_sources_are_refused(tmp_path):
    from sightline.errors import DataError

    (tmp_path / "misc").mkdir()
    (tmp_path / "misc" / "1.eml").write_bytes(make_email("a", "b"))
    with pytest.raises(DataError, match="no labelled emails"):
        read_corpus(tmp_path, False, tmp_path / "dl")
    (tmp_path / "ham").mkdir()
    (tmp_path / "ham" / "1.eml").write_bytes(make_email("a", "b"))
    with pytest.raises(DataError, match="only ham"):
        read_corpus(tmp_path, False, tmp_path / "dl")


def test_prepared_split_is_by_time_without_duplicates_and_tags_evasion(prepared_spam):
    meta = json.loads((prepared_spam / "meta.json").read_text())
    rows = {s: load_messages(prepared_spam, s) for s in ("train", "val", "test")}
    ids = [r["id"] for split in rows.values() for r in split]
    assert len(ids) == len(set(ids))  # no message in two parts
    assert all(r["id"].split("/")[0].endswith("_2") for r in rows["test"])
    assert not any(r["id"].split("/")[0].endswith("_2") for r in rows["train"] + rows["val"])
    assert not any(r["id"].endswith("duplicate") for r in rows["test"])  # copy of an earlier spam
    assert meta["counts"]["test"]["duplicates_removed"] >= 1
    assert meta["skipped"] == 1 and meta["parse_issues"]["corrupt_image"] == 1  # the binary file
    evasion = [r for split in rows.values() for r in split if r["evasion"]]
    assert {r["label"] for r in evasion} == {0, 1}  # ham and spam alike
    for r in evasion:
        with Image.open(prepared_spam / r["images"][0]) as im:
            assert im.mode == "RGB" and im.width >= 300
    assert sum(meta["counts"][s]["evasion"] for s in rows) == len(evasion)


def test_evasion_moves_text_out_of_the_body(spam_corpus, tmp_path):
    from sightline.config import SpamDatasetConfig
    from sightline.mail.corpus import prepare_spam

    base = {"root": str(spam_corpus), "download": False, "val_fraction": 0.25}
    plain = tmp_path / "plain"
    prepare_spam(
        SpamDatasetConfig.model_validate({**base, "evasion": {"fraction": 0.0}}), 0, plain, tmp_path
    )
    hidden = tmp_path / "hidden"
    prepare_spam(
        SpamDatasetConfig.model_validate({**base, "evasion": {"fraction": 1.0, "min_share": 0.9}}),
        0,
        hidden,
        tmp_path,
    )
    before = {r["id"]: r for r in load_messages(plain, "train")}
    after = load_messages(hidden, "train")
    assert all(r["evasion"] == (len(before[r["id"]]["text"]) >= 40) for r in after)  # min_chars
    assert sum(r["evasion"] for r in after) >= len(after) - 1
    assert all(
        len(r["text"]) < 0.2 * len(before[r["id"]]["text"]) + 20 for r in after if r["evasion"]
    )
    with pytest.raises(ConfigError, match="min_share"):
        prepare_spam(
            SpamDatasetConfig.model_validate(
                {**base, "evasion": {"min_share": 0.9, "max_share": 0.5}}
            ),
            0,
            tmp_path / "x",
            tmp_path,
        )


# model


def build(prepared_spam, **model):
    spec = get_model("spam")
    section = tiny_section("spam", model=model)
    dm = spec.datamodule(section, prepared_spam, 0)
    module = spec.module(**spec.module_kwargs(section, dm))
    dm.attach(module)
    return module, dm, section


def test_tokenizer_is_fitted_on_train_only_and_deterministic(prepared_spam):
    from sightline.models.spam import fit_tokenizer, message_text

    module, dm, _ = build(prepared_spam)
    vocab = module.tokenizer.get_vocab()
    assert "latercollection" not in vocab  # a word seen only in the test split
    assert "earliercollection" in vocab
    texts = [message_text(r["subject"], r["text"]) for r in dm.rows("train")]
    assert fit_tokenizer(texts, 300) == fit_tokenizer(texts, 300)


def test_idf_is_fitted_on_train_and_saved_with_the_weights(prepared_spam):
    from sightline.models.spam import bag_of_words, fit_idf, fit_tokenizer
    from sightline.models.spam.text import SPECIALS

    texts = ["free cash now", "free offer", "meeting notes", "free cash"]
    tok = fit_tokenizer(texts, 50, min_count=1)
    idf = fit_idf(texts, tok)
    vocab = json.loads(tok)["model"]["vocab"]
    assert idf[: len(SPECIALS)] == [0.0] * len(SPECIALS)
    assert idf[vocab["free"]] < idf[vocab["cash"]] < idf[vocab["meeting"]]  # df 3 < 2 < 1
    assert bag_of_words([5, 7, 5, 5]) == ([5, 7], [pytest.approx(1 + math.log(3)), 1.0])

    module, _, _ = build(prepared_spam)
    assert "idf" not in module.hparams and "text.idf" in module.state_dict()
    assert module.text.idf[len(SPECIALS) :].gt(0).all()  # from the training split, not ones


def test_the_bag_of_words_reads_past_the_transformer_window(prepared_spam):
    from sightline.models.spam import collate

    torch.manual_seed(0)
    module, _, _ = build(prepared_spam)
    module.eval()
    window = module.hparams.max_tokens
    filler = " ".join(["earliercollection"] * (window + 10))
    one, two = sorted(
        w for w in module.tokenizer.get_vocab() if w.isalpha() and w != "earliercollection"
    )[:2]
    a, b = module.encode("hi", f"{filler} {one}", []), module.encode("hi", f"{filler} {two}", [])
    assert a.ids == b.ids and len(a.ids) == window  # the Transformer sees the same tokens
    assert a.words != b.words
    with torch.no_grad():
        out = module(collate([a, b]))
    assert out[0] != out[1]


@pytest.mark.parametrize("n_images", [0, 1, 3])
def test_logits_for_messages_with_0_1_or_3_images(prepared_spam, n_images):
    from sightline.models.spam import collate

    module, _, _ = build(prepared_spam)
    module.eval()
    images = [Image.new("RGB", (90, 50 + 10 * k), (k * 40, 0, 0)) for k in range(n_images)]
    batch = collate([module.encode("hello", "world", images), module.encode("free cash", "", [])])
    assert batch["images"].shape == (n_images, 1, 32, 32)
    for use_text, use_image in ((True, True), (True, False), (False, True)):
        out = module(batch, use_text, use_image)
        assert out.shape == (2,) and torch.isfinite(out).all()
    if n_images:  # the image branch changes the fused logit only for the message with images
        fused = module(batch)
        text_only = module(batch, use_image=False)
        assert fused[0] != text_only[0] and fused[1] == text_only[1]


def test_loss_decreases_on_a_fixed_batch(prepared_spam):
    from sightline.models.spam import collate

    torch.manual_seed(0)
    module, dm, _ = build(prepared_spam, modality_dropout=0.0, dropout=0.0)
    ds = dm.dataset("train")
    batch = collate([ds[i] for i in range(16)])
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    module.train()
    losses = fixed_batch_losses(lambda: module._loss(module(batch), batch["labels"]), opt, 30)
    assert losses[-1] < 0.5 * losses[0]


def test_train_export_reload_gives_the_same_tokenizer_and_predictions(
    prepared_spam, tmp_path, spam_corpus
):
    from sightline.inference import load_module
    from sightline.training import train

    section = tiny_section("spam", max_epochs=2)
    train("spam", section, 0, prepared_spam, tmp_path / "m", tmp_path / "run", None)
    served = load_module(tmp_path / "m", "spam")
    from_ckpt = load_module(tmp_path / "m" / "best.ckpt", "spam")
    assert served.tokenizer.to_str() == from_ckpt.tokenizer.to_str()
    assert 0.05 <= float(served.temperature) <= 20 and 0 < float(served.threshold) < 1
    raw = (spam_corpus / "spam_2" / "00003.spam_2").read_bytes()
    a, b = served.predict_email(raw), from_ckpt.predict_email(raw)
    assert a == b and set(a) == {
        "spam_probability",
        "label",
        "threshold",
        "modalities",
        "parse_issues",
    }
    assert a["modalities"]["text"] and a["label"] in ("ham", "spam")


def test_prediction_api_rejects_nothing_usable_and_non_emails(prepared_spam):
    module, _, _ = build(prepared_spam)
    module.eval()
    with pytest.raises(InputError, match="nothing to classify"):
        module.predict("", "  ", [])
    with pytest.raises(InputError, match="not an email"):
        module.predict_email(b"%PDF-1.4 binary")
    only_subject = module.predict_email(b"Subject: win cash now\r\n\r\n")
    assert only_subject["modalities"] == {"text": True, "images": 0, "image_text": False}
    broken = module.predict_email(make_email("hi", "see picture", images=[b"GIF89a broken"]))
    assert broken["modalities"]["images"] == 0 and broken["parse_issues"] == {"corrupt_image": 1}
    buf = io.BytesIO()
    Image.new("P", (64, 64)).save(buf, format="GIF")
    image_only = module.predict(images=[Image.open(buf)])
    assert image_only["modalities"] == {"text": False, "images": 1, "image_text": False}  # blank


def test_heads_must_divide_dim():
    with pytest.raises(ConfigError, match="models.spam.model: .*divisible by heads"):
        from sightline.config import validate

        validate(get_model("spam").params, {"model": {"dim": 30, "heads": 4}}, "models.spam")


def test_train_and_evaluate_write_ablations_curves_and_pictures(prepared_spam, tmp_path):
    from sightline.evaluation import evaluate
    from sightline.training import train

    section = tiny_section("spam")
    train("spam", section, 0, prepared_spam, tmp_path / "m", tmp_path / "run", None)
    metrics = evaluate("spam", section, 0, tmp_path / "m", prepared_spam, tmp_path / "report")
    for prefix in ("test", "text_only", "image_only"):
        for key in ("precision", "recall", "f1", "roc_auc", "pr_auc", "ece", "threshold"):
            assert 0.0 <= metrics[f"{prefix}/{key}"] <= 1.0 or key == "threshold"
    assert metrics["test/n_evasion"] > 0 and "evasion/text_only/recall" in metrics
    assert sum(map(sum, metrics["test/confusion"])) == metrics["test/n"]
    report = tmp_path / "report"
    for name in ("confusion_matrix.png", "curves.png", "evasion_examples.png", "mistakes.md"):
        assert (report / name).stat().st_size > 0
    roc = json.loads((report / "curves" / "roc_fused.json").read_text())
    assert roc[0] == {"fpr": 0.0, "tpr": 0.0} or roc[0]["fpr"] == 0.0
    assert "| p(spam) |" in (report / "mistakes.md").read_text()


def test_serving_path_from_raw_bytes_matches_the_training_path(prepared_spam, spam_corpus):
    """parse -> prepare -> DataModule and predict_email(raw bytes) give the same logit."""
    from sightline.models.spam import collate

    module, dm, _ = build(prepared_spam)
    module.eval()
    rows = dm.rows("test")
    checked = 0
    for i, row in enumerate(rows):
        if row["evasion"]:  # its prepared body was rewritten on purpose
            continue
        group, name = row["id"].split("/")
        raw = (spam_corpus / group / name).read_bytes()
        batch = collate([dm.dataset("test")[i]])
        with torch.no_grad():
            trained = module.probabilities(module(batch))
        served = module.predict_email(raw)
        assert served["spam_probability"] == round(float(trained[0]), 6)
        assert served["modalities"]["images"] == len(row["images"])
        checked += 1
    assert checked >= 10


def test_temperature_is_recovered_and_bounded_when_the_classes_separate():
    from sightline.models.spam import fit_temperature

    g = torch.Generator().manual_seed(0)
    true = torch.randn(20000, generator=g) * 2
    labels = (torch.rand(20000, generator=g) < torch.sigmoid(true)).float()
    assert fit_temperature(3 * true, labels) == pytest.approx(3.0, rel=0.05)
    separated = torch.tensor([-5.0, -4.0, 4.0, 5.0])
    assert fit_temperature(separated, torch.tensor([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.05)


# the words in images (OCR)

SENTENCE = "Claim your free prize today and double your money with this exclusive offer"


def _words(text: str) -> set[str]:
    import re

    return set(re.findall(r"[a-z]{3,}", text.lower()))


def _render(text: str) -> Image.Image:
    from PIL import ImageDraw, ImageFont

    from sightline.mail.render import font_paths

    im = Image.new("RGB", (640, 60), (250, 250, 240))
    ImageDraw.Draw(im).text(
        (10, 15), text, font=ImageFont.truetype(font_paths()[0], 20), fill=(20, 20, 90)
    )
    return im


def test_ocr_reads_the_words_of_a_rendered_picture_and_none_in_noise():
    from sightline.mail.ocr import read_text, read_texts

    said = read_text(_render(SENTENCE))
    assert len(_words(said) & _words(SENTENCE)) >= 0.8 * len(_words(SENTENCE)), said
    noise = Image.fromarray(torch.randint(0, 256, (40, 60, 3), dtype=torch.uint8).numpy())
    assert read_texts([_render(SENTENCE), noise], workers=2) == [said, read_text(noise)]
    assert not _words(read_text(Image.new("RGB", (80, 80), "white")))


def test_without_tesseract_prepare_refuses_and_serving_reads_no_words(
    prepared_spam, monkeypatch, tmp_path
):
    from sightline.config import SpamDatasetConfig
    from sightline.mail import ocr
    from sightline.mail.corpus import prepare_spam

    module, _, _ = build(prepared_spam)
    monkeypatch.setattr(ocr, "tesseract", lambda: None)
    cfg = SpamDatasetConfig.model_validate({"root": str(tmp_path), "download": False})
    with pytest.raises(ocr.OcrUnavailable, match="apt install tesseract-ocr"):
        prepare_spam(cfg, 0, tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()
    with pytest.warns(RuntimeWarning, match="tesseract"):
        example = module.encode("hi", "", [_render(SENTENCE)])
    assert example.image_text is not None and example.image_text.ids == []


def test_prepare_stores_what_ocr_reads_in_each_saved_image(prepared_spam):
    """The cached text is what serving's live OCR reads in the same image file."""
    from sightline.mail.ocr import read_text

    meta = json.loads((prepared_spam / "meta.json").read_text())
    assert meta["ocr"]["engine"].startswith("tesseract")
    rows = [r for s in ("train", "val", "test") for r in load_messages(prepared_spam, s)]
    assert all(len(r["ocr"]) == len(r["images"]) for r in rows)
    assert meta["ocr"]["images"] == sum(len(r["images"]) for r in rows)
    evasion = [r for r in rows if r["evasion"]]
    assert evasion and all(r["ocr"][0] for r in evasion)  # the words moved into the picture
    for r in evasion[:4] + [r for r in rows if r["images"] and not r["evasion"]][:2]:
        for name, cached in zip(r["images"], r["ocr"], strict=True):
            with Image.open(prepared_spam / name) as im:
                assert read_text(im.convert("RGB")) == cached


def test_the_image_branch_reads_the_words_in_the_image(prepared_spam):
    from sightline.mail.ocr import read_text
    from sightline.models.spam import collate

    module, _, _ = build(prepared_spam)
    module.eval()
    picture = _render(SENTENCE)
    live = module.encode("", "", [picture])  # serving: OCR now
    cached = module.encode("", "", [picture], image_texts=[read_text(picture)])  # training
    assert live.image_text == cached.image_text and len(live.image_text.ids) >= 8
    other = module.encode("", "", [picture], image_texts=["meeting notes for the project review"])
    batch = collate([live, other, module.encode("hi", "there", [])])
    assert batch["image_text_owner"].tolist() == [0, 1]
    with torch.no_grad():
        image_only = module(batch, use_text=False)
        text_only = module(batch, use_image=False)
    assert image_only[0] != image_only[1]  # same pixels, different words read
    assert text_only[0] == text_only[1]  # the words in a picture are not the message's text
    blind, _, _ = build(prepared_spam, image_text=False)
    assert blind.read is None and blind.encode("", "", [picture]).image_text is None


def test_character_grams_are_stable_hashed_and_catch_respellings():
    from sightline.models.spam import char_grams, fit_gram_idf

    grams = char_grams("Viagra [SEP]", 1 << 18)
    assert grams == char_grams("viagra", 1 << 18)  # lower-cased; [SEP] is no word; CRC-32
    assert len(grams) == 6 + 5 + 4 and all(0 <= g < 1 << 18 for g in grams)  # " viagra "
    assert len(set(grams) & set(char_grams("v1agra", 1 << 18))) >= 5  # "agra", "gra ", ...
    idf = fit_gram_idf(["cheap viagra", "meeting notes"], 64)
    assert len(idf) == 64 and max(idf) > min(idf) >= 0.0  # unseen buckets: the largest


def test_a_word_votes_the_same_in_the_text_and_in_an_image_and_fused_reads_both(prepared_spam):
    from sightline.models.spam import collate

    module, _, _ = build(prepared_spam)
    module.eval()
    assert module.wide is not None and not module.wide.weight.any()  # starts at no opinion
    assert module.wide_grams is not None and not module.wide_grams.weight.any()
    torch.nn.init.normal_(module.wide.weight)
    torch.nn.init.normal_(module.wide_grams.weight)
    words = "earliercollection offer money click"
    picture = Image.new("RGB", (64, 32), "white")
    in_text = module.encode("", words, [])
    in_image = module.encode("", "", [picture], image_texts=[words])
    both = module.encode("", words, [picture], image_texts=[words])
    blank = module.encode("", words, [picture], image_texts=[""])  # OCR found nothing
    twice = module.encode("", f"{words} {words}", [])
    assert in_text.seen is None and blank.seen is None and both.seen is not None
    assert both.seen.ids[: len(both.ids)] == both.ids and len(both.seen.ids) > len(both.ids)
    batch = collate([in_text, in_image, both, blank, twice])
    assert batch["seen_owner"].tolist() == [1, 2]  # the messages with words in their images
    with torch.no_grad():
        r = module.read_batch(batch)
        assert r.vote_text[0] != 0 and torch.allclose(r.vote_text[0], r.vote_image[1])
        assert r.vote_image[0] == 0 and r.vote_image[3] == 0
        # fused, the words of body and picture are one bag: as if the body said them twice
        assert torch.allclose(r.vote_both[2], r.vote_text[4]) and r.vote_both[3] == r.vote_text[3]
        assert torch.equal(r.text_with_images[[0, 3, 4]], r.text[[0, 3, 4]])
        assert not torch.equal(r.text_with_images[2], r.text[2])
        assert torch.allclose(module(batch), module.fuse(r.text_with_images, r.image) + r.vote_both)
        text_only = module(batch, use_image=False)
        assert torch.allclose(text_only[2], text_only[0])  # alone, the text reads no image word
        alone = module.read_batch(batch, use_text=False)
        assert not alone.vote_text.any() and not alone.vote_both.any()
        assert not module.read_batch(batch, use_image=False).vote_image.any()
    plain, _, _ = build(prepared_spam, wide=False, text_reads_images=False)
    assert plain.wide is None
    assert plain.encode("", words, [picture], image_texts=[words]).seen is None
    assert not plain.read_batch(batch).vote_both.any()


def test_threshold_flags_at_most_the_allowed_share_of_validation_ham():
    from sightline.models.spam import best_threshold

    ham = torch.linspace(0.0, 0.5, 200)  # 200 ham, the top two at 0.4975 and 0.5
    probs = torch.cat([ham, torch.tensor([0.3, 0.9, 0.95])])
    labels = torch.cat([torch.zeros(200), torch.ones(3)])
    t = best_threshold(probs, labels, max_ham_fpr=0.01)
    assert int((ham >= t).sum()) == 2 and t <= float(ham[-3]) + 1e-6
    assert int((ham >= best_threshold(probs, labels, max_ham_fpr=0.0)).sum()) == 0
    assert best_threshold(probs, labels, max_ham_fpr=0.0) > 0.5


# --- parsing within a server's budgets ---------------------------------------------------------


def test_budgets_off_by_default_give_the_corpus_parse_unchanged():
    images = [
        png_bytes((40, 40), (200, 10, 10)),
        b"\x89PNG broken",
        png_bytes((50, 50), (10, 200, 10)),
    ]
    raw = make_email("pics", "see", images=images)
    plain = parse_email(raw)
    budget = parse_email(
        raw, max_pixels=10**9, max_header_line=8192, max_part_chars=10**6, max_parts=100
    )
    assert [im.tobytes() for im in plain.images] == [im.tobytes() for im in budget.images]
    assert plain.text == budget.text and plain.issues == budget.issues


def test_images_are_sized_from_their_headers_and_decoded_only_within_the_pixel_budget():
    raw = make_email("pics", "see", images=[png_bytes((40, 40), (200, 10, 10))] * 5)
    parsed = parse_email(raw, max_pixels=2 * 40 * 40)
    assert len(parsed.images) == 2 and parsed.issues["images_over_budget"] == 3
    capped = parse_email(raw, max_pixels=10**9, max_images=3)
    assert len(capped.images) == 3 and capped.issues["images_dropped"] == 2


def test_header_lines_and_mime_parts_are_counted_before_parsing():
    from sightline.errors import BudgetError
    from sightline.mail.parse import count_parts

    with pytest.raises(BudgetError, match="header line is 20009 bytes; the limit is 8192"):
        parse_email(b"Subject: " + b"a" * 20000 + b"\r\n\r\nhi", max_header_line=8192)
    many = (
        b'Subject: hi\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        + b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 300
        + b"--B--\r\n"
    )
    assert count_parts(many) == 301  # 300 parts and the closing delimiter
    with pytest.raises(BudgetError, match="MIME parts"):
        parse_email(many, max_parts=256)
    assert parse_email(many).text  # without the budget it parses


def test_a_long_text_part_is_cut_before_its_html_is_parsed():
    raw = b"Subject: hi\r\nContent-Type: text/html\r\n\r\n" + b"<p>word</p>" * 1000
    parsed = parse_email(raw, max_part_chars=500)
    assert parsed.issues["text_truncated"] == 1 and parsed.text.count("word") <= 500 // 11 + 1
