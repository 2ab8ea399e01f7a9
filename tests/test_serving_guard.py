"""The service's front door (``serving.guard``) and its OpenAPI document.

The guard is tested around a stand-in ASGI app, so each behaviour (token, concurrency limit,
error bodies, logs) is seen alone; the OpenAPI document is the real service's.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from starlette.testclient import TestClient


def _guard(monkeypatch, app, token: str | None = None, public_metrics: bool = False, **limits):
    from serving.guard import JSON, MULTIPART, Guard, RouteSpec
    from serving.inputs import CONFIG

    monkeypatch.delenv("SIGHTLINE_API_TOKEN", raising=False)
    monkeypatch.delenv("SIGHTLINE_PUBLIC_METRICS", raising=False)
    if token:
        monkeypatch.setenv("SIGHTLINE_API_TOKEN", token)
    if public_metrics:
        monkeypatch.setenv("SIGHTLINE_PUBLIC_METRICS", "1")
    config = CONFIG.model_copy(update=limits)
    return Guard(
        app,
        config=config,
        routes={
            "/upload": RouteSpec(MULTIPART, {"file": "image/*"}, frozenset(), frozenset({"tags"})),
            "/models": RouteSpec(JSON),
            "/echo": RouteSpec(JSON),
            "/task/retry": RouteSpec(None),
        },
        fix_spec=lambda s: {**s, "fixed": True},
    )


async def ok_app(scope, receive, send):
    """Answers 200 ``{"path": ...}``; ``/fail`` answers as BentoML's handlers do on errors."""
    path = scope["path"]
    if path == "/fail":
        body, status = b'[{"error": "index 9 out of range"}]', 400
    elif path == "/invalid":
        body = json.dumps(
            {
                "error": "1 validation error for Input",
                "detail": [
                    {
                        "loc": ["body", "n"],
                        "msg": "Input should be less than or equal to 64",
                        "type": "less_than_equal",
                    }
                ],
            }
        ).encode()
        status = 400
    elif path == "/busy":
        body, status = (
            b'{"error": "An unexpected error has occurred, please check the server log."}',
            503,
        )
    elif path == "/docs.json":
        body, status = b'{"openapi": "3.0.2"}', 200
    elif path in ("/echo", "/upload"):  # what reached the app
        message = await receive()
        seen = {k.decode(): v.decode("latin-1") for k, v in scope["headers"]}
        body = json.dumps({"headers": seen, "body": message["body"].decode("latin-1")}).encode()
        status = 200
    else:
        body, status = json.dumps({"path": path}).encode(), 200
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def test_without_a_token_everything_is_open(monkeypatch):
    client = TestClient(_guard(monkeypatch, ok_app))
    assert client.post("/classifier/predict").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_the_bearer_token_guards_every_route_but_health(monkeypatch):
    client = TestClient(_guard(monkeypatch, ok_app, token="s3cret"))
    for path in ("/classifier/predict", "/models", "/docs.json", "/metrics"):
        resp = client.post(path) if path != "/docs.json" else client.get(path)
        assert resp.status_code == 401, path
        assert "bearer token" in resp.json()["error"] and resp.headers[
            "www-authenticate"
        ].startswith("Bearer")
    wrong = client.post("/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert client.post("/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    for path in ("/livez", "/readyz"):
        assert client.get(path).status_code == 200
    public = TestClient(_guard(monkeypatch, ok_app, token="s3cret", public_metrics=True))
    assert public.get("/metrics").status_code == 200
    assert public.post("/models").status_code == 401


def test_over_the_concurrency_limit_is_503_with_retry_after_at_once(monkeypatch):
    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await release.wait()
        await ok_app(scope, receive, send)

    guard = _guard(monkeypatch, slow_app, max_concurrency=2, retry_after_s=3)
    sent: dict[int, list] = {}

    async def run():
        async def one(i):
            sent[i] = []

            async def send(m):
                sent[i].append(m)

            async def receive():
                return {"type": "http.request", "body": b"{}", "more_body": False}

            scope = {
                "type": "http",
                "method": "POST",
                "path": "/models",
                "headers": [(b"content-length", b"2"), (b"content-type", b"application/json")],
            }
            await guard(scope, receive, send)

        tasks = [asyncio.create_task(one(i)) for i in range(2)]
        await asyncio.sleep(0.05)  # two requests are in flight
        await one(2)  # the third is refused without waiting
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(run())
    refused = sent[2][0]
    assert refused["status"] == 503 and (b"retry-after", b"3") in refused["headers"]
    assert b"the limit per worker is 2" in sent[2][1]["body"]
    assert [sent[i][0]["status"] for i in (0, 1)] == [200, 200]
    assert guard.in_flight == 0


def test_every_error_body_leaves_as_one_error_object(monkeypatch):
    client = TestClient(_guard(monkeypatch, ok_app))
    assert client.post("/fail").json() == {"error": "index 9 out of range"}
    invalid = client.post("/invalid").json()
    assert invalid["error"] == "invalid request: n: Input should be less than or equal to 64"
    assert invalid["detail"][0]["loc"] == ["body", "n"]
    busy = client.post("/busy")
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"].startswith("overloaded, retry later")
    assert client.get("/docs.json").json() == {"openapi": "3.0.2", "fixed": True}
    assert client.get("/docs").json() == {"path": "/"}  # the OpenAPI page is served at /


@pytest.mark.parametrize(
    "field,status,words",
    [
        (("file", None, b"https://example.com/a.png"), 415, "takes multipart/form-data"),
        (("file", "", b"https://example.com/a.png"), 400, "never fetched"),
        (("file", "a.png", b"\x89PNG not really"), 200, ""),
    ],
)
def test_a_file_field_must_be_a_file(monkeypatch, field, status, words):
    client = TestClient(_guard(monkeypatch, ok_app))
    name, filename, data = field
    if filename is None:  # urlencoded, which BentoML also reads as a form
        resp = client.post("/upload", data={name: data.decode()})
    elif filename:
        resp = client.post("/upload", files={name: (filename, data, "image/png")})
    else:  # multipart, the URL as a text part
        resp = client.post(
            "/upload", files={"other": ("x.png", b"x", "image/png")}, data={name: data.decode()}
        )
    assert resp.status_code == status and words in resp.text


def test_client_errors_are_logged_in_one_line(caplog):
    from bentoml.exceptions import InvalidArgument
    from pydantic import BaseModel, ValidationError

    from serving.errors import install_log_filter

    install_log_filter()
    logger = logging.getLogger("bentoml._internal.server.http_app")

    class M(BaseModel):
        n: int

    with caplog.at_level(logging.INFO, logger=logger.name):
        for exc in (InvalidArgument("index 9 out of range"), None):
            try:
                if exc is None:
                    M.model_validate({"n": "x"})
                raise exc
            except (InvalidArgument, ValidationError):
                logger.error("Exception on %s [%s]", "/models", "POST", exc_info=True)
        try:
            raise RuntimeError("a real bug")
        except RuntimeError:
            logger.error("Exception on %s [%s]", "/models", "POST", exc_info=True)
    client_records, server_records = caplog.records[:2], caplog.records[2:]
    assert all(r.exc_info is None and r.levelno == logging.INFO for r in client_records)
    assert "index 9 out of range" in client_records[0].getMessage()
    assert "\n" not in caplog.text.split("a real bug")[0].strip().splitlines()[0]
    assert server_records[0].exc_info is not None and server_records[0].levelno == logging.ERROR


# --- the real service's OpenAPI document -------------------------------------------------------


def test_the_openapi_document_is_valid_and_documents_errors_and_examples(client):
    from openapi_spec_validator import validate

    import sightline

    spec = client.get("/docs.json").json()
    validate(spec)  # raises on anything that is not OpenAPI 3.0
    assert spec["info"]["version"] == sightline.__version__
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path in ("/livez", "/readyz", "/healthz", "/metrics"):
                continue
            if op.get("requestBody"):  # required exactly where the route has required fields
                schema = next(iter(op["requestBody"]["content"].values()))["schema"]
                if "$ref" in schema:
                    schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
                assert op["requestBody"]["required"] == bool(schema.get("required")), path
            # a body can be malformed or too large; a GET (a task's status or result) has none
            expected = {"400", "413", "503"} if method in ("post", "put") else {"503"}
            assert expected <= set(op["responses"]), (path, method)
            assert "retry-after" in {h.lower() for h in op["responses"]["503"]["headers"]}
            body = op.get("requestBody", {}).get("content", {})
            assert all("example" in c for c in body.values()), (path, method)
    predict = spec["paths"]["/classifier/predict"]["post"]["requestBody"]["content"][
        "multipart/form-data"
    ]
    assert predict["encoding"]["images"]["contentType"] == "image/*"
    email = spec["paths"]["/spam/predict_email"]["post"]["requestBody"]["content"][
        "multipart/form-data"
    ]
    assert email["encoding"]["email"]["contentType"] == "message/rfc822"
    assert '"pil"' not in json.dumps(spec) and '"file"' not in json.dumps(spec)
    status = spec["paths"]["/spam/predict_mailbox/status"]["get"]["responses"]
    assert "404" in status and "in_progress" in json.dumps(spec["components"]["schemas"])
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "template,ok",
    [
        ("a photo of a {}.", True),
        ("{{literal}} {}", True),
        ("{} and {}", False),
        ("{x} {}", False),
        ("{0}", False),
        ("{:>10}", False),
        ("{!r}", False),
        ("{{}}{0:x>10000000}", False),
        ("no slot", False),
        ("{", False),
    ],
)
def test_zero_shot_templates_hold_exactly_one_bare_slot(template, ok):
    from serving.inputs import check_template

    if ok:
        assert check_template(template) == template
    else:
        with pytest.raises(ValueError, match="template"):
            check_template(template)


