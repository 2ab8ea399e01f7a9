"""The real ``bentoml serve`` of the tiny packaged models, driven over HTTP as a hostile client.

Schemathesis generates requests for every operation from the server's own OpenAPI document and
checks there is no server error and every response matches the document. Then each malformed or
oversized request a fuzzer or an attacker would send gets its 4xx with a reason, and none of
them moves the server's memory by more than the budget allows.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import make_email
from PIL import Image

EXAMPLES = int(os.environ.get("SIGHTLINE_FUZZ_EXAMPLES", "100"))  # per operation
RSS_BUDGET_MB = 256


def post(url: str, body: bytes, ctype: str, timeout: float = 120) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, data = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, data = err.code, err.read()
    try:
        return status, json.loads(data)
    except ValueError:
        return status, {"raw": data[:200]}


def multipart(
    parts: list[tuple[str, str | None, str | None, bytes]], boundary: str = "sightlinetestboundary"
) -> tuple[bytes, str]:
    """``(name, filename, content type, data)`` parts -> ``(body, content type)``."""
    out = io.BytesIO()
    for name, filename, ctype, data in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"Content-Disposition: {disposition}\r\n".encode())
        if ctype:
            out.write(f"Content-Type: {ctype}\r\n".encode())
        out.write(b"\r\n" + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def png(size: int, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), 0).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return (
        sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)] if p.is_running())
        / 2**20
    )


# Multipart cannot tell an empty array from an absent field: schemathesis' negative case
# "steps = []" (an integer made an array) arrives as no field at all, and with the default it is
# a valid request. Those two operations (optional scalars in multipart) run every other check.
OPTIONAL_MULTIPART_SCALARS = "^/(vae/interpolate|clip/zero_shot)$"
# The routes of a task (`?task_id=` in the query) run on one schemathesis worker: with two, its
# coverage phase crashes on them inside CPython 3.11's ast.parse (a SystemError, "AST
# constructor recursion depth mismatch", while hypothesis describes a filter lambda).
TASKS = "^/spam/predict_mailbox/"
NOT_FUZZED = f"^/(vae/interpolate|clip/zero_shot)$|{TASKS}"


def _json_routes() -> str:
    """The routes whose every input schemathesis can generate (JSON bodies): there a request
    the document calls valid must be accepted (positive_data_acceptance)."""
    from serving.guard import JSON
    from serving.service import ROUTES

    # /spam/predict's images are base64 images, which a generator does not make
    paths = sorted(p for p, r in ROUTES.items() if r.media_type == JSON and p != "/spam/predict")
    return "^(" + "|".join(paths) + ")$"


@pytest.mark.parametrize(
    "filters,excluded,workers",
    [
        (["--include-path-regex", "JSON_ROUTES"], [], 2),
        (
            ["--exclude-path-regex", "NOT_FUZZED_OR_JSON"],
            ["positive_data_acceptance"],
            2,
        ),
        (
            ["--include-path-regex", OPTIONAL_MULTIPART_SCALARS],
            ["negative_data_rejection", "positive_data_acceptance"],
            2,
        ),
        (["--include-path-regex", TASKS], ["positive_data_acceptance"], 1),
    ],
    ids=["json-operations", "file-operations", "optional-multipart-scalars", "task-routes"],
)
def test_schemathesis_finds_no_server_error_and_no_undocumented_response(
    live_server, tmp_path, filters, excluded, workers
):
    """Every check but ignored_auth (no token is set) and missing_required_header (none is
    required); positive_data_acceptance (a request the document calls valid is accepted) on
    the routes whose inputs are all generatable: random bytes are rarely a decodable image, an
    mbox or a task id, and a 400 is the right answer to them. At least ``EXAMPLES`` generated
    requests per operation."""
    named = {"JSON_ROUTES": _json_routes(), "NOT_FUZZED_OR_JSON": f"{NOT_FUZZED}|{_json_routes()}"}
    filters = [named.get(f, f) for f in filters]
    url, _ = live_server
    st = Path(sys.executable).parent / "st"
    report = tmp_path / "report"
    skipped = ",".join(["ignored_auth", "missing_required_header", *excluded])
    cmd = [
        str(st),
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        f"{url}/docs.json",
        "--checks",
        "all",
        "--exclude-checks",
        skipped,
        *filters,
        "--max-examples",
        str(EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        str(workers),
        "--request-timeout",
        "60",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(report),
        "--seed",
        "0",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    (tmp_path / "schemathesis.txt").write_text(done.stdout + done.stderr)
    tail = "\n".join(done.stdout.splitlines()[-60:])
    print(tail.split("Test cases:")[-1].strip().splitlines()[0] if "Test cases:" in tail else tail)
    assert done.returncode == 0, tail


# --- the malformed and oversized inputs, each with its status and reason ----------------------

MULTIPART_ROUTES = [
    "/classifier/predict",
    "/clip/embed_images",
    "/clip/zero_shot",
    "/spam/predict_email",
    "/spam/predict_mailbox",
    "/spam/predict_mailbox/submit",
    "/vae/interpolate",
    "/vae/reconstruct",
]
BIG = 4096  # side of the largest image one request may hold


def _raw_multipart(body: bytes, boundary: str = "X") -> tuple[bytes, str]:
    return body, f"multipart/form-data; boundary={boundary}"


def _zero_shot(template: str) -> tuple[bytes, str]:
    return multipart(
        [
            ("image", "a.png", "image/png", png(28)),
            ("labels", None, None, b'["cat", "dog"]'),
            ("templates", None, None, json.dumps([template]).encode()),
        ]
    )


BAD = {
    "no boundary": ("/classifier/predict", lambda: (b"", "multipart/form-data"), 400, "boundary"),
    "boundary over 200 characters": (
        "/classifier/predict",
        lambda: multipart([("images", "a.png", "image/png", png(28))], "b" * 300),
        400,
        "boundary",
    ),
    "1,001 fields": (
        "/clip/zero_shot",
        lambda: multipart([(f"f{i}", None, None, b"1") for i in range(1001)]),
        400,
        "fields",
    ),
    "1,001 files": (
        "/classifier/predict",
        lambda: multipart([("images", f"{i}.png", "image/png", b"x") for i in range(1001)]),
        400,
        "files",
    ),
    "a 100 KB part header": (
        "/classifier/predict",
        lambda: _raw_multipart(
            b'--X\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\nX-Pad: '
            + b"a" * 100_000
            + b"\r\n\r\nxx\r\n--X--\r\n"
        ),
        400,
        "header",
    ),
    "a bare CR in a part header": (
        "/classifier/predict",
        lambda: _raw_multipart(
            b'--X\r\nContent-Disposition: form-data;\r name="images"\r\n\r\nxx\r\n--X--\r\n'
        ),
        400,
        "multipart",
    ),
    "a part without headers": (
        "/classifier/predict",
        lambda: _raw_multipart(b"--X\r\nA\r\n--X--\r\n"),
        400,
        "multipart",
    ),
    "a file field sent as a URL": (
        "/classifier/predict",
        lambda: multipart([("images", None, None, b"https://example.com/a.png")]),
        400,
        "never fetched",
    ),
    "template with two slots": (
        "/clip/zero_shot",
        lambda: _zero_shot("{} and {}"),
        400,
        "exactly one",
    ),
    "template with a field name": (
        "/clip/zero_shot",
        lambda: _zero_shot("{x} {}"),
        400,
        "exactly one",
    ),
    "template with a huge width": (
        "/clip/zero_shot",
        lambda: _zero_shot("{{}}{0:x>10000000}"),
        400,
        "exactly one",
    ),
    "16 PNGs of 4096x4096": (
        "/classifier/predict",
        lambda: multipart([("images", f"{i}.png", "image/png", png(BIG)) for i in range(16)]),
        413,
        "pixels",
    ),
    "one image over the pixel budget": (
        "/vae/reconstruct",
        lambda: multipart([("images", "a.png", "image/png", png(BIG + 1))]),
        413,
        "pixels",
    ),
    "spam JSON with 16 such images": (
        "/spam/predict",
        lambda: (
            json.dumps(
                {
                    "messages": [
                        {
                            "body": "x",
                            "images": [__import__("base64").b64encode(png(BIG)).decode()] * 16,
                        }
                    ]
                }
            ).encode(),
            "application/json",
        ),
        413,
        "pixels",
    ),
    "an email with a 9 MB header line": (
        "/spam/predict_email",
        lambda: multipart(
            [
                (
                    "email",
                    "m.eml",
                    "message/rfc822",
                    b"Subject: " + b"a" * 9_000_000 + b"\r\n\r\nhello\r\n",
                )
            ]
        ),
        413,
        "header line",
    ),
    "an email with 150,000 MIME parts": (
        "/spam/predict_email",
        lambda: multipart(
            [
                (
                    "email",
                    "m.eml",
                    "message/rfc822",
                    b'Subject: hi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
                    + b"--B\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n" * 150_000
                    + b"--B--\r\n",
                )
            ]
        ),
        413,
        "MIME parts",
    ),
    "a 100,000-letter word": (
        "/clip/embed_texts",
        lambda: (json.dumps({"texts": ["a" * 100_000]}).encode(), "application/json"),
        400,
        "at most 1000",
    ),
    "200 texts": (
        "/clip/embed_texts",
        lambda: (json.dumps({"texts": ["a cat"] * 200}).encode(), "application/json"),
        400,
        "at most 64",
    ),
    "zero-shot prompts over the request's characters": (
        "/clip/zero_shot",
        lambda: multipart(
            [
                ("image", "a.png", "image/png", png(28)),
                ("labels", None, None, json.dumps(["a" * 100] * 64).encode()),
                ("templates", None, None, json.dumps(["{} " + "b" * 100] * 16).encode()),
            ]
        ),
        413,
        "characters",
    ),
    "a body over 10 MiB": (
        "/classifier/predict",
        lambda: multipart([("images", "a.png", "image/png", b"\0" * (10 * 2**20 + 1))]),
        413,
        "too large",
    ),
    "seed true": (
        "/gan/sample",
        lambda: (b'{"n": 2, "seed": true}', "application/json"),
        400,
        "seed",
    ),
    "a file field sent urlencoded": (
        "/classifier/predict",
        lambda: (b"images=https%3A%2F%2Fexample.com%2Fa.png", "application/x-www-form-urlencoded"),
        415,
        "takes multipart/form-data",
    ),
    "no such route": ("/nosuchroute", lambda: (b"{}", "application/json"), 404, "no such route"),
}


@pytest.mark.parametrize("route", MULTIPART_ROUTES)
def test_multipart_without_a_boundary_is_400_on_every_route(live_server, route):
    url, _ = live_server
    status, body = post(url + route, b"", "multipart/form-data")
    assert status == 400 and "boundary" in body["error"], (status, body)


@pytest.mark.parametrize("route", ["/models", "/gan/sample", "/clip/search", "/spam/predict"])
def test_a_json_route_refuses_a_form_with_415(live_server, route):
    url, _ = live_server
    status, body = post(url + route, b"", "multipart/form-data")
    assert status == 415 and "application/json" in body["error"], (status, body)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_4xx_with_a_reason_and_the_server_stays_ready(live_server, case):
    url, proc = live_server
    route, make, expected, words = BAD[case]
    body, ctype = make()
    status, reply = post(url + route, body, ctype)
    assert status == expected, (status, reply)
    assert set(reply) <= {"error", "detail"} and words in reply["error"], reply
    with urllib.request.urlopen(f"{url}/readyz", timeout=10) as r:
        assert r.status == 200


def test_an_email_with_20_big_attachments_is_read_within_the_budget(live_server):
    url, _ = live_server
    big = png(BIG, "RGB")
    raw = make_email("offer", "see the pictures", images=[big] * 20)
    status, reply = post(
        url + "/spam/predict_email", *multipart([("email", "m.eml", "message/rfc822", raw)])
    )
    assert status == 200, reply
    assert reply["modalities"]["images"] == 1  # one 4096x4096 image fills the pixel budget
    assert reply["parse_issues"]["images_over_budget"] == 19  # sized from headers, never decoded


def test_a_9_mb_html_email_is_cut_before_it_is_parsed(live_server):
    url, _ = live_server
    raw = b"Subject: hi\r\nContent-Type: text/html\r\n\r\n" + b"<p>word <b>x</b></p>" * 450_000
    status, reply = post(
        url + "/spam/predict_email", *multipart([("email", "m.eml", "message/rfc822", raw)])
    )
    assert status == 200 and reply["parse_issues"]["text_truncated"] == 1, reply


AMPLIFIERS = [
    "16 PNGs of 4096x4096",
    "one image over the pixel budget",
    "spam JSON with 16 such images",
    "an email with a 9 MB header line",
    "an email with 150,000 MIME parts",
    "a 100,000-letter word",
    "zero-shot prompts over the request's characters",
]


def test_no_request_raises_the_servers_memory_past_the_budget(live_server):
    """Each amplification case, three times, then a request at the pixel budget: the server's
    RSS (its whole process tree) grows by at most 256 MB over its value after warm-up."""
    url, proc = live_server
    for route, make, _, _ in (BAD[c] for c in AMPLIFIERS[:1]):  # warm-up: allocator pools
        post(url + route, *make())
    start = rss_mb(proc.pid)
    peak = start
    for case in AMPLIFIERS:
        route, make, _, _ = BAD[case]
        body = make()
        for _ in range(3):
            post(url + route, *body)
            peak = max(peak, rss_mb(proc.pid))
    at_budget = multipart([("images", "a.png", "image/png", png(BIG, "RGB"))])
    for _ in range(3):
        assert post(url + "/classifier/predict", *at_budget)[0] == 200
        peak = max(peak, rss_mb(proc.pid))
    print(
        f"server RSS after warm-up {start:.0f} MiB, peak over the amplification cases {peak:.0f} MiB (+{peak - start:.0f})"
    )
    assert peak - start <= RSS_BUDGET_MB, f"RSS {start:.0f} MB -> peak {peak:.0f} MB"


def get(url: str, timeout: float = 60) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def mbox(emails: list[bytes]) -> bytes:
    """An mbox file of ``emails`` (mboxrd: body lines starting with "From " quoted)."""
    out = []
    for raw in emails:
        lines = raw.replace(b"\r\n", b"\n").split(b"\n")
        body = b"\n".join(b">" + ln if ln.startswith((b"From ", b">From ")) else ln for ln in lines)
        out.append(b"From sender@example.invalid Mon Nov 30 12:00:00 2026\n" + body + b"\n\n")
    return b"".join(out)


def run_task(url: str, route: str, body: bytes, ctype: str) -> tuple[int, dict | list]:
    """Submit a task, poll its status until it ends, and return ``/get``'s status and body."""
    import time

    status, task = post(f"{url}{route}/submit", body, ctype)
    assert status == 200 and task["status"] == "in_progress", task
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status, state = get(f"{url}{route}/status?task_id={task['task_id']}")
        assert status == 200, state
        if state["status"] in ("success", "completed", "failure", "failed"):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"task {task} still running after 180 s")
    return get(f"{url}{route}/get?task_id={task['task_id']}")


