"""The service's front door: one ASGI middleware between the HTTP server and BentoML's routes.

In order, for each request:
1. a header the request carries twice (but the few that may be lists) is a 400: the guard and
   BentoML must read the same request, and one reads the first copy, the other the last;
2. ``/docs`` is the OpenAPI page (BentoML serves it at ``/``);
3. a bearer token, when ``SIGHTLINE_API_TOKEN`` is set, on every route but the health checks
   (and ``/metrics`` when ``SIGHTLINE_PUBLIC_METRICS=1``): 401 otherwise;
4. at most ``max_concurrency`` requests in flight: more get 503 at once, with ``Retry-After``;
5. the body of a POST to a route of the service is read here, whole: over ``max_request_bytes``
   is a 413 and is never stored; still arriving after ``body_timeout_s`` is a 408;
6. its media type must be the route's own (``RouteSpec``, made from the route's IO descriptor):
   ``multipart/form-data`` where the route takes files, ``application/json`` elsewhere; any
   other is a 415. So BentoML never reads a file field from JSON or a form's text, the two
   ways it would fetch a URL;
7. a multipart body is parsed here, once, with the parser's limits: any parser error is a 400
   with its reason; a file field sent as text, a text field sent as a file, text that is not
   UTF-8 and a file name the file system would refuse are 400s; images are sized from their
   headers and a request over ``max_pixels`` gets 413, before any is decoded;
8. every error response leaves as ``{"error": reason}`` JSON (plus ``detail`` for validation
   errors), whatever part of the stack wrote it; a 503 carries ``Retry-After``;
9. ``/docs.json`` is made valid OpenAPI 3.0 (``serving.openapi``).

Client errors are logged as one line, not a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from serving.errors import install_log_filter, json_response, reason_of
from serving.forms import ClientError, boundary_of, check_parts, merge_lists, parse_multipart

if TYPE_CHECKING:
    from serving.settings import ServingConfig

log = logging.getLogger("sightline.serving")

HEALTH = frozenset({"/livez", "/readyz", "/healthz"})
UNLIMITED = HEALTH | {"/metrics", "/docs.json", "/"}  # never counted against max_concurrency
MULTIPART, JSON = "multipart/form-data", "application/json"
# request headers that may be sent more than once (lists, RFC 9110 5.3); any other, twice, is a 400
REPEATABLE = frozenset(
    {
        b"accept",
        b"accept-charset",
        b"accept-encoding",
        b"accept-language",
        b"cache-control",
        b"connection",
        b"cookie",
        b"forwarded",
        b"if-match",
        b"if-none-match",
        b"pragma",
        b"te",
        b"via",
        b"warning",
        b"x-forwarded-for",
    }
)


@dataclass(frozen=True)
class RouteSpec:
    """What a POST route of the service takes.

    Attributes:
        media_type: the media type of its body (``MULTIPART`` or ``JSON``); ``None``: no body
            is read (a task's ``retry``).
        files: ``{field: content type}`` of its file fields.
        required: the file fields a request must carry.
        lists: its text fields that hold lists (a form may send one part per item).
    """

    media_type: str | None
    files: dict[str, str] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    lists: frozenset[str] = frozenset()


class Disconnected(Exception):
    """The client went away before its body arrived."""


# --- the middleware ---------------------------------------------------------------------------


class Guard:
    """ASGI middleware; see the module docstring.

    Args:
        app: the BentoML app.
        config: the ``ServingConfig`` (limits).
        routes: ``{path: RouteSpec}`` of every POST route of the service (``routes_of``).
        fix_spec: ``spec -> spec``, applied to ``/docs.json``.
    """

    def __init__(
        self, app: Callable, config: ServingConfig, routes: dict[str, RouteSpec], fix_spec: Callable
    ) -> None:
        self.app, self.config, self.routes, self.fix_spec = app, config, routes, fix_spec
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
        try:
            check_headers(scope["headers"])
        except ClientError as err:
            return await self._refuse(send, err, scope)
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
            scope, receive = await self._checked_body(scope, receive)
            await self._call(scope, receive, send, done)
        except Disconnected:
            pass  # nobody to answer
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
        scheme, _, credentials = given.strip().partition(b" ")
        ok = scheme.lower() == b"bearer" and hmac.compare_digest(
            credentials.strip(), self.token.encode()
        )
        if not ok:
            raise ClientError(
                401, "missing or wrong bearer token (Authorization: Bearer <SIGHTLINE_API_TOKEN>)"
            )

    async def _refuse(self, send, err: ClientError, scope, headers: list | None = None) -> None:
        log.info("%s %s: %d %s", scope["method"], scope["path"], err.status, err)
        start, body = json_response(err.status, {"error": str(err)}, headers)
        await send(start)
        await send(body)

    async def _checked_body(self, scope, receive):
        """For a POST to a route of the service: its body read whole within the limits, its
        media type the route's and a multipart body parsed and checked. Returns the scope (its
        Content-Type written as BentoML matches it) and a ``receive`` that replays the body."""
        route = self.routes.get(scope["path"])
        if scope["method"] != "POST" or route is None:  # the app answers (404, 405, GET routes)
            return scope, receive
        headers = dict(scope["headers"])
        if headers.get(b"content-encoding", b"identity").strip().lower() != b"identity":
            raise ClientError(415, "Content-Encoding: request bodies are taken uncompressed")
        length = headers.get(b"content-length")
        if length is not None and not length.strip().isdigit():
            raise ClientError(400, "Content-Length: not a number")
        limit = self.config.max_request_bytes
        if length is not None and int(length) > limit:
            await self._drain(receive)
            raise ClientError(413, f"request body too large: the limit is {limit} bytes")
        body = await self._read(receive, limit)
        if route.media_type is not None:
            scope, body = self._check_media(scope, route, headers.get(b"content-type"), body)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return scope, replay

    async def _read(self, receive, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes (413), within ``body_timeout_s`` (408)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.body_timeout_s
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise ClientError(
                    408,
                    f"request body: not received within body_timeout_s ({self.config.body_timeout_s:g} s)",
                ) from None
            if message["type"] != "http.request":
                raise Disconnected
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                if more:
                    await self._drain(receive)
                raise ClientError(413, f"request body too large: the limit is {limit} bytes")
        return b"".join(chunks)

    def _check_media(self, scope, route: RouteSpec, ctype: bytes | None, body: bytes):
        """The body's media type must be the route's (any letter case; BentoML's match is
        exact, so the header is written again in lower case); a multipart body is checked and
        its list fields joined (``merge_lists``). Returns the scope and the body to pass on."""
        if ctype is None and not body and route.media_type == JSON:
            return scope, body  # no arguments: the defaults
        given, sep, params = (ctype or b"").decode("latin-1").partition(";")
        media = given.strip().lower()
        if media != route.media_type:
            raise ClientError(
                415,
                f"Content-Type {given.strip() or '(none)'}: this route takes {route.media_type}",
            )
        merged = None
        if media == MULTIPART:
            parts = parse_multipart(ctype, body, self.config.max_images)
            check_parts(parts, route.files, route.required, self.config.max_pixels, route.lists)
            merged = merge_lists(parts, route.lists, boundary_of(ctype))
        fixed = (media + sep + params).encode("latin-1")
        headers = [
            (k, fixed if k == b"content-type" else v)
            for k, v in scope["headers"]
            if not (merged is not None and k == b"content-length")
        ]
        if merged is not None:
            headers.append((b"content-length", str(len(merged)).encode()))
        return {**scope, "headers": headers}, merged if merged is not None else body

    async def _drain(self, receive) -> None:
        """Read (and drop) what the client is still sending, up to a cap and within the body
        timeout, so it sees the 413 rather than a connection reset in the middle of its upload."""
        drained, more = 0, True
        try:
            async with asyncio.timeout(self.config.body_timeout_s):
                while more and drained < 16 * self.config.max_request_bytes:
                    message = await receive()
                    drained += len(message.get("body", b""))
                    more = message["type"] == "http.request" and message.get("more_body", False)
        except TimeoutError:
            pass

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


def check_headers(headers: list[tuple[bytes, bytes]]) -> None:
    """Refuse (400) a request that carries a header twice, unless it is one of the list-valued
    ``REPEATABLE`` ones, or that frames its body twice (Content-Length and Transfer-Encoding)."""
    counts = Counter(k.lower() for k, _ in headers)
    for name, n in counts.items():
        if n > 1 and name not in REPEATABLE:
            raise ClientError(
                400, f"header {name.decode('latin-1')}: given {n} times; send it once"
            )
    if b"content-length" in counts and b"transfer-encoding" in counts:
        raise ClientError(400, "Content-Length and Transfer-Encoding together: send one")


def routes_of(service) -> dict[str, RouteSpec]:
    """``{path: RouteSpec}`` of every POST route of a BentoML service, read from its APIs' input
    descriptors: an API's route, and for a task its ``/submit`` (the same input) and ``/retry``
    (no body)."""
    out: dict[str, RouteSpec] = {}
    for api in service.apis.values():
        spec = api.input_spec
        names = list(getattr(spec, "multipart_fields", None) or [])
        props = spec.model_json_schema().get("properties", {})
        files = {}
        for name in names:
            schema = props.get(name, {})
            schema = schema.get("items", schema)
            files[name] = schema.get("content_type") or (
                "image/*" if schema.get("format") == "image" else "application/octet-stream"
            )
        required = frozenset(n for n in names if spec.model_fields[n].is_required())
        lists = frozenset(
            n for n, p in props.items() if n not in files and p.get("type") == "array"
        )
        route = RouteSpec(MULTIPART if files else JSON, files, required, lists)
        out[api.route] = route
        if api.is_task:
            out[f"{api.route}/submit"] = route
            out[f"{api.route}/retry"] = RouteSpec(None)
    return out
