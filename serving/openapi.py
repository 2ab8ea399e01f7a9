"""BentoML's OpenAPI document, made valid OpenAPI 3.0 and honest about errors.

BentoML writes JSON-Schema-2020 bounds (numeric ``exclusiveMaximum``), ``type: file`` and its own
``pil`` marker, documents no error responses and gives ``info.version`` as ``None``.
``fix_spec`` rewrites those, documents the error body every layer really returns (the guard
normalises them), the content type of each file field, and gives every operation an example.
"""

from __future__ import annotations

import copy

import sightline

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "why the request was refused"},
        "detail": {
            "type": "array",
            "description": "validation errors: where and what",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": "string"}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}
ERRORS = {
    "400": "malformed input: a missing or invalid field, an image that does not decode, a bad multipart body",
    "401": "missing or wrong bearer token (only when SIGHTLINE_API_TOKEN is set)",
    "408": "the request body did not arrive within body_timeout_s",
    "413": "over a budget: body bytes, images, pixels, characters or an email header line",
    "415": "the body's media type is not the route's (multipart/form-data where it takes files, application/json elsewhere), or it is compressed",
    "503": "overloaded: too many requests in flight; retry after Retry-After seconds",
    "504": "the request ran past timeout_s",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
DROP = ("pil", "$schema", "format_", "content_type")

# A task's routes (``@bentoml.task``): BentoML documents a status enum and required timestamps
# its server does not send (``submit`` answers only ``task_id`` and ``status``), and no 404.
TASK_STATUS = {
    "type": "object",
    "title": "TaskStatusResponse",
    "required": ["task_id", "status"],
    "properties": {
        "task_id": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["pending", "in_progress", "completed", "failed", "canceled"],
        },
        "created_at": {"type": "string"},
        "executed_at": {"type": "string", "nullable": True},
    },
}
UNKNOWN_TASK = {"404": "no task with this task_id (results are kept in this server's memory)"}
ROUTE_ERRORS = {"/clip/index_image": {"404": "no image at this index"}}
TASK_ERRORS = {
    "status": UNKNOWN_TASK,
    "retry": UNKNOWN_TASK,
    "get": {  # a failed task's answer is the refusal its request got
        **UNKNOWN_TASK,
        "400": "the task is not completed yet, or its input was malformed",
        "413": "the task's input was over a budget",
    },
}


def _fix_schema(node):
    """Recursively turn a JSON-Schema-2020 node into an OpenAPI 3.0 schema node."""
    if isinstance(node, list):
        return [_fix_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _fix_schema(v) for k, v in node.items() if k not in DROP}
    if out.get("type") == "file":
        out.update(type="string", format="binary")
    for key, bound in (("exclusiveMaximum", "maximum"), ("exclusiveMinimum", "minimum")):
        value = out.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if out.get("type") == "integer":  # an integer below n is at most n - 1
                out[bound] = value - 1 if key == "exclusiveMaximum" else value + 1
                out.pop(key)
            else:
                out[bound], out[key] = value, True
    for key in ("anyOf", "oneOf"):  # 3.0 has no null type: a nullable schema instead
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            out.pop(key)
            if len(rest) == 1:
                out.update({**rest[0], **{k: v for k, v in out.items() if k not in rest[0]}})
            else:
                out[key] = rest
            out["nullable"] = True
    if "const" in out:  # 3.0 has no const
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("type"), list):  # 3.0 has one type, plus nullable
        types = [t for t in out["type"] if t != "null"]
        out["type"] = types[0] if len(types) == 1 else out["type"]
        if "null" in node["type"]:
            out["nullable"] = True
    if "examples" in out and isinstance(out["examples"], list) and "properties" not in out:
        out.setdefault("example", out["examples"][0] if out["examples"] else None)
        out.pop("examples")
    return out


def _required(schema: dict, components: dict) -> bool:
    """Whether a request-body schema has a required property."""
    if "$ref" in schema:
        schema = components.get(schema["$ref"].rsplit("/", 1)[-1], {})
    return bool(schema.get("required"))