def test_a_mailbox_task_classifies_each_email_as_predict_email_does(live_server):
    """Bulk mail: an mbox of 20 emails (one with an image, one empty) submitted as a task; every
    email gets the result /spam/predict_email gives it, in order, and the empty one its reason."""
    url, _ = live_server
    emails = [make_email(f"offer {i}", f"cheap pills number {i}\nFrom now on") for i in range(18)]
    emails.insert(3, make_email("see the picture", "look", images=[png(40, "RGB")]))
    emails.insert(7, b"Subject: \r\n\r\n")
    status, results = run_task(
        url,
        "/spam/predict_mailbox",
        *multipart([("mailbox", "inbox.mbox", "application/mbox", mbox(emails))]),
    )
    assert status == 200, results
    assert [r["index"] for r in results] == list(range(20))
    assert results[7]["result"] is None and "nothing to classify" in results[7]["error"]
    assert results[3]["result"]["modalities"]["images"] == 1
    for i in (0, 3, 19):
        status, alone = post(
            url + "/spam/predict_email",
            *multipart([("email", "m.eml", "message/rfc822", emails[i])]),
        )
        assert status == 200, alone
        got = results[i]["result"]
        assert got["spam_probability"] == pytest.approx(alone["spam_probability"], abs=1e-5)
        assert got["label"] == alone["label"] and got["modalities"] == alone["modalities"]
    subjects = [r["subject"] for r in results]
    assert subjects[:4] == ["offer 0", "offer 1", "offer 2", "see the picture"]
    assert subjects[7] == "" and subjects[19] == "offer 17"


