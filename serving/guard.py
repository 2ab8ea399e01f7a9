"""The service's front door: one ASGI middleware between the HTTP server and BentoML's routes.

In order, for each request:
1. ``/docs`` is the OpenAPI page (BentoML serves it at ``/``);
2. a bearer token, when ``SIGHTLINE_API_TOKEN`` is set, on every route but the health checks
   (and ``/metrics`` when ``SIGHTLINE_PUBLIC_METRICS=1``): 401 otherwise;
3. at most ``max_concurrency`` requests in flight: more get 503 at once, with ``Retry-After``;
4. a body over ``max_request_bytes`` gets 413 and is never stored;
5. a form body (multipart or urlencoded) is parsed here, once, with the multipart parser's limits: any parser error is
   a 400 with its reason; a file field sent as text is a 400 (a URL is never fetched); images are
   sized from their headers and a request over ``max_pixels`` gets 413, before any is decoded;
6. every error response leaves as ``{"error": reason}`` JSON (plus ``detail`` for validation
   errors), whatever part of the stack wrote it; a 503 carries ``Retry-After``;
7. ``/docs.json`` is made valid OpenAPI 3.0 (``serving.openapi``).

Client errors are logged as one line, not a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from urllib.parse import parse_qsl

from serving.forms import MAX_FIELDS, ClientError, image_pixels, parse_multipart

log = logging.getLogger("sightline.serving")

HEALTH = frozenset({"/livez", "/readyz", "/healthz"})
UNLIMITED = HEALTH | {"/metrics", "/docs.json", "/"}  # never counted against max_concurrency


def json_response(status: int, body: dict, headers: list | None = None) -> tuple[dict, dict]:
    data = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    start = {"type": "http.response.start", "status": status, "headers": head + (headers or [])}
    return start, {"type": "http.response.body", "body": data}


# --- error bodies and logs --------------------------------------------------------------------


def reason_of(status: int, body: bytes) -> dict:
    """Whatever error body a layer wrote -> ``{"error": reason}`` (+ ``detail``)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = body.decode("utf-8", "replace").strip()
    if isinstance(data, list) and len(data) == 1:  # BentoML's 4xx: [{"error": ...}]
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("detail"), list):  # validation errors
        detail = [
            {
                "loc": [str(x) for x in d.get("loc", [])],
                "msg": str(d.get("msg", "")),
                "type": str(d.get("type", "")),
            }
            for d in data["detail"]
            if isinstance(d, dict)
        ]
        text = "; ".join(f"{'.'.join(d['loc'][1:] or d['loc'])}: {d['msg']}" for d in detail)
        return {
            "error": f"invalid request: {text}" if text else str(data.get("error")),
            "detail": detail,
        }
    if isinstance(data, dict):
        data = data.get("error") or data.get("detail") or ""
    generic = {404: "no such route", 405: "method not allowed"}  # the router's own refusals
    text = str(data) if str(data) not in ("", "Not Found", "Method Not Allowed") else ""
    text = text or generic.get(status) or f"HTTP {status}"
    if status == 503:
        text = f"overloaded, retry later: {text}"
    return {"error": text}