# --- the holes an attacker looks for ------------------------------------------------------------


def _asgi(guard, path: str, headers: list, chunks: list[bytes], delay: float = 0.0):
    """One POST through ``guard`` with raw ASGI headers (duplicates kept) and a body sent in
    ``chunks``, ``delay`` seconds apart: ``(status, body as JSON)``."""
    sent: list = []

    async def run():
        queue = list(chunks)

        async def receive():
            if not queue:
                await asyncio.sleep(3600)  # the client sends nothing more
            await asyncio.sleep(delay)
            data = queue.pop(0)
            return {"type": "http.request", "body": data, "more_body": bool(queue)}

        async def send(m):
            sent.append(m)

        scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
        await guard(scope, receive, send)

    asyncio.run(run())
    return sent[0]["status"], json.loads(sent[1]["body"])


FORM = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\nx\r\n--b--\r\n'


@pytest.mark.parametrize(
    "headers",
    [
        [
            (b"content-type", b"application/json"),
            (b"content-type", b"multipart/form-data; boundary=b"),
        ],
        [
            (b"content-type", b"multipart/form-data; boundary=b"),
            (b"Content-Type", b"application/json"),
        ],
        [
            (b"content-type", b"multipart/form-data; boundary=b"),
            (b"content-length", b"5"),
            (b"content-length", b"99"),
        ],
        [
            (b"content-type", b"multipart/form-data; boundary=b"),
            (b"authorization", b"Bearer a"),
            (b"authorization", b"Bearer b"),
        ],
        [
            (b"content-type", b"multipart/form-data; boundary=b"),
            (b"x-anything", b"1"),
            (b"x-anything", b"2"),
        ],
        [
            (b"content-type", b"multipart/form-data; boundary=b"),
            (b"content-length", b"99"),
            (b"transfer-encoding", b"chunked"),
        ],
    ],
    ids=["ctype-json-first", "ctype-case", "length", "authorization", "any", "length-and-chunked"],
)
def test_a_header_sent_twice_is_400_before_anything_reads_it(monkeypatch, headers):
    reached = []

    async def app(scope, receive, send):
        reached.append(scope)
        await ok_app(scope, receive, send)

    status, body = _asgi(_guard(monkeypatch, app), "/upload", headers, [FORM])
    assert status == 400 and ("given 2 times" in body["error"] or "together" in body["error"])
    assert not reached