@pytest.mark.parametrize(
    "data,status,reason",
    [
        (b"Subject: hi\n\nno From line, so not an mbox\n", 400, "no emails in the mailbox"),
        (mbox([b"Subject: x\r\n\r\ny"] * 1001), 413, "1001 emails in the mailbox: at most 1000"),
    ],
    ids=["not-an-mbox", "over-the-budget"],
)
def test_a_bad_mailbox_task_fails_with_a_reason(live_server, data, status, reason):
    url, _ = live_server
    got, body = run_task(
        url,
        "/spam/predict_mailbox",
        *multipart([("mailbox", "inbox.mbox", "application/mbox", data)]),
    )
    assert got == status and reason in json.dumps(body), body


@pytest.mark.parametrize(
    "body,expected,reason",
    [
        (multipart([("other", None, None, b"x")]), 400, "mailbox: missing (a file upload)"),
        (multipart([("mailbox", None, None, b"From x\n")]), 400, "mailbox: expected a file"),
        ((b'{"mailbox": "inbox.mbox"}', "application/json"), 415, "takes multipart/form-data"),
        (
            multipart([("mailbox", "a.mbox", "text/plain", b"From x\n")]),
            400,
            "expected application/mbox",
        ),
    ],
    ids=["no-upload", "text-field", "json", "wrong-type"],
)
def test_a_task_submitted_without_its_upload_is_refused_at_once(
    live_server, body, expected, reason
):
    """A task's submit route answers before its input is read: the guard checks the upload, so
    no task id is handed out for a request the task could not run."""
    url, _ = live_server
    status, reply = post(url + "/spam/predict_mailbox/submit", *body)
    assert status == expected and reason in reply["error"], reply
    assert "task_id" not in reply