class OneLineClientErrors(logging.Filter):
    """BentoML logs every refused request with a traceback; a client's mistake gets one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from bentoml.exceptions import BentoMLException
        from pydantic import ValidationError

        status = getattr(exc, "error_code", 500) if isinstance(exc, BentoMLException) else 500
        if isinstance(exc, ValidationError) or status < 500:
            first = str(exc).strip().splitlines()
            record.msg, record.args = (
                "%s: client error: %s",
                (record.getMessage(), first[0] if first else type(exc).__name__),
            )
            record.exc_info, record.exc_text, record.levelno, record.levelname = (
                None,
                None,
                logging.INFO,
                "INFO",
            )
        return True


def install_log_filter() -> None:
    target = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, OneLineClientErrors) for f in target.filters):
        target.addFilter(OneLineClientErrors())


# --- the middleware ---------------------------------------------------------------------------


class Guard:
    """ASGI middleware; see the module docstring.

    Args:
        app: the BentoML app.
        config: the ``ServingConfig`` (limits).
        file_fields: ``{route: {field: content type}}`` of the multipart file fields.
        fix_spec: ``spec -> spec``, applied to ``/docs.json``.
    """

    def __init__(self, app, config, file_fields: dict[str, dict[str, str]], fix_spec) -> None:
        self.app, self.config, self.file_fields, self.fix_spec = app, config, file_fields, fix_spec
        # a task's submit route stores the request and answers before it is read: its upload is
        # checked here, so a request the task could not run is refused at once
        self.tasks = {path for path in file_fields if path.endswith("/submit")}
        self.token = os.environ.get("SIGHTLINE_API_TOKEN") or None
        public = HEALTH | (
            {"/metrics"} if os.environ.get("SIGHTLINE_PUBLIC_METRICS") == "1" else set()
        )
        self.public = frozenset(public)
        self.in_flight = 0
        self.spec: bytes | None = None
        install_log_filter()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == "/docs" and scope["method"] in ("GET", "HEAD"):
            scope = {**scope, "path": "/", "raw_path": b"/"}
        try:
            self._authorize(scope)
        except ClientError as err:
            return await self._refuse(
                send, err, scope, [(b"www-authenticate", b'Bearer realm="sightline"')]
            )
        if path in UNLIMITED:
            return await self._call(scope, receive, send)
        if self.in_flight >= self.config.max_concurrency:
            err = ClientError(
                503,
                f"overloaded, retry later: {self.in_flight} requests in flight, the limit per worker is {self.config.max_concurrency}",
            )
            return await self._refuse(send, err, scope, self._retry_after())
        self.in_flight += 1
        counted = [True]

        def done() -> None:  # before the last byte leaves: the client's next request is not early
            if counted[0]:
                counted[0] = False
                self.in_flight -= 1

        try:
            receive = await self._checked_body(scope, receive)
            await self._call(scope, receive, send, done)
        except ClientError as err:
            done()
            await self._refuse(send, err, scope)
        finally:
            done()

    def _retry_after(self) -> list:
        return [(b"retry-after", str(self.config.retry_after_s).encode())]

    def _authorize(self, scope) -> None:
        if self.token is None or scope["path"] in self.public:
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, b"Bearer " + self.token.encode()):
            raise ClientError(
                401, "missing or wrong bearer token (Authorization: Bearer <SIGHTLINE_API_TOKEN>)"
            )

    async def _refuse(self, send, err: ClientError, scope, headers: list | None = None) -> None:
        log.info("%s %s: %d %s", scope["method"], scope["path"], err.status, err)
        start, body = json_response(err.status, {"error": str(err)}, headers)
        await send(start)
        await send(body)

    async def _checked_body(self, scope, receive):
        """The body within the size limit, and a multipart body parsed and checked; a
        ``receive`` that replays what was read."""
        if scope["method"] != "POST":  # every route is a POST; the app answers the rest (405)
            return receive
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"")
        form = ctype.lower().startswith((b"multipart/", b"application/x-www-form-urlencoded"))
        if scope["path"] in self.tasks and not ctype.lower().startswith(b"multipart/"):
            fields = ", ".join(self.file_fields[scope["path"]])
            raise ClientError(400, f"expected a multipart/form-data upload of: {fields}")
        length = headers.get(b"content-length")
        limit = self.config.max_request_bytes
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._drain(receive, more=length.isdigit())
            raise ClientError(413, f"request body too large: the limit is {limit} bytes")
        if length is not None and not form:
            return receive
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return receive  # the client went away; the app sees the disconnect
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                await self._drain(receive, more)
                raise ClientError(413, f"request body too large: the limit is {limit} bytes")
        body = b"".join(chunks)
        if form:
            self._check_form(scope["path"], ctype, body)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    def _check_form(self, path: str, ctype: bytes, body: bytes) -> None:
        if not ctype.lower().startswith(b"multipart/"):  # urlencoded: BentoML reads it as a form
            try:
                names = {
                    k
                    for k, _ in parse_qsl(
                        body.decode("latin-1"), keep_blank_values=True, max_num_fields=MAX_FIELDS
                    )
                }
            except ValueError:
                raise ClientError(400, f"form body: more than {MAX_FIELDS} fields") from None
            for field in names & set(self.file_fields.get(path, {})):
                raise ClientError(
                    400,
                    f"{field}: expected a file upload, got a text field (URLs are never fetched; upload the file itself)",
                )
            return
        parts = parse_multipart(ctype, body, self.config.max_images)
        fields = [p.name for p in parts if p.filename is None]
        for name in {n for n in fields if fields.count(n) > 1}:  # BentoML would keep only one
            raise ClientError(
                400,
                f"{name}: given {fields.count(name)} times; send one value (lists as JSON text)",
            )
        for field in self.file_fields.get(path, {}):
            for part in parts:
                if part.name == field and part.filename is None:
                    raise ClientError(
                        400,
                        f"{field}: expected a file upload, got a text field (URLs are never fetched; upload the file itself)",
                    )
        if path in self.tasks:
            for field in self.file_fields[path]:
                if not any(p.name == field and p.filename is not None for p in parts):
                    raise ClientError(400, f"{field}: missing (a file upload)")
        pixels = image_pixels(parts)
        if pixels > self.config.max_pixels:
            raise ClientError(
                413,
                f"images: {pixels} pixels in one request; the limit is {self.config.max_pixels}",
            )

    async def _drain(self, receive, more: bool) -> None:
        """Read (and drop) what the client is still sending, up to a cap, so it sees the 413
        rather than a connection reset in the middle of its upload."""
        drained = 0
        while more and drained < 16 * self.config.max_request_bytes:
            message = await receive()
            drained += len(message.get("body", b""))
            more = message["type"] == "http.request" and message.get("more_body", False)

    async def _call(self, scope, receive, send, done=lambda: None) -> None:
        """Run the app; rewrite error bodies (and ``/docs.json``) on their way out; ``done`` is
        called just before the last part of the response is sent."""
        held: dict = {}
        spec = scope["path"] == "/docs.json"

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                done()
            if message["type"] == "http.response.start":
                if message["status"] >= 400 or (spec and message["status"] == 200):
                    held.update(start=message, body=bytearray())
                    return
                return await send(message)
            if message["type"] != "http.response.body" or not held:
                return await send(message)
            held["body"] += message.get("body", b"")
            if message.get("more_body", False):
                return
            status = held["start"]["status"]
            if status == 200:  # /docs.json
                if self.spec is None:
                    self.spec = json.dumps(self.fix_spec(json.loads(held["body"]))).encode()
                start, body = json_response(200, {}, [])
                body["body"] = self.spec
                start["headers"] = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self.spec)).encode()),
                ]
            else:
                keep = [
                    (k, v)
                    for k, v in held["start"].get("headers", [])
                    if k.lower() not in (b"content-type", b"content-length")
                ]
                extra = (
                    self._retry_after()
                    if status == 503 and not any(k.lower() == b"retry-after" for k, _ in keep)
                    else []
                )
                start, body = json_response(
                    status, reason_of(status, bytes(held["body"])), keep + extra
                )
            await send(start)
            await send(body)

        await self.app(scope, receive, send_wrapper)
