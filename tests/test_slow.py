"""Real-data checks (minutes each): `make test-slow`."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, free_port, run_cli, wait_ready

pytestmark = pytest.mark.slow

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FASHION.exists(), reason="dataset-fashion-mnist not installed")
@pytest.mark.parametrize("name", ["classifier", "vae", "gan"])
def test_rerun_matches_committed_metrics(name):
    """Same params + seed on the CPU -> identical metrics/<name>.json (time excluded).

    The generative models are scored with the committed ``models/classifier``.
    """
    if not (REPO / "data/prepared/fashion_mnist/meta.json").exists():
        assert run_cli(["dvc", "repro", "prepare@fashion_mnist"], REPO).returncode == 0
    if name != "classifier" and not (REPO / "models/classifier/model.safetensors").exists():
        assert run_cli(["dvc", "repro", "train@classifier"], REPO, timeout=1800).returncode == 0
    result = run_cli(["python", "pipeline/check_reproducible.py", name], REPO, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]


def _post(url: str, body: bytes, ctype: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_packaged_bento_serves_every_model_over_http(tmp_path):
    """`dvc repro package`'s script builds the Bento from the trained models into the session's
    store; `bentoml serve <bento>` answers the BentoML client and raw HTTP like the in-process
    models, refuses bad input with 4xx and exposes /metrics."""
    import json
    import os
    import signal
    import subprocess
    import sys

    import bentoml
    import torch
    from conftest import make_email
    from PIL import Image

    from sightline.inference import load_module

    if not all(
        (REPO / f"models/{n}/model.safetensors").exists()
        for n in ("classifier", "spam", "vae", "gan", "clip")
    ):
        pytest.skip("trained models missing: run `dvc repro` (or `dvc pull`) first")
    result = run_cli(
        ["python", "pipeline/package.py", "--out", str(tmp_path / "bento")], REPO, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    built = json.loads((tmp_path / "bento/bento.json").read_text())
    tag = built["bento"]
    assert bentoml.bentos.get(tag).info.labels["project"] == "sightline"
    # a newer `gan` in the store (as a later experiment's package run leaves) must not be served
    from package import package_model

    newer = package_model("gan", REPO / "models/gan", {"fid": 1.0}, {}, "0" * 40, "newer")
    assert str(newer) != built["models"]["gan"]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_ready(url, proc)
        img = Image.new("L", (28, 28), 10)
        img.paste(220, (6, 4, 22, 24))
        png = tmp_path / "item.png"
        img.save(png)
        eml = tmp_path / "offer.eml"
        eml.write_bytes(make_email("cheap pills", "act now, limited offer, click here"))
        clf = load_module(REPO / "models/classifier", "classifier", "cpu")
        spam = load_module(REPO / "models/spam", "spam", "cpu")
        with torch.inference_mode():
            expected = clf.postprocess(clf(clf.preprocess([Image.open(png)])), top_k=5)[0]

        with bentoml.SyncHTTPClient(url) as client:
            assert client.models() == built["models"]  # the versions the Bento was built with
            assert client.classifier_predict(images=[png]) == [expected]
            got = client.spam_predict_email(email=eml)
            assert (
                got["spam_probability"] == spam.predict_email(eml.read_bytes())["spam_probability"]
            )
            batch = client.spam_predict(messages=[{"subject": "cheap pills", "body": "act now"}])
            assert batch[0]["label"] in ("ham", "spam")
            assert len(client.vae_sample(n=3, seed=1)["images"]) == 3
            hits = client.clip_search(query="a red heart", top_k=3)
            assert len(hits) == 3 and hits[0]["score"] >= hits[-1]["score"]

        status, body = _post(f"{url}/gan/sample", b'{"n": 2, "seed": 5}', "application/json")
        assert status == 200 and len(json.loads(body)["images"]) == 2
        status, body = _post(f"{url}/gan/sample", b'{"n": 100000}', "application/json")
        assert status == 400 and b"less than or equal" in body
        boundary = "sightlineboundary"
        bad = f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.png"\r\nContent-Type: image/png\r\n\r\nnot a png\r\n--{boundary}--\r\n'.encode()
        status, body = _post(
            f"{url}/classifier/predict", bad, f"multipart/form-data; boundary={boundary}"
        )
        assert status == 400 and b"not a decodable image" in body
        status, _ = _post(
            f"{url}/spam/predict_email", b"x" * (11 * 2**20), "multipart/form-data; boundary=x"
        )
        assert status == 413
        import urllib.request

        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
            assert b"bentoml_service_request_total" in r.read()
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as r:
            assert r.status == 200  # still serving after the bad requests
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
