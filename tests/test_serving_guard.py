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
    from serving.guard import Guard
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
        file_fields={"/upload": {"file": "image/*"}},
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
                "headers": [(b"content-length", b"2")],
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
        (("file", None, b"https://example.com/a.png"), 400, "never fetched"),
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

    from serving.guard import install_log_filter

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