def test_list_headers_may_repeat(monkeypatch):
    headers = [(b"content-type", b"application/json"), (b"accept", b"a/b"), (b"accept", b"c/d")]
    assert _asgi(_guard(monkeypatch, ok_app), "/echo", headers, [b"{}"])[0] == 200


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(monkeypatch, scheme):
    client = TestClient(_guard(monkeypatch, ok_app, token="s3cret"))
    ok = client.post("/models", headers={"Authorization": f"{scheme} s3cret"})
    assert ok.status_code == 200
    assert client.post("/models", headers={"Authorization": f"{scheme} s3cre"}).status_code == 401
    assert client.post("/models", headers={"Authorization": "Basic s3cret"}).status_code == 401


@pytest.mark.parametrize(
    "path,ctype,body,status,words",
    [
        ("/echo", "text/plain", b"{}", 415, "takes application/json"),
        ("/echo", "application/x-www-form-urlencoded", b"n=1", 415, "takes application/json"),
        ("/echo", None, b"{}", 415, "(none)"),
        ("/upload", "application/json", b'"https://example.com/a.png"', 415, "multipart/form-data"),
        ("/upload", "text/plain", b"https://example.com/a.png", 415, "multipart/form-data"),
        ("/echo", "Application/JSON; charset=utf-8", b"{}", 200, ""),
        ("/echo", None, b"", 200, ""),
    ],
)
def test_a_body_must_have_its_routes_media_type(monkeypatch, path, ctype, body, status, words):
    headers = [(b"content-type", ctype.encode())] if ctype else []
    code, reply = _asgi(_guard(monkeypatch, ok_app), path, headers, [body])
    assert code == status and words in reply.get("error", ""), reply
    if code == 200 and ctype:  # the app reads the type as BentoML matches it, in lower case
        assert reply["headers"]["content-type"] == "application/json; charset=utf-8"


