"""Form bodies as the guard reads them: multipart parts in memory, with python-multipart's
parser and limits that name what is wrong, and image sizes read from headers only."""

from __future__ import annotations

import fnmatch
import io
import json

from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELDS = 16  # non-file multipart fields (labels, templates, steps, top_k...)
MAX_FIELD_BYTES = 256 * 1024  # one non-file multipart field
MAX_PART_HEADER_BYTES = 16 * 1024  # the headers of one multipart part
# a file name: BentoML stores a file upload under it (plus a 10-character prefix); 255 bytes is
# the usual file-system limit of a name
MAX_FILENAME_BYTES = 200


class ClientError(Exception):
    """A request refused by the guard: its status and reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


# --- multipart --------------------------------------------------------------------------------


class Part:
    __slots__ = ("headers", "name", "filename", "content_type", "data")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.name = self.filename = self.content_type = None
        self.data = bytearray()


def boundary_of(content_type: bytes) -> bytes:
    """The boundary a multipart Content-Type names; ``ClientError`` (400) without one."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ClientError(400, "multipart body: the Content-Type has no boundary")
    if len(boundary) > 200:
        raise ClientError(
            400, f"multipart body: the boundary is {len(boundary)} characters; at most 200"
        )
    return boundary


def parse_multipart(content_type: bytes, body: bytes, max_files: int) -> list[Part]:
    """The parts of a multipart body, in memory (it is already bounded by the size limit).

    Raises:
        ClientError: 400 naming what is malformed or over the parser's limits.
    """
    boundary = boundary_of(content_type)
    parts: list[Part] = []
    state = {"field": b"", "value": b"", "header_bytes": 0}

    def on_part_begin() -> None:
        parts.append(Part())
        state["header_bytes"] = 0

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = parts[-1]
        part.data += data[start:end]
        if part.filename is None and len(part.data) > MAX_FIELD_BYTES:
            raise ClientError(
                400,
                f"multipart field {part.name!r}: over {MAX_FIELD_BYTES} bytes; send large content as a file",
            )

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]
        state["header_bytes"] += end - start

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]
        state["header_bytes"] += end - start
        if state["header_bytes"] > MAX_PART_HEADER_BYTES:
            raise ClientError(
                400, f"multipart body: a part's headers are over {MAX_PART_HEADER_BYTES} bytes"
            )

    def on_header_end() -> None:
        parts[-1].headers.append((state["field"].lower(), state["value"]))
        state["field"] = state["value"] = b""

    def on_headers_finished() -> None:
        part, headers = parts[-1], dict(parts[-1].headers)
        _, opts = parse_options_header(headers.get(b"content-disposition"))
        if b"name" not in opts:
            raise ClientError(400, "multipart body: a part has no Content-Disposition name")
        part.name = opts[b"name"].decode("utf-8", "replace")
        if b"filename" in opts:
            part.filename = opts[b"filename"].decode("utf-8", "replace")
            part.content_type = headers.get(b"content-type", b"").decode("latin-1").strip() or None
        files = sum(p.filename is not None for p in parts)
        if files > max_files:
            raise ClientError(
                400, f"multipart body: more than {max_files} files; at most {max_files} per request"
            )
        if len(parts) - files > MAX_FIELDS:
            raise ClientError(400, f"multipart body: more than {MAX_FIELDS} fields")

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except ClientError:
        raise
    except Exception as err:  # noqa: BLE001 - python-multipart raises several types
        raise ClientError(400, f"multipart body: malformed ({err})") from None
    if not parts:
        raise ClientError(400, "multipart body: no parts")
    return parts


