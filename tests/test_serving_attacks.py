"""The service as an attacker sees it: every route the app registers, odd images within the
budget, headers sent twice, URLs in every field, and metrics fed random paths.

The in-process tests (``client``) record any outgoing HTTP request the front would make; the
live ones drive a real ``bentoml serve`` and read the peak memory of each of its processes.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import random
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import make_email
from PIL import Image
from test_serving_live import mbox, multipart, post

URL = "http://127.0.0.1:9/secret.png"  # nothing listens there; a fetch is recorded, never made
RSS_BUDGET_MB = 256


# --- every route, from the app itself ------------------------------------------------------------


def _app_routes():
    """``(path, methods)`` of every route the service's Starlette app registers."""
    from serving.service import Sightline

    app = Sightline.to_asgi()
    while not hasattr(app, "routes") and hasattr(app, "app"):
        app = app.app
    return [(r.path, set(getattr(r, "methods", None) or [])) for r in app.routes]


def test_every_post_route_the_app_registers_is_known_to_the_guard():
    """A new API, task route or BentoML system route that takes a body cannot slip past the
    guard: each POST route is in ``ROUTES``, and each API with a file field is multipart."""
    from serving.guard import MULTIPART
    from serving.service import ROUTES, Sightline

    posts = {path for path, methods in _app_routes() if "POST" in methods}
    assert posts, "no POST routes found"
    assert posts <= set(ROUTES), f"POST routes the guard does not know: {posts - set(ROUTES)}"
    for api in Sightline.apis.values():
        if getattr(api.input_spec, "multipart_fields", None):
            paths = [api.route] + ([f"{api.route}/submit"] if api.is_task else [])
            for path in paths:
                route = ROUTES[path]
                assert route.media_type == MULTIPART, path
                assert set(route.files) == set(api.input_spec.multipart_fields), path


def _fields(path: str) -> list[str]:
    from serving.service import Sightline

    for api in Sightline.apis.values():
        if path in (api.route, f"{api.route}/submit"):
            return list(api.input_spec.model_fields)
    return []


def _attacks(path: str) -> list[tuple[str, bytes, str]]:
    """``(what, body, content type)``: a URL and a binary part in each field, every way."""
    fields = _fields(path) or ["x"]
    out = [
        ("json url", json.dumps(URL).encode(), "application/json"),
        ("json fields", json.dumps(dict.fromkeys(fields, URL)).encode(), "application/json"),
        (
            "urlencoded",
            "&".join(f"{f}={URL}" for f in fields).encode(),
            "application/x-www-form-urlencoded",
        ),
        ("text url", URL.encode(), "text/plain"),
    ]
    for f in fields:
        out.append(("multipart url " + f, *multipart([(f, None, None, URL.encode())])))
        out.append(
            (
                "multipart binary " + f,
                *multipart([(f, "x.bin", "application/octet-stream", b"\xff\xfe\x00\x81")]),
            )
        )
        out.append(
            ("multipart binary text " + f, *multipart([(f, None, None, b"\xff\xfe\x00\x81")]))
        )
        out.append(
            (
                "multipart long name " + f,
                *multipart([(f, "n" * 300 + ".eml", "message/rfc822", b"x")]),
            )
        )
    return out


def test_no_route_fetches_a_url_or_fails_on_a_url_or_binary_part(client, monkeypatch):
    """Every POST route, every field: a URL (as JSON, a form's text, a multipart text part), a
    binary part, non-UTF-8 text and an over-long file name. No answer is a 5xx, no file route
    answers 2xx, and the front makes no HTTP request."""
    import httpx

    fetched: list[str] = []

    async def no_fetch(self, request, *args, **kwargs):
        fetched.append(str(request.url))
        raise httpx.ConnectError("fetching is not allowed in this test")

    monkeypatch.setattr(httpx.AsyncClient, "send", no_fetch)
    from serving.service import ROUTES

    seen = []
    for path, route in ROUTES.items():
        for what, body, ctype in _attacks(path):
            resp = client.post(path, content=body, headers={"Content-Type": ctype})
            seen.append((path, what, resp.status_code))
            assert resp.status_code < 500, (path, what, resp.status_code, resp.text[:300])
            if route.files:
                assert 400 <= resp.status_code < 500, (path, what, resp.status_code)
            assert "error" in resp.json() or resp.status_code < 400, (path, what)
    assert not fetched, fetched
    assert len(seen) > 100


# --- the live server ---------------------------------------------------------------------------


def _processes(pid: int) -> list:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class PeakRss:
    """The growth of each serving process's peak RSS over a stretch of requests, from Linux's
    high-water mark (``VmHWM``, reset with ``clear_refs``), so a spike between two polls counts."""

    def __init__(self, pid: int) -> None:
        self.pids = [p.pid for p in _processes(pid)]

    def reset(self) -> None:
        self.base = {}
        for pid in self.pids:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            self.base[pid] = _status_kb(pid, "VmRSS")

    def growth_mb(self) -> float:
        return max(_status_kb(pid, "VmHWM") - self.base[pid] for pid in self.pids) / 1024


def _image(width: int, height: int, mode: str, fmt: str) -> bytes:
    img = Image.new(
        mode, (width, height), 0 if mode in ("1", "L", "P", "I;16") else (0,) * len(mode)
    )
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def peak(live_server):
    url, proc = live_server
    if not Path(f"/proc/{proc.pid}/clear_refs").exists():
        pytest.skip("needs Linux's /proc/<pid>/clear_refs")
    rss = PeakRss(proc.pid)
    try:
        rss.reset()
    except OSError as err:
        pytest.skip(f"cannot reset the peak RSS: {err}")
    return rss