def test_multipart_in_any_letter_case_reaches_the_app_as_bentoml_matches_it(monkeypatch):
    headers = [(b"content-type", b"Multipart/Form-Data; boundary=b")]
    code, reply = _asgi(_guard(monkeypatch, ok_app), "/upload", headers, [FORM])
    assert code == 200 and reply["headers"]["content-type"] == "multipart/form-data; boundary=b"


def _form(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "Content-Type: image/png\r\n" if filename else ""
        out += f"--b\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode() + data + b"\r\n"
    return out + b"--b--\r\n"


@pytest.mark.parametrize(
    "parts,status,words",
    [
        ([("file", "a.png", b"x"), ("note", None, b"\xff\xfe\x00binary")], 400, "not UTF-8"),
        ([("file", "a.png", b"x"), ("note", "n.bin", b"\xff\xfe")], 400, "expected a text field"),
        ([("file", "a" * 300 + ".png", b"x")], 400, "file name must be at most"),
        ([("file", None, b"https://example.com/a.png")], 400, "never fetched"),
        ([("file", "a.png", b"x"), ("note", None, "é".encode())], 200, ""),
    ],
    ids=["binary-text", "file-for-text", "long-filename", "url-for-file", "utf8-text"],
)
def test_each_multipart_part_is_what_its_field_takes(monkeypatch, parts, status, words):
    headers = [(b"content-type", b"multipart/form-data; boundary=b")]
    code, reply = _asgi(_guard(monkeypatch, ok_app), "/upload", headers, [_form(*parts)])
    assert code == status and words in reply.get("error", ""), reply


def test_a_compressed_body_is_415(monkeypatch):
    headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
    code, reply = _asgi(_guard(monkeypatch, ok_app), "/echo", headers, [b"\x1f\x8b"])
    assert code == 415 and "uncompressed" in reply["error"]


def test_a_slow_upload_is_408_after_the_body_timeout_and_frees_its_slot(monkeypatch):
    import time

    guard = _guard(monkeypatch, ok_app, body_timeout_s=0.3, max_concurrency=1)
    headers = [(b"content-type", b"application/json")]
    start = time.monotonic()
    code, reply = _asgi(guard, "/echo", headers, [b"{", b"}"] * 5, delay=0.1)  # 1 s in all
    assert code == 408 and "body_timeout_s" in reply["error"]
    assert time.monotonic() - start < 0.8 and guard.in_flight == 0
    assert _asgi(guard, "/echo", headers, [b"{}"])[0] == 200


def _png_header(width: int, height: int) -> bytes:
    """A PNG claiming ``width x height`` grey pixels: its IHDR, then an empty IDAT."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [5000, 20000])  # over max_pixels; over PIL's bomb limit too
def test_a_decompression_bomb_is_413_like_every_budget(monkeypatch, side):
    headers = [(b"content-type", b"multipart/form-data; boundary=b")]
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + _png_header(side, side) + b"\r\n--b--\r\n"
    )
    code, reply = _asgi(_guard(monkeypatch, ok_app), "/upload", headers, [body])
    assert code == 413, reply
    from serving.inputs import open_image
    from sightline.errors import BudgetError

    with pytest.raises(BudgetError):
        open_image(_png_header(side, side))


@pytest.mark.parametrize(
    "tags,sent",
    [
        ([b"a", b"b"], ["a", "b"]),  # one part per item, as OpenAPI describes a form's array
        ([b"solo"], ["solo"]),  # one item alone
        ([b'["a", "b"]'], None),  # JSON text: passed on as it is
    ],
)
def test_a_list_field_may_come_as_one_part_per_item(monkeypatch, tags, sent):
    headers = [(b"content-type", b"multipart/form-data; boundary=b")]
    form = _form(("file", "a.png", b"x"), *[("tags", None, t) for t in tags])
    code, reply = _asgi(_guard(monkeypatch, ok_app), "/upload", headers, [form])
    assert code == 200, reply
    from python_multipart.multipart import parse_options_header  # noqa: F401

    from serving.forms import parse_multipart

    parts = parse_multipart(b"multipart/form-data; boundary=b", reply["body"].encode("latin-1"), 4)
    values = [bytes(p.data) for p in parts if p.name == "tags"]
    assert len(values) == 1
    assert json.loads(values[0]) == (sent if sent is not None else ["a", "b"])
    assert [p.name for p in parts][0] == "file" and bytes(parts[0].data) == b"x"


def test_any_header_sent_twice_with_any_values_is_400(monkeypatch):
    """Hypothesis draws a header name (any letter case) and two values: unless the header is a
    list-valued one, the request is refused before the app sees it, on a JSON and a multipart
    route alike."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from serving.guard import REPEATABLE

    reached = []

    async def app(scope, receive, send):
        reached.append(scope)
        await ok_app(scope, receive, send)

    guard = _guard(monkeypatch, app)
    token = st.text(
        "abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=20
    )
    value = st.binary(min_size=0, max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v)

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(
        name=st.one_of(
            st.sampled_from(["Content-Type", "content-length", "AUTHORIZATION", "Host"]), token
        ),
        first=value,
        second=value,
        path=st.sampled_from(["/upload", "/echo"]),
    )
    def one(name, first, second, path):
        if name.lower().encode() in REPEATABLE:
            return
        reached.clear()
        base = [
            (
                b"content-type",
                b"multipart/form-data; boundary=b" if path == "/upload" else b"application/json",
            )
        ]
        base = [h for h in base if h[0] != name.lower().encode()]
        headers = [*base, (name.lower().encode(), first), (name.lower().encode(), second)]
        status, body = _asgi(guard, path, headers, [FORM if path == "/upload" else b"{}"])
        assert status == 400 and "given 2 times" in body["error"], (name, status, body)
        assert not reached

    one()