def test_a_task_cannot_be_cancelled_on_the_local_server_and_says_so(live_server):
    url, _ = live_server
    req = urllib.request.Request(url + "/spam/predict_mailbox/cancel?task_id=x", method="PUT")
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("cancel answered 2xx")
    except urllib.error.HTTPError as err:
        assert err.code == 400 and "not supported" in json.loads(err.read())["error"]


def test_concurrent_requests_each_get_their_own_answer(live_server):
    """The front merges concurrent requests' images into shared calls to the model services
    (``serving.coalesce``); under 24 concurrent clients every request still gets the answer it
    gets alone, for its own images, in its own order."""
    from concurrent.futures import ThreadPoolExecutor

    url, _ = live_server

    def image(i: int) -> bytes:
        buf = io.BytesIO()
        img = Image.new("RGB", (32, 32), ((37 * i) % 256, (91 * i) % 256, (151 * i) % 256))
        img.paste((255 - (37 * i) % 256, 0, 0), (i % 20, 3, i % 20 + 10, 20))
        img.save(buf, format="PNG")
        return buf.getvalue()

    requests = [[image(i), image(i + 7)][: 1 + i % 2] for i in range(24)]  # 1 or 2 images each

    def ask(route: str, images: list[bytes]):
        status, body = post(
            url + route,
            *multipart([("images", f"{j}.png", "image/png", im) for j, im in enumerate(images)]),
        )
        assert status == 200, body
        return body

    def probabilities(answer) -> list[list[float]]:
        return [sorted((h["probability"] for h in hits), reverse=True) for hits in answer]

    def close(a: list[float], b: list[float], tol: float) -> bool:
        return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) < tol

    for route, values in (
        ("/classifier/predict", probabilities),
        ("/clip/embed_images", lambda answer: answer),
    ):
        alone = [values(ask(route, r)) for r in requests]
        if route == "/clip/embed_images":  # distinct: an answer sent to the wrong request shows
            firsts = [a[0] for a in alone]
            assert not any(close(a, b, 1e-3) for i, a in enumerate(firsts) for b in firsts[i + 1 :])
        with ThreadPoolExecutor(24) as pool:
            together = list(pool.map(lambda r, v=values, p=route: v(ask(p, r)), requests * 3))
        for got, want in zip(together, alone * 3, strict=True):
            assert len(got) == len(want), route
            assert all(close(g, w, 1e-4) for g, w in zip(got, want, strict=True)), route


