"""The BentoML service: packaging, every endpoint through ``Service.to_asgi()``, bad input, parity.

Five untrained tiny models (built from tiny params on the synthetic datasets) are packaged into
the session's BentoML store; the service loads them exactly as it loads real ones.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, SERVED, make_email
from PIL import Image

from sightline.errors import ConfigError

NAMES = SERVED


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.fixture(scope="module")
def local(packaged):
    """The same models loaded in-process, for parity."""
    from sightline.inference import load_module

    return {name: load_module(path, name, "cpu") for name, path in packaged.items()}


def shoe() -> Image.Image:
    img = Image.new("L", (28, 28), 10)
    img.paste(200, (4, 14, 24, 22))
    return img


def upload(data: bytes, field: str = "images", name: str = "x.png", ctype: str = "image/png"):
    return [(field, (name, data, ctype))]


def assert_client_error(resp, status: int, *words: str) -> None:
    assert resp.status_code == status, resp.text
    text = resp.text.lower()
    for w in words:
        assert w.lower() in text, (w, resp.text)


# --- packaging --------------------------------------------------------------------------------


def test_packaged_models_hold_safetensors_json_and_provenance(packaged):
    import bentoml

    for name in NAMES:
        model = bentoml.models.get(f"{name}:latest")
        files = sorted(p.name for p in Path(model.path).iterdir())
        assert "model.safetensors" in files and "config.json" in files
        assert not [f for f in files if f.endswith((".pkl", ".pt", ".ckpt", ".pickle"))]
        assert model.info.labels["git_commit"] == "0123456789ab"
        assert model.info.labels["experiment"] == "exp-1"
        assert len(model.info.labels["params_hash"]) == 12
        assert (Path(model.path) / "model.safetensors").read_bytes() == (
            packaged[name] / "model.safetensors"
        ).read_bytes()
    assert bentoml.models.get("classifier:latest").info.metadata["metrics"]["test/acc"] == 0.5
    assert len(bentoml.models.get("classifier:latest").info.metadata["class_names"]) == 10
    assert bentoml.models.get("gan:latest").info.metadata["metrics"] == {"val/fid": 9.0, "fid": 9.0}


def test_params_hash_ignores_key_order_and_sees_values():
    from sightline.packaging import params_hash

    assert params_hash({"a": 1, "b": [2, 3]}) == params_hash({"b": [2, 3], "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


def test_serving_params_errors_name_the_key(tmp_path):
    from serving.settings import load_serving_config

    assert (
        load_serving_config(Path("serving/params.yaml")).batch("classifier")["max_batch_size"] >= 1
    )
    bad = tmp_path / "params.yaml"
    bad.write_text("gpu: -1\n")
    with pytest.raises(ConfigError, match="gpu"):
        load_serving_config(bad)
    bad.write_text("calls_in_flight: 0\n")
    with pytest.raises(ConfigError, match="calls_in_flight"):
        load_serving_config(bad)
    bad.write_text("max_batch: 3\n")
    with pytest.raises(ConfigError, match="max_batch: unknown key"):
        load_serving_config(bad)
    bad.write_text("max_texts: 65\n")  # over clip's batch: such a request could never be batched
    with pytest.raises(
        ConfigError, match="max_texts .65. is over batching.clip.max_batch_size .64."
    ):
        load_serving_config(bad)
    bad.write_text("services: {clasifier: {workers: 2}}\n")
    with pytest.raises(ConfigError, match="services.clasifier: not a served model"):
        load_serving_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text("gpu: 1\nservices: {clip: {gpu: 0}, ocr: {workers: 3}}\n")
    config = load_serving_config(good)
    assert (config.service("classifier").gpu, config.service("clip").gpu) == (1, 0)
    assert (config.service("ocr").workers, config.service("ocr").gpu) == (3, 0)
    assert config.service("ocr").processes == 3  # calls the front keeps in flight scale with it
    # OCR steps back by default (also when only its workers are set); a model does not
    assert (config.service("ocr").nice, config.service("classifier").nice) == (10, 0)
    good.write_text("services: {spam: {nice: 5}, ocr: {nice: 0}}\n")
    config = load_serving_config(good)
    assert (config.service("spam").nice, config.service("ocr").nice) == (5, 0)
    assert config.service("ocr").workers == "cpu_count"  # a key left out keeps its default
    bad.write_text("services: {ocr: {nice: 20}}\n")
    with pytest.raises(ConfigError, match="nice"):
        load_serving_config(bad)


def _serving_params(path: Path, text: str):
    from serving.settings import load_serving_config

    path.write_text(text)
    return load_serving_config(path)


def test_jpeg_uploads_are_decoded_on_the_device_where_a_service_has_a_gpu(tmp_path):
    """``decode: auto``: classifier and vae decode their JPEG uploads themselves when they have
    a GPU; ``device`` and ``front`` force it either way; the other services cannot."""
    path = tmp_path / "params.yaml"
    cpu = _serving_params(path, "gpu: 0\n")
    assert cpu.service("classifier").decode == "auto"
    assert not any(cpu.service(n).decodes_jpeg for n in (*NAMES, "ocr"))
    gpu = _serving_params(path, "gpu: 1\nservices: {vae: {decode: front}}\n")
    assert [gpu.service(n).decodes_jpeg for n in NAMES] == [n == "classifier" for n in NAMES]
    assert _serving_params(path, "services: {vae: {decode: device}}\n").service("vae").decodes_jpeg
    with pytest.raises(ConfigError, match="services.clip.decode: only classifier and vae"):
        _serving_params(path, "services: {clip: {decode: device}}\n")
    with pytest.raises(ConfigError, match="decode"):
        _serving_params(path, "services: {vae: {decode: gpu}}\n")


def test_the_load_benchmark_measures_with_the_settings_the_server_gets(tmp_path, monkeypatch):
    """``serving.inputs.CONFIG`` is read once per process; the load benchmark starts its server
    with the settings ``SIGHTLINE_SERVING_PARAMS`` names at that moment, and its in-process
    reference (where JPEGs are decoded) and header must follow the same file."""
    import serving.inputs

    path = tmp_path / "params.yaml"
    path.write_text("gpu: 1\nworkers: 3\n")
    monkeypatch.setenv("SIGHTLINE_SERVING_PARAMS", str(path))
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import serve_load

    seen = serve_load.settings()
    assert (seen.gpu, seen.workers, seen.service("classifier").decodes_jpeg) == (1, 3, True)
    assert serving.inputs.CONFIG.workers != 3  # what this process imported serving/ with


def test_each_service_process_takes_its_niceness(packaged):
    """A service's worker raises its niceness to ``services.<name>.nice`` when it starts, in its
    own process (here a child process, so the test's own priority stays as it is)."""
    import subprocess
    import sys

    code = (
        "import os; from serving.backends import step_back; start = os.nice(0); "
        "step_back('ocr'); n = os.nice(0); step_back('classifier'); print(start, n, os.nice(0))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=Path.cwd()
    )
    assert done.returncode == 0, done.stderr
    start, ocr, then = map(int, done.stdout.split())
    assert ocr == max(start, 10)  # raised to 10, or left where a nicer start put it
    assert then == ocr  # never lowered again: that needs privileges


def test_every_non_file_result_names_its_media_type(packaged):
    """Without a named media type BentoML builds a list or text result's JSON Schema again on
    every response, to work out that it is JSON; each API names it, so no response builds one."""
    from unittest import mock

    from _bentoml_sdk.io_models import IORootModel

    from serving.backends import SERVICES, Ocr
    from serving.service import Sightline

    checked = []
    for service in (Sightline, Ocr, *SERVICES.values()):
        for name, api in service.apis.items():
            spec = api.output_spec
            if not issubclass(spec, IORootModel):
                continue  # a pydantic model's media type is JSON without a schema
            if spec.model_json_schema().get("type") == "file":
                continue  # an image result: answered as its own format
            with mock.patch.object(spec, "model_json_schema", side_effect=AssertionError(name)):
                assert spec.mime_type() in ("application/json", "text/plain"), name
            checked.append(f"{service.name}.{name}")
    assert "sightline.classifier_predict" in checked
    assert "sightline-classifier.predict" in checked and "sightline-ocr.read" in checked
    assert len(checked) >= 20


# --- health, docs -----------------------------------------------------------------------------


def test_health_and_documented_routes(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    spec = client.get("/docs.json").json()
    for route in (
        "/classifier/predict",
        "/spam/predict",
        "/spam/predict_email",
        "/vae/reconstruct",
        "/vae/sample",
        "/vae/sample_grid",
        "/vae/interpolate",
        "/gan/sample",
        "/gan/sample_grid",
        "/clip/embed_images",
        "/clip/embed_texts",
        "/clip/zero_shot",
        "/clip/search",
        "/clip/index_image",
    ):
        assert route in spec["paths"], route
    assert "Get rich quick!!!" in json.dumps(spec)  # field examples reach the OpenAPI page
    # /metrics needs the server's Prometheus multiprocess directory: checked in test_slow


def test_not_ready_until_models_are_loaded(packaged):
    from serving.backends import SERVICES

    for service in SERVICES.values():
        inner = service.inner.__new__(service.inner)
        inner.ready = False
        assert inner.__is_ready__() is False


# --- classifier -------------------------------------------------------------------------------


def test_classifier_top_k_matches_the_in_process_model(client, local):
    imgs = [shoe(), shoe().rotate(90), Image.new("RGB", (50, 40), (200, 30, 30))]
    resp = client.post(
        "/classifier/predict",
        files=[("images", (f"{i}.png", _png(im), "image/png")) for i, im in enumerate(imgs)],
    )
    assert resp.status_code == 200, resp.text
    m = local["classifier"]
    with torch.inference_mode():
        expected = m.postprocess(m(m.preprocess(imgs)), top_k=5)
    assert resp.json() == expected
    assert [len(r) for r in resp.json()] == [5, 5, 5]
    probs = [p["probability"] for p in resp.json()[0]]
    assert probs == sorted(probs, reverse=True)


def test_image_batches_are_normalised_on_the_models_device(local):
    """The services move uint8 pixels to the model's device and normalise there; on the CPU
    that is exactly the training preprocessing ("meta" stands in for an accelerator)."""
    from serving.decoding import pixels

    imgs = [shoe(), Image.new("RGB", (50, 40), (200, 30, 30))]
    for name in ("classifier", "vae"):
        m = local[name]
        assert torch.equal(pixels(m, imgs, torch.device("cpu")), m.preprocess(imgs))
        on_meta = pixels(m, imgs, torch.device("meta"))
        assert on_meta.device.type == "meta" and on_meta.dtype == torch.float32
        assert on_meta.shape == m.preprocess(imgs).shape


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _photos() -> list[Image.Image]:
    """RGB and grey images of several sizes, with smooth and noisy regions."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for h, w in [(28, 28), (32, 32), (37, 45), (300, 400), (20, 60)]:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        a[: h // 2] = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
        out += [Image.fromarray(a), Image.fromarray(a).convert("L")]
    return out


@pytest.mark.parametrize("decoder", ["torchcodec", "torchvision"])
def test_jpegs_decoded_on_the_device_get_the_training_preprocessings_pixels(
    local, decoder, monkeypatch
):
    """A model service that decodes JPEG uploads itself (TorchCodec, or torchvision.io where
    TorchCodec cannot, then grey conversion and resizing as tensors) gives its network what the
    training preprocessing gives it from PIL: the same pixels where no resizing is needed, within
    one grey level where it is. A JPEG that does not decode is that item's error; the rest of the
    batch is answered."""
    import serving.decoding
    from serving.decoding import upload_pixels
    from serving.inputs import Jpeg

    monkeypatch.setattr(serving.decoding, "_chosen", {"cpu": decoder})
    datas = [_jpeg(img, quality=85) for img in _photos()]
    cpu = torch.device("cpu")
    for name in ("classifier", "vae"):
        p = local[name].preprocess
        want = p.to_uint8([_pil(d) for d in datas])
        got, errors = upload_pixels(local[name], [Jpeg(data=d) for d in datas], cpu)
        assert errors == [None] * len(datas) and got.dtype == torch.uint8
        diff = (got.int() - want.int()).abs()
        assert diff.max() <= 1, name
        same_size = [i for i, d in enumerate(datas) if _pil(d).size == tuple(p.size)[::-1]]
        assert same_size and all(diff[i].max() == 0 for i in same_size), name
        mixed = [Jpeg(data=d) if i % 2 else _pil(d) for i, d in enumerate(datas)]
        assert torch.equal(upload_pixels(local[name], mixed, cpu)[0][::2], want[::2])

    truncated = datas[6][: len(datas[6]) // 2]  # its header is whole: only decoding finds it
    got, errors = upload_pixels(
        local["classifier"], [Jpeg(data=datas[0]), Jpeg(data=truncated), _pil(datas[1])], cpu
    )
    assert errors[0] is None and errors[2] is None
    assert errors[1].startswith("not a decodable image")
    assert torch.equal(got[0], local["classifier"].preprocess.to_uint8([_pil(datas[0])])[0])


def test_a_service_whose_device_cannot_decode_jpegs_refuses_to_start(monkeypatch):
    """Its warm-up chooses a JPEG decoder that works on its device: torchvision.io where
    TorchCodec cannot (a TorchCodec built for another torch, say), with a warning that says why.
    If neither decodes there, the service stops with both reasons, instead of answering every
    JPEG upload with a 400."""
    from types import SimpleNamespace
    from unittest import mock

    import torchcodec.decoders
    import torchvision.io

    import serving.decoding
    from serving.backends import ClassifierModel
    from serving.inputs import CONFIG, Jpeg
    from serving.settings import ServiceConfig

    me = SimpleNamespace(name="classifier", device=torch.device("cpu"))
    img = Image.new("RGB", (16, 16), (200, 30, 30))
    assert ClassifierModel.inner.uploads(me, img) == [img]  # decode: auto, no GPU
    monkeypatch.setitem(CONFIG.services, "classifier", ServiceConfig(decode="device"))
    monkeypatch.setattr(serving.decoding, "_chosen", {})
    warm = ClassifierModel.inner.uploads(me, img)
    assert warm[0] is img and isinstance(warm[1], Jpeg)
    assert serving.decoding._chosen == {"cpu": "torchcodec"}

    def broken(*args, **kwargs):
        raise RuntimeError("nvJPEG is not available")

    monkeypatch.setattr(torchcodec.decoders, "decode_jpeg", broken)
    monkeypatch.setattr(serving.decoding, "_chosen", {})
    with mock.patch.object(serving.decoding.log, "warning") as warning:
        assert ClassifierModel.inner.uploads(me, img)[1].data == warm[1].data
    assert serving.decoding._chosen == {"cpu": "torchvision"}
    assert "torchvision (torchcodec: RuntimeError: nvJPEG is not available)" in (
        warning.call_args.args[0] % warning.call_args.args[1:]
    )

    monkeypatch.setattr(torchvision.io, "decode_jpeg", broken)
    monkeypatch.setattr(serving.decoding, "_chosen", {})
    with pytest.raises(
        RuntimeError, match="decode: JPEGs cannot be decoded on cpu .torchcodec"
    ) as e:
        ClassifierModel.inner.uploads(me, img)
    assert "torchvision: RuntimeError: nvJPEG is not available); set decode: front" in str(e.value)


def test_the_front_leaves_only_grey_and_rgb_jpegs_encoded_for_the_device():
    import asyncio

    from serving.inputs import Jpeg, decoded, open_image

    img = _photos()[2]
    jpeg, grey, cmyk = _jpeg(img), _jpeg(img.convert("L")), _jpeg(img.convert("CMYK"))
    opened = [open_image(d) for d in (jpeg, grey, cmyk, _png(img))]
    kept = asyncio.run(decoded(opened, keep_jpeg=True))
    assert [type(x).__name__ for x in kept[:2]] == ["Jpeg", "Jpeg"]
    assert [kept[0].data, kept[1].data] == [jpeg, grey]  # the upload's bytes, untouched
    assert all(isinstance(x, Image.Image) and x.getbbox() for x in kept[2:])  # decoded here
    opened = [open_image(d) for d in (jpeg, grey)]
    assert not any(isinstance(x, Jpeg) for x in asyncio.run(decoded(opened)))


def test_classifier_bad_uploads_are_4xx_with_a_reason(client):
    bad = client.post("/classifier/predict", files=upload(b"not an image at all"))
    assert_client_error(bad, 400, "not a decodable image")
    truncated = client.post("/classifier/predict", files=upload(_png(shoe())[:60]))
    assert_client_error(truncated, 400, "not a decodable image")
    wrong_type = client.post("/classifier/predict", files=upload(_png(shoe()), ctype="text/plain"))
    assert_client_error(wrong_type, 400, "content type text/plain", "image/*")
    missing = client.post("/classifier/predict", files=[("note", (None, b"x"))])
    assert_client_error(missing, 400, "images", "missing")
    as_json = client.post("/classifier/predict", json={})  # BentoML would fetch a URL body
    assert_client_error(as_json, 415, "takes multipart/form-data")
    too_many = client.post(
        "/classifier/predict",
        files=[("images", (f"{i}.png", _png(shoe()), "image/png")) for i in range(65)],
    )
    assert_client_error(too_many, 400, "at most 64")
    assert client.post("/classifier/predict", files=upload(_png(shoe()))).status_code == 200
    full = client.post(  # a request may carry max_images (64), answered in one batch
        "/classifier/predict",
        files=[("images", (f"{i}.png", _png(shoe().rotate(i)), "image/png")) for i in range(64)],
    )
    assert full.status_code == 200, full.text
    assert len(full.json()) == 64 and full.json()[0] != full.json()[45]


def test_uploads_over_the_size_limit_get_413_declared_or_chunked(client):
    from serving.service import CONFIG

    big = b"\0" * (CONFIG.max_request_bytes + 1)
    resp = client.post("/classifier/predict", files=upload(big))
    assert_client_error(resp, 413, "too large", str(CONFIG.max_request_bytes))

    def chunks():
        for _ in range(CONFIG.max_request_bytes // 2**20 + 2):
            yield b"\0" * 2**20

    resp = client.post(
        "/spam/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_client_error(resp, 413, "too large")
    assert client.get("/readyz").status_code == 200


# --- spam -------------------------------------------------------------------------------------


def _picture_of_words(text: str) -> bytes:
    from PIL import ImageDraw, ImageFont

    from sightline.mail.render import font_paths

    im = Image.new("RGB", (560, 60), "white")
    ImageDraw.Draw(im).text(
        (10, 15), text, font=ImageFont.truetype(font_paths()[0], 20), fill="black"
    )
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_spam_json_matches_the_in_process_model_and_uses_the_validated_threshold(client, local):
    img = _picture_of_words("Double your money with this exclusive offer")  # read by OCR
    messages = [
        {"subject": "free money", "body": "click now for cash"},
        {"subject": "meeting notes", "body": "", "images": [base64.b64encode(img).decode()]},
    ]
    resp = client.post("/spam/predict", json={"messages": messages})
    assert resp.status_code == 200, resp.text
    m = local["spam"]
    expected = [
        m.predict("free money", "click now for cash"),
        m.predict("meeting notes", "", [_pil(img)]),
    ]
    got = resp.json()
    for g, e in zip(got, expected, strict=True):
        assert g["spam_probability"] == e["spam_probability"] and g["label"] == e["label"]
        assert g["threshold"] == pytest.approx(0.37)
    assert got[1]["modalities"] == {"text": True, "images": 1, "image_text": True}


def test_spam_json_bad_input_is_400(client):
    empty = client.post("/spam/predict", json={"messages": [{"subject": " ", "body": ""}]})
    assert_client_error(empty, 400, "nothing to classify")
    bad_b64 = client.post("/spam/predict", json={"messages": [{"body": "x", "images": ["%%%"]}]})
    assert_client_error(bad_b64, 400, "base64")
    not_image = client.post(
        "/spam/predict",
        json={"messages": [{"body": "x", "images": [base64.b64encode(b"hello").decode()]}]},
    )
    assert_client_error(not_image, 400, "not a decodable image")
    assert_client_error(client.post("/spam/predict", json={"messages": []}), 400, "messages")
    assert_client_error(
        client.post(
            "/spam/predict", content=b"{not json", headers={"content-type": "application/json"}
        ),
        400,
    )


def test_spam_email_upload_matches_predict_email(client, local):
    raw = make_email(
        "cheap pills",
        "act now",
        images=[_picture_of_words("limited offer, buy now"), b"\x89PNG broken"],
    )
    resp = client.post("/spam/predict_email", files=upload(raw, "email", "m.eml", "message/rfc822"))
    assert resp.status_code == 200, resp.text
    expected = local["spam"].predict_email(raw)
    assert resp.json()["spam_probability"] == expected["spam_probability"]
    assert resp.json()["parse_issues"] == expected["parse_issues"] != {}
    assert resp.json()["modalities"] == {"text": True, "images": 1, "image_text": True}


def test_spam_email_rejections_are_400_with_a_reason(client):
    not_email = client.post(
        "/spam/predict_email",
        files=upload(b"\x89PNG\r\n\x1a\n\0\0", "email", "m.eml", "message/rfc822"),
    )
    assert_client_error(not_email, 400, "not an email")
    wrong_type = client.post(
        "/spam/predict_email",
        files=upload(make_email("a", "b"), "email", "m.eml", "application/pdf"),
    )
    assert_client_error(wrong_type, 400, "message/rfc822")
    empty = client.post(
        "/spam/predict_email", files=upload(b"Subject: \n\n", "email", "m.eml", "message/rfc822")
    )
    assert_client_error(empty, 400, "nothing to classify")


# --- vae / gan --------------------------------------------------------------------------------


def test_vae_reconstruct_sample_and_interpolate(client, local):
    m = local["vae"]
    resp = client.post("/vae/reconstruct", files=upload(_png(shoe())))
    assert resp.status_code == 200, resp.text
    served = _pil(base64.b64decode(resp.json()[0]))
    expected = m.postprocess(m.reconstruct(m.preprocess([shoe()])))[0]
    assert served.size == (28, 28) and served.tobytes() == expected.tobytes()

    a = client.post("/vae/sample", json={"n": 4, "seed": 3}).json()
    assert a == client.post("/vae/sample", json={"n": 4, "seed": 3}).json()
    assert a != client.post("/vae/sample", json={"n": 4, "seed": 4}).json()
    first = m.postprocess(m.sample(4, torch.Generator().manual_seed(3)))[0]
    assert _pil(base64.b64decode(a["images"][0])).tobytes() == first.tobytes()

    grid = client.post("/vae/sample_grid", json={"n": 4, "seed": 3})
    assert grid.headers["content-type"] == "image/png" and _pil(grid.content).size == (62, 62)
    strip = client.post(
        "/vae/interpolate",
        files=[
            ("a", ("a.png", _png(shoe()), "image/png")),
            ("b", ("b.png", _png(shoe().rotate(90)), "image/png")),
        ],
        data={"steps": "5"},
    )
    assert strip.status_code == 200, strip.text
    assert _pil(strip.content).size == (5 * 30 + 2, 32)


@pytest.mark.parametrize("route", ["/vae/sample", "/gan/sample", "/gan/sample_grid"])
def test_sample_counts_out_of_range_are_400(client, route):
    from serving.service import CONFIG

    for n in (0, CONFIG.max_samples + 1, "many"):
        assert_client_error(client.post(route, json={"n": n}), 400, "n")
    assert_client_error(client.post(route, json={"n": 2, "seed": -1}), 400, "seed")


def test_gan_sample_is_seeded_and_matches_the_in_process_generator(client, local):
    resp = client.post("/gan/sample", json={"n": 3, "seed": 7})
    assert resp.status_code == 200, resp.text
    expected = local["gan"].postprocess(local["gan"].sample(3, torch.Generator().manual_seed(7)))
    got = [_pil(base64.b64decode(s)) for s in resp.json()["images"]]
    assert [g.tobytes() for g in got] == [e.tobytes() for e in expected]
    grid = client.post("/gan/sample_grid", json={"n": 9, "seed": 7})
    assert grid.headers["content-type"] == "image/png" and _pil(grid.content).size == (92, 92)


def test_vae_interpolate_needs_two_images(client):
    one = client.post("/vae/interpolate", files=[("a", ("a.png", _png(shoe()), "image/png"))])
    assert_client_error(one, 400, "b")


# --- clip -------------------------------------------------------------------------------------


def test_clip_embeddings_match_the_in_process_model(client, local):
    m = local["clip"]
    texts = client.post("/clip/embed_texts", json={"texts": ["a red heart", "a dog"]})
    assert texts.status_code == 200, texts.text
    assert torch.allclose(
        torch.tensor(texts.json()), m.embed_texts(["a red heart", "a dog"]), atol=1e-6
    )
    img = Image.new("RGB", (64, 64), (200, 30, 30))
    images = client.post("/clip/embed_images", files=upload(_png(img)))
    assert torch.allclose(torch.tensor(images.json()), m.embed_images([img]), atol=1e-6)
    assert_client_error(client.post("/clip/embed_texts", json={"texts": []}), 400, "texts")


def test_a_transparent_upload_embeds_as_training_saw_it(client, local):
    """Training composites the emoji onto white (``prepare@emoji``); a transparent PNG sent to
    ``/clip/embed_images`` gets the same white, not the black under its transparent pixels."""
    from PIL import ImageDraw

    from sightline.data.decode import to_pil
    from sightline.data.emoji import decode_on_white

    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((12, 12, 52, 52), fill=(220, 30, 60, 255))
    png = _png(img)
    served = client.post("/clip/embed_images", files=upload(png))
    assert served.status_code == 200, served.text
    trained = local["clip"].embed_images([to_pil(decode_on_white(png))])
    assert torch.allclose(torch.tensor(served.json()), trained, atol=1e-6)
    on_black = local["clip"].embed_images([Image.open(io.BytesIO(png)).convert("RGB")])
    assert not torch.allclose(trained, on_black, atol=1e-3)  # the background matters


def test_clip_zero_shot_and_its_bad_input(client, local):
    labels = ["t-shirt", "sneaker", "bag"]
    resp = client.post(
        "/clip/zero_shot",
        files=upload(_png(shoe()), "image"),
        data={"labels": json.dumps(labels), "top_k": "2"},
    )
    assert resp.status_code == 200, resp.text
    assert len(resp.json()) == 2 and {r["label"] for r in resp.json()} <= set(labels)
    one_label = client.post(
        "/clip/zero_shot", files=upload(_png(shoe()), "image"), data={"labels": json.dumps(["bag"])}
    )
    assert_client_error(one_label, 400, "labels")
    no_slot = client.post(
        "/clip/zero_shot",
        files=upload(_png(shoe()), "image"),
        data={"labels": json.dumps(labels), "templates": json.dumps(["a photo"])},
    )
    assert_client_error(no_slot, 400, "templates")


def test_clip_search_ranks_the_held_out_index(client, local, prepared_emoji):
    captions = json.loads((prepared_emoji / "test_captions.json").read_text())["captions"]
    resp = client.post("/clip/search", json={"query": captions[0], "top_k": 3})
    assert resp.status_code == 200, resp.text
    hits = resp.json()
    assert len(hits) == 3 and [h["score"] for h in hits] == sorted(
        (h["score"] for h in hits), reverse=True
    )
    assert all(h["caption"] == captions[h["index"]] for h in hits)
    img = client.post("/clip/index_image", json={"index": hits[0]["index"]})
    assert img.headers["content-type"] == "image/png" and _pil(img.content).size == (64, 64)
    assert_client_error(
        client.post("/clip/index_image", json={"index": len(captions)}), 404, "no image at index"
    )
    assert_client_error(client.post("/clip/search", json={"query": ""}), 400, "query")
    assert_client_error(client.post("/clip/search", json={"query": "x", "top_k": 0}), 400, "top_k")


def test_the_service_keeps_serving_after_client_errors(client):
    for _ in range(3):
        client.post("/classifier/predict", files=upload(b"junk"))
        client.post(
            "/spam/predict_email", files=upload(b"junk", "email", "m.eml", "message/rfc822")
        )
    assert client.get("/readyz").status_code == 200
    assert client.post("/classifier/predict", files=upload(_png(shoe()))).status_code == 200
    models = client.post("/models").json()
    assert set(models) == set(NAMES) and all(v.startswith(f"{k}:") for k, v in models.items())


# --- promotion --------------------------------------------------------------------------------


def _exp_rows(values: dict[str, float | None], failed: str | None = None) -> list[dict]:
    """``dvc exp show --json`` rows: a baseline commit and one experiment per value."""

    def data(v):
        return {
            "metrics": {} if v is None else {"metrics/classifier.json": {"data": {"val/acc": v}}},
            "params": {},
        }

    exps = [
        {
            "name": n,
            "revs": [
                {
                    "rev": f"{i:040x}",
                    "name": n,
                    "data": data(v),
                    "error": {"msg": "boom"} if n == failed else None,
                }
            ],
        }
        for i, (n, v) in enumerate(values.items(), 1)
    ]
    return [
        {"rev": "workspace", "data": {}},
        {"rev": "f" * 40, "name": "main", "data": data(0.45), "experiments": exps},
    ]


def _promote(tmp_path, rows, *args):
    from conftest import REPO, run_cli

    (tmp_path / "exps.json").write_text(json.dumps(rows))
    return run_cli(
        [
            "python",
            str(REPO / "pipeline/promote.py"),
            *args,
            "--exp-json",
            "exps.json",
            "--dry-run",
        ],
        tmp_path,
    )


def test_promotion_picks_the_best_and_refuses_a_worse_one_without_force(packaged, tmp_path):
    import bentoml

    served = str(bentoml.models.get("classifier:latest").tag)  # packaged with val/acc 0.5
    (tmp_path / "bento").mkdir(parents=True)
    (tmp_path / "bento/bento.json").write_text(
        json.dumps({"bento": "sightline:x", "models": {"classifier": served}})
    )
    rows = _exp_rows({"good": 0.61, "better": 0.72, "broken": 0.99, "worse": 0.3}, failed="broken")
    best = _promote(tmp_path, rows, "classifier")
    assert best.returncode == 0 and "classifier: better" in best.stdout, best.stderr
    worse = _promote(tmp_path, rows, "classifier", "--exp", "worse")
    assert worse.returncode == 2 and "worse than the served" in worse.stderr
    assert len(worse.stderr.strip().splitlines()) == 1 and "Traceback" not in worse.stderr
    forced = _promote(tmp_path, rows, "classifier", "--exp", "worse", "--force")
    assert forced.returncode == 0 and "classifier: worse" in forced.stdout


def test_promotion_names_a_spread_measured_with_other_params(tmp_path):
    import yaml
    from conftest import REPO

    from sightline.params import load_section

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    _, section = load_section(REPO / "params.yaml", "classifier")
    (tmp_path / "metrics/spread").mkdir(parents=True)
    spread = {
        "seeds": [42, 43, 44],
        "section": section.model_dump(mode="json"),
        "metrics": {"val/acc": {"std": 0.001}},
    }
    (tmp_path / "metrics/spread/classifier.json").write_text(json.dumps(spread))
    rows = _exp_rows({"good": 0.61})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    same = _promote(tmp_path, rows, "classifier")
    assert same.returncode == 0 and "other params" not in same.stdout, same.stderr
    raw["models"]["classifier"]["model"]["lr"] *= 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    other = _promote(tmp_path, rows, "classifier")
    assert other.returncode == 0, other.stderr
    assert "was measured with other params (model.lr)" in other.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["nosuchmodel"], "unknown model 'nosuchmodel'"),
        (
            ["classifier", "--exp", "nosuchexp"],
            "unknown experiment 'nosuchexp' (experiments: good, broken)",
        ),
        (["classifier", "--exp", "broken"], "experiment 'broken' failed: boom"),
        (["gan"], "no experiment has gan's val/fid"),
    ],
)
def test_promotion_refuses_unknown_or_unscored_choices_in_one_line(tmp_path, args, needle):
    result = _promote(tmp_path, _exp_rows({"good": 0.6, "broken": 0.9}, failed="broken"), *args)
    assert result.returncode == 2, result.stdout
    assert result.stderr.strip() == f"error: {needle}" or needle in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_choose_follows_each_models_direction():
    from sightline.leaderboard import Experiment, better, choose

    exps = [
        Experiment(
            "a", "a" * 40, metrics={"vae": {"val/nelbo": 240.0}, "classifier": {"val/acc": 0.9}}
        ),
        Experiment(
            "b", "b" * 40, metrics={"vae": {"val/nelbo": 230.0}, "classifier": {"val/acc": 0.8}}
        ),
    ]
    assert choose(exps, "vae")[0].name == "b" and choose(exps, "classifier")[0].name == "a"
    assert choose(exps, "vae", "a")[1] == 240.0 and choose(exps, "vae", "b" * 8)[0].name == "b"
    assert better("vae", 1.0, 2.0) and not better("classifier", 1.0, 2.0)
    assert not better("classifier", 0.5, 0.5)


def test_the_bento_is_a_v2_image_with_the_wheel_and_tesseract(packaged, caplog, monkeypatch):
    """The package stage's build: no fallback to the v1 Bento format, the sightline wheel and
    Tesseract in the image, the model versions pinned."""
    import logging
    import sys

    import bentoml
    from conftest import REPO

    from serving.settings import load_serving_config

    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO / "pipeline"))
    sys.modules.pop("package", None)
    import package

    tags = {name: str(bentoml.models.get(f"{name}:latest").tag) for name in NAMES}
    with caplog.at_level(logging.INFO):
        bento = package.build_bento(
            load_serving_config("serving/params.yaml"), "0123456789abcdef", tags
        )
    assert not [
        r
        for r in caplog.records
        if "v1" in r.getMessage() or "not supported by bento v2" in r.getMessage()
    ]
    root = Path(bento.path)
    requirements = (root / "env/python/requirements.txt").read_text()
    assert "./wheels/sightline-" in requirements
    wheels = list((root / "src/wheels").glob("sightline-*.whl"))
    assert len(wheels) == 1 and f"./wheels/{wheels[0].name}" in requirements
    assert "tesseract-ocr" in (
        root / "env/docker/Dockerfile"
    ).read_text() or "tesseract-ocr" in json.dumps(bento.info.to_dict(), default=str)
    assert json.loads((root / "src/serving/models.json").read_text()) == tags
    modules = sorted(p.name for p in (REPO / "serving").glob("*.py"))  # every one it imports
    assert "coalesce.py" in modules
    assert sorted(p.name for p in (root / "src/serving").glob("*.py")) == modules


def test_transfer_predicts_cifar_labels_through_the_whole_backbone(client, packaged):
    """Any image -> top-5 CIFAR-10 labels; the probabilities are the packaged module's own
    on the same image (the route adds nothing of its own)."""
    import torch

    from sightline.inference import load_module

    img = Image.new("RGB", (50, 40), (200, 30, 30))
    resp = client.post("/transfer/predict", files=upload(_png(img)))
    assert resp.status_code == 200, resp.text
    top = resp.json()[0]
    module = load_module(packaged["transfer"], "transfer")
    assert {t["label"] for t in top} <= set(module.hparams.class_names) and len(top) == 5
    with torch.no_grad():
        logits = module(module.preprocess(list([img])))
    expected = module.postprocess(logits, top_k=5)[0]
    assert [t["label"] for t in top] == [t["label"] for t in expected]
    assert_client_error(client.post("/transfer/predict", files=upload(b"junk")), 400, "images")


def test_transfer_work_is_bounded_at_the_backbones_resolution(client):
    """A 1x1 PNG costs the backbone as much as a photo (both become 224 x 224): the images a
    request may send are as many as ``max_network_pixels`` holds at that size. One more is a
    413 naming the limit, refused before anything is decoded; the 28 x 28 classifier's images
    fit many times over."""
    from serving.inputs import CONFIG

    fit = CONFIG.max_network_pixels // (224 * 224)
    assert 1 <= fit < CONFIG.max_images
    tiny = _png(Image.new("RGB", (1, 1)))
    ok = client.post("/transfer/predict", files=upload(tiny) * fit)
    assert ok.status_code == 200 and len(ok.json()) == fit, ok.text
    over = client.post("/transfer/predict", files=upload(tiny) * (fit + 1))
    assert_client_error(over, 413, "224x224", str(CONFIG.max_network_pixels), f"({fit} images)")
    many = client.post("/classifier/predict", files=upload(tiny) * CONFIG.max_images)
    assert many.status_code == 200, many.text