def _example(schema: dict, components: dict):
    """An example value for a request-body schema, from its own examples and defaults."""
    if "$ref" in schema:
        schema = components.get(schema["$ref"].rsplit("/", 1)[-1], {})
    if "example" in schema:
        return schema["example"]
    if "default" in schema:
        return schema["default"]
    if schema.get("type") == "object" or "properties" in schema:
        required = set(schema.get("required", []))
        props = schema.get("properties", {})
        return {
            k: _example(v, components) for k, v in props.items() if k in required or "example" in v
        }
    if schema.get("type") == "array":
        return [_example(schema.get("items", {}), components)]
    if schema.get("format") == "binary":
        return "<file>"
    return {"integer": 1, "number": 1.0, "boolean": True, "string": "text"}.get(schema.get("type"))


DESCRIPTION = """Image classification (from scratch, and on a pretrained ImageNet backbone), spam
filtering, VAE and GAN generation and CLIP search, one route prefix per model (`/classifier`,
`/transfer`, `/spam`, `/vae`, `/gan`, `/clip`).

Errors are JSON `{"error": reason}` (validation errors add `detail`): 400 for malformed input,
401 without the bearer token (when the server sets one), 413 over a budget (body size, images,
pixels, characters), 503 with `Retry-After` when overloaded, 504 past the timeout.
Multipart fields that hold lists or objects are sent as JSON text."""
HEALTH = ("/livez", "/readyz", "/healthz")


def _responses(path: str, method: str) -> dict[str, str]:
    """The error responses an operation can give, as the guard and the service write them."""
    if path in HEALTH:
        return {"503": "not ready (readyz) or not alive (livez)"}
    if method == "get":
        return {k: ERRORS[k] for k in ("401", "503")}
    return ERRORS


def fix_spec(spec: dict, file_fields: dict[str, dict[str, str]]) -> dict:
    """``/docs.json`` as BentoML writes it -> valid, documented OpenAPI 3.0.

    Args:
        spec: the document.
        file_fields: ``{route: {field: content type}}`` of the multipart file fields.
    """
    spec = _fix_schema(copy.deepcopy(spec))
    spec["info"] = {
        "title": spec.get("info", {}).get("title", "sightline"),
        "version": sightline.__version__,
        "description": DESCRIPTION,
    }
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    if "TaskStatusResponse" in components:
        components["TaskStatusResponse"] = TASK_STATUS
    tasks = {
        path.removesuffix("/submit") for path in spec.get("paths", {}) if path.endswith("/submit")
    }
    ref = {"$ref": "#/components/schemas/Error"}
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            for code in ("404", "500"):  # BentoML's own, with bodies the guard rewrites
                op["responses"].pop(code, None)
            responses = _responses(path, method)
            if path.rsplit("/", 1)[0] in tasks:  # BentoML names retry and cancel alike
                op["operationId"] = "sightline__" + path.strip("/").replace("/", "_")
                responses = {**responses, **TASK_ERRORS.get(path.rsplit("/", 1)[1], {})}
            responses = {**responses, **ROUTE_ERRORS.get(path, {})}
            for code, text in responses.items():
                response = {"description": text, "content": {"application/json": {"schema": ref}}}
                if code == "503":
                    response["headers"] = RETRY_AFTER
                op["responses"][code] = response
            body = op.get("requestBody", {}).get("content", {})
            if body:  # a route with required arguments needs its body
                op["requestBody"]["required"] = any(
                    _required(c.get("schema", {}), components) for c in body.values()
                )
            for media_type, content in body.items():
                schema = content.get("schema", {})
                if media_type == "multipart/form-data":
                    files = file_fields.get(path, {})
                    props = schema.get("properties", {})
                    content["encoding"] = {
                        f: {"contentType": files.get(f, "application/json")}
                        for f, s in props.items()
                        if f in files or s.get("type") in ("array", "object")
                    }
                if "example" not in content and "examples" not in content:
                    content["example"] = _example(schema, components)
    return spec