def test_served_answers_equal_the_in_process_model_on_every_image_format(live_server, packaged):
    """Decoded uploads cross from the front to the model services pickled as they are: a JPEG
    or WebP upload is not re-encoded on the way (lossy, at the encoder's default quality), so
    the served model sees the pixels the in-process model sees."""
    import numpy as np
    import torch

    from sightline.inference import load_module

    url, _ = live_server
    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8))
    uploads = []
    for fmt, mode in [
        ("JPEG", "RGB"),
        ("JPEG", "L"),
        ("WEBP", "RGB"),
        ("PNG", "RGBA"),
        ("GIF", "P"),
    ]:
        buf = io.BytesIO()
        src.convert(mode).save(buf, format=fmt)
        uploads.append((fmt, buf.getvalue()))
    opened = [Image.open(io.BytesIO(data)) for _, data in uploads]
    local = {name: load_module(packaged[name], name, "cpu") for name in ("classifier", "clip")}
    body = multipart(
        [
            ("images", f"{i}.img", f"image/{fmt.lower()}", data)
            for i, (fmt, data) in enumerate(uploads)
        ]
    )

    status, embeddings = post(url + "/clip/embed_images", *body)
    assert status == 200, embeddings
    want = local["clip"].embed_images(opened)
    for (fmt, _), got, w in zip(uploads, embeddings, want.tolist(), strict=True):
        assert max(abs(a - b) for a, b in zip(got, w, strict=True)) < 1e-5, fmt

    status, hits = post(url + "/classifier/predict", *body)
    assert status == 200, hits
    m = local["classifier"]
    with torch.inference_mode():
        want = m.postprocess(m(m.preprocess(opened)).float(), top_k=len(hits[0]))
    for (fmt, _), got, w in zip(uploads, hits, want, strict=True):
        probs = {h["label"]: h["probability"] for h in w}
        assert all(abs(h["probability"] - probs.get(h["label"], -1)) < 1e-5 for h in got), fmt