def check_parts(
    parts: list[Part],
    files: dict[str, str],
    required: frozenset[str],
    max_pixels: int,
    lists: frozenset[str] = frozenset(),
) -> None:
    """Refuse what BentoML would misread in a route's multipart parts.

    Args:
        parts: the parsed parts.
        files: ``{field: content type}`` of the route's file fields.
        required: the file fields the request must carry.
        max_pixels: the request's budget of decoded pixels.
        lists: the text fields that hold lists, which may come as several parts
            (``merge_lists`` joins them).

    Raises:
        ClientError: 400 naming the field (a file field sent as text, which BentoML would fetch
            as a URL; a text field sent as a file or not UTF-8; a file name the file system
            refuses; a repeated text field; a missing file), 413 over ``max_pixels``.
    """
    texts = [p.name for p in parts if p.name not in files and p.name not in lists]
    for name in {n for n in texts if texts.count(n) > 1}:  # BentoML would keep only one
        raise ClientError(
            400, f"{name}: given {texts.count(name)} times; send one value (lists as JSON text)"
        )
    for part in parts:
        if part.name in files and part.filename is None:
            raise ClientError(
                400,
                f"{part.name}: expected a file upload, got a text field (URLs are never fetched; upload the file itself)",
            )
        if part.name not in files and part.filename is not None:
            raise ClientError(400, f"{part.name}: expected a text field, got a file upload")
        if part.name in files and not fnmatch.fnmatch(part.content_type or "", files[part.name]):
            raise ClientError(  # as BentoML would, but before a task is stored
                400,
                f"{part.name}: Invalid content type {part.content_type or '(none)'}, expected {files[part.name]}",
            )
        if part.filename is not None:
            size = len(part.filename.encode("utf-8", "surrogateescape"))
            if size > MAX_FILENAME_BYTES or "\x00" in part.filename:
                raise ClientError(
                    400,
                    f"{part.name}: the file name must be at most {MAX_FILENAME_BYTES} bytes without NUL (given {size} bytes)",
                )
        elif part.name not in files:
            try:
                bytes(part.data).decode("utf-8")
            except UnicodeDecodeError:
                raise ClientError(400, f"{part.name}: not UTF-8 text") from None
    for name in required:
        if not any(p.name == name for p in parts):
            raise ClientError(400, f"{name}: missing (a file upload)")
    pixels = image_pixels([p for p in parts if p.name in files], max_pixels)
    if pixels > max_pixels:
        raise ClientError(413, f"images: {pixels} pixels in one request; the limit is {max_pixels}")


def merge_lists(parts: list[Part], lists: frozenset[str], boundary: bytes) -> bytes | None:
    """A list field sent the way OpenAPI describes a form's array (one part per item, or one
    item alone) as the single JSON text BentoML reads; ``None`` when nothing needs joining.

    A field sent once whose text is a JSON array is left as it is.
    """
    values: dict[str, list[str]] = {}
    for part in parts:
        if part.name in lists and part.filename is None:
            values.setdefault(part.name, []).append(bytes(part.data).decode("utf-8"))
    join = {name for name, items in values.items() if len(items) > 1 or not _json_list(items[0])}
    if not join:
        return None
    out, done = io.BytesIO(), set()
    for part in parts:
        if part.name in join:
            if part.name in done:
                continue
            done.add(part.name)
            headers = [(b"content-disposition", f'form-data; name="{part.name}"'.encode())]
            data = json.dumps(values[part.name]).encode()
        else:
            headers, data = part.headers, bytes(part.data)
        out.write(b"--" + boundary + b"\r\n")
        for key, value in headers:
            out.write(key + b": " + value + b"\r\n")
        out.write(b"\r\n" + data + b"\r\n")
    out.write(b"--" + boundary + b"--\r\n")
    return out.getvalue()


def _json_list(text: str) -> bool:
    try:
        return isinstance(json.loads(text), list)
    except ValueError:
        return False


def image_pixels(parts: list[Part], max_pixels: int) -> int:
    """Pixels the request's image files would decode to, read from their headers only
    (``sightline.data.decode.open_image``); ``ClientError`` 413 for one image over
    ``max_pixels`` or a decompression bomb."""
    from sightline.data.decode import open_image
    from sightline.errors import BudgetError, InputError

    total = 0
    for part in parts:
        if part.filename is None or not (part.content_type or "").startswith("image/"):
            continue
        try:
            im = open_image(bytes(part.data), max_pixels, part.name)
        except BudgetError as err:
            raise ClientError(413, str(err)) from None
        except InputError:  # an undecodable image is the route's 400, with its name
            continue
        total += im.width * im.height
        im.close()
    return total