def _send_images(url: str, route: str, images: list[bytes]) -> int:
    """The images to one image route (or as email attachments): the status."""
    if route == "/spam/predict":
        body = {
            "messages": [{"body": "x", "images": [base64.b64encode(i).decode() for i in images]}]
        }
        return post(url + route, json.dumps(body).encode(), "application/json")[0]
    if route in ("/spam/predict_email", "/spam/predict_mailbox"):
        raw = make_email("offer", "see the pictures", images=images)
        field, kind, data = (
            ("email", "message/rfc822", raw)
            if route == "/spam/predict_email"
            else ("mailbox", "application/mbox", mbox([raw]))
        )
        return post(url + route, *multipart([(field, "m", kind, data)]))[0]
    if route == "/clip/zero_shot":
        parts = [("image", "a.png", "image/png", images[0]), ("labels", None, None, b'["a", "b"]')]
        return post(url + route, *multipart(parts))[0]
    if route == "/vae/interpolate":
        parts = [("a", "a.png", "image/png", images[0]), ("b", "b.png", "image/png", images[-1])]
        return post(url + route, *multipart(parts))[0]
    return post(
        url + route,
        *multipart([("images", f"{i}", "image/png", im) for i, im in enumerate(images)]),
    )[0]


IMAGE_ROUTES = [
    "/classifier/predict",
    "/vae/reconstruct",
    "/vae/interpolate",
    "/clip/embed_images",
    "/clip/zero_shot",
    "/spam/predict",
    "/spam/predict_email",
    "/spam/predict_mailbox",
]


def test_no_image_within_the_budget_raises_a_processs_peak_memory_past_256_mb(live_server, peak):
    """Hypothesis draws images of any width x height within the pixel budget (1 x 400,000 and
    400,000 x 1 among them), any mode, one or several per request, on every image route and as
    email attachments. Each request's growth of any serving process's peak RSS stays within
    256 MB, and the answer is never a 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from serving.inputs import CONFIG

    url, _ = live_server
    budget = CONFIG.max_pixels
    for route in IMAGE_ROUTES:  # warm-up: each route's first call allocates its pools
        _send_images(url, route, [_image(28, 28, "L", "PNG")])

    @st.composite
    def images(draw):
        n = draw(st.integers(1, 4))
        out = []
        for _ in range(n):
            long = draw(st.sampled_from([1, 2, 3, 7, 28, 300, 4096, 100_000, 400_000, budget // n]))
            short = draw(st.integers(1, max(1, min(long, budget // n // long))))
            w, h = (long, short) if draw(st.booleans()) else (short, long)
            mode = draw(st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "I;16"]))
            out.append(_image(w, h, mode, "PNG"))
        return out

    worst: list = []

    @settings(
        max_examples=int(os.environ.get("SIGHTLINE_RSS_EXAMPLES", "24")),
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(route=st.sampled_from(IMAGE_ROUTES), batch=images())
    def one(route, batch):
        peak.reset()
        status = _send_images(url, route, batch)
        growth = peak.growth_mb()
        worst.append((growth, route, [Image.open(io.BytesIO(b)).size for b in batch], status))
        assert status < 500, (route, status)
        assert growth <= RSS_BUDGET_MB, (
            route,
            [Image.open(io.BytesIO(b)).size for b in batch],
            growth,
        )

    one()
    worst.sort(reverse=True)
    print("largest peak-RSS growths (MB, route, sizes, status):", worst[:3])


@pytest.mark.parametrize(
    "name", ["Content-Type", "Content-Length", "Authorization", "Host", "X-Anything"]
)
def test_a_header_sent_twice_is_400_on_every_route(live_server, name):
    from serving.service import ROUTES

    url, _ = live_server
    host, port = urlsplit(url).hostname, urlsplit(url).port
    body, ctype = multipart([("images", "a.png", "image/png", _image(28, 28, "L", "PNG"))])
    values = {
        "Content-Type": [ctype, "application/json"],
        # the same length twice is one length (RFC 9110 8.6); two lengths are refused
        "Content-Length": [str(len(body)), str(len(body) + 1)],
        "Authorization": ["Bearer a", "Bearer b"],
        "Host": ["127.0.0.1", "example.com"],
        "X-Anything": ["1", "2"],
    }[name]
    if name == "Host":
        # refused by the HTTP parser before the body is read: a body left unread when the server
        # closes makes its kernel reset the connection, which can discard the 400 on its way
        body = b""
    for path in ROUTES:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.putrequest("POST", path, skip_host=name == "Host")
        for v in values:
            conn.putheader(name, v)
        if name != "Content-Type":
            conn.putheader("Content-Type", ctype)
        if name != "Content-Length":
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        assert resp.status == 400, (path, name, resp.status, data[:200])


def test_metrics_stay_small_after_20000_requests_to_random_paths(live_server):
    url, _ = live_server
    host, port = urlsplit(url).hostname, urlsplit(url).port
    rng = random.Random(0)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    for _ in range(int(os.environ.get("SIGHTLINE_RANDOM_PATHS", "20000"))):
        path = "/" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=12))
        conn.request(rng.choice(["GET", "POST"]), path, body=b"{}" if rng.random() < 0.5 else None)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 404
    conn.close()
    with __import__("urllib.request").request.urlopen(f"{url}/metrics", timeout=60) as r:
        text = r.read()
    print(f"/metrics: {len(text)} bytes after the random paths")
    assert len(text) < 2**20
    assert path.encode() not in text and b"/{unknown}" in text