@pytest.fixture(scope="module")
def device_decoding_server(packaged, tmp_path_factory):
    """The tiny models served as on a GPU machine: classifier and vae decode their JPEG uploads
    themselves (``services.<name>.decode: device``; here their device is the CPU)."""
    import yaml
    from conftest import REPO, bentoml_serve

    params = yaml.safe_load((REPO / "serving" / "params.yaml").read_text())
    for name in ("classifier", "vae"):
        params["services"][name]["decode"] = "device"
    tmp = tmp_path_factory.mktemp("device-decoding")
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    with bentoml_serve(tmp / "server.log", tmp / "params.yaml") as served:
        yield served


def test_jpegs_the_model_service_decodes_are_answered_as_in_process(
    device_decoding_server, packaged
):
    """JPEG uploads cross to the model service as their bytes and are decoded there, beside
    PNGs the front decoded: each answer equals the in-process model on the same path, and a
    JPEG whose header is whole but whose data is truncated is the request's 400, naming it,
    without touching the requests batched with it."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch

    from serving.decoding import upload_pixels
    from serving.inputs import Jpeg
    from sightline.inference import load_module

    url, _ = device_decoding_server
    rng = np.random.default_rng(1)
    src = Image.fromarray(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8))
    uploads = []
    for fmt, mode in [("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB")]:
        buf = io.BytesIO()
        src.convert(mode).save(buf, format=fmt)
        uploads.append((fmt, buf.getvalue()))
    items = [Jpeg(data=d) if fmt == "JPEG" else Image.open(io.BytesIO(d)) for fmt, d in uploads]
    body = multipart(
        [("images", f"{i}.img", f"image/{fmt.lower()}", d) for i, (fmt, d) in enumerate(uploads)]
    )
    m = load_module(packaged["classifier"], "classifier", "cpu")
    with torch.inference_mode():
        x, errors = upload_pixels(m, items, torch.device("cpu"))
        want = m.postprocess(m(m.preprocess.normalize(x)).float(), top_k=5)
    assert errors == [None] * 3

    status, hits = post(url + "/classifier/predict", *body)
    assert status == 200, hits
    for (fmt, _), got, w in zip(uploads, hits, want, strict=True):
        probs = {h["label"]: h["probability"] for h in w}
        assert all(abs(h["probability"] - probs.get(h["label"], -1)) < 1e-5 for h in got), fmt
    status, recons = post(url + "/vae/reconstruct", *body)
    assert status == 200 and len(recons) == 3, recons

    truncated = uploads[0][1][: len(uploads[0][1]) // 2]
    bad = multipart(
        [
            ("images", "0.png", "image/png", uploads[2][1]),
            ("images", "1.jpg", "image/jpeg", truncated),
        ]
    )
    for route in ("/classifier/predict", "/vae/reconstruct"):
        status, err = post(url + route, *bad)
        assert status == 400, (route, err)
        assert "image 2: not a decodable image" in err["error"], (route, err)
    # sent together, so the front merges them into shared calls: only the bad ones fail
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda b: post(url + "/classifier/predict", *b), [body, bad] * 8))
    assert [s for s, _ in together] == [200, 400] * 8
    assert all(r == hits for _, r in together[::2])
