"""Error bodies and logs: every refusal leaves as ``{"error": reason}`` JSON (plus ``detail``
for validation errors), whatever layer wrote it, and a client's mistake is logged in one line."""

from __future__ import annotations

import json
import logging


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
