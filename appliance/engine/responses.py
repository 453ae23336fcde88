"""Request plugins' replies: a plugin's return value shaped Flask-style as (status, headers, body).

The engine hands HTTP a `RequestResult`: the shaped reply, or why there is none (no trigger
serves the path, its database is gone, the plugin timed out or failed); `http/engine_replies`
turns the latter into status codes and JSON bodies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

_HTML = "text/html; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"
_OCTETS = "application/octet-stream"
# RFC 9110 token characters: anything else in a header name would corrupt the response head.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _status(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"invalid status code {value!r}: expected an int between 100 and 599")
    if not 100 <= value <= 599:
        raise ValueError(f"invalid status code {value}: expected an int between 100 and 599")
    return value


def _header_items(headers: Any) -> Iterable[Any]:
    if isinstance(headers, Mapping):
        return list(headers.items())
    items = getattr(headers, "items", None)
    # werkzeug's Headers has items(); a list of pairs is what Flask also accepts.
    return list(items()) if callable(items) else list(headers)


def _merge_headers(base: dict[str, str], extra: Any) -> dict[str, str]:
    """Add plugin headers over `base`: names compared case-insensitively, invalid names dropped."""
    merged = dict(base)
    for item in _header_items(extra):
        try:
            name, value = item
        except (TypeError, ValueError):
            continue
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            continue
        text = str(value)
        # A CR or LF would split the header; InfluxDB 3 also turns an invalid value into "".
        if any(c in text for c in "\r\n\0"):
            text = ""
        for existing in [k for k in merged if k.lower() == name.lower()]:
            del merged[existing]
        merged[name] = text
    return merged


def _body(value: Any) -> tuple[bytes, str]:
    """A tuple's body element: str as HTML, dict/list as JSON, bytes as octets, else str() as text."""
    if isinstance(value, str):
        return value.encode(), _HTML
    if isinstance(value, (dict, list)):
        return _json(value), _JSON
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), _OCTETS
    return str(value).encode(), _TEXT


def _json(value: Any) -> bytes:
    try:
        return json.dumps(value).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"could not convert the return value to JSON: {exc}") from None


def _flask_object(value: Any) -> tuple[int, dict[str, str], bytes]:
    status = _status(getattr(value, "status_code", None))
    data = value.get_data()
    if isinstance(data, str):
        body = data.encode()
    elif isinstance(data, (bytes, bytearray)):
        body = bytes(data)  # real Flask Response.get_data() returns bytes; InfluxDB only takes str
    else:
        raise ValueError(f"get_data() of the returned response gave {type(data).__name__}, expected str")
    headers = getattr(value, "headers", None)
    return status, _merge_headers({}, headers) if headers is not None else {}, body


def _tuple(value: tuple[Any, ...]) -> tuple[int, dict[str, str], bytes]:
    body, content_type = _body(value[0])
    status, headers = 200, None
    if len(value) >= 2:
        second = value[1]
        if isinstance(second, int):
            status = _status(second)  # a bool lands here too, and is refused as a status
        elif isinstance(second, Mapping) and len(value) == 2:
            headers = second
        else:
            raise ValueError(
                f"expected an int status code or a dictionary in header item, got {type(second).__name__}"
            )
    if len(value) == 3:
        if not isinstance(value[2], Mapping):
            raise ValueError("expected a dictionary in header item")
        headers = value[2]
    base = {"Content-Type": content_type}
    return status, _merge_headers(base, headers) if headers is not None else base, body


def _concatenate(value: Iterable[Any]) -> bytes:
    parts: list[str] = []
    try:
        for item in value:
            if isinstance(item, str):
                parts.append(item)
            elif isinstance(item, (bytes, bytearray)):
                try:
                    parts.append(bytes(item).decode())
                except UnicodeDecodeError:
                    continue  # InfluxDB 3 keeps only the bytes items that are valid UTF-8
    except Exception as exc:
        raise ValueError(f"iterating the return value failed: {exc}") from None
    return "".join(parts).encode()


def flask_response(value: Any) -> tuple[int, dict[str, str], bytes]:
    """Shape a request plugin's return value as (status, headers, body), Flask-style; ValueError if it can't."""
    marker = getattr(value, "__flask_response__", None)
    if callable(marker):
        try:
            is_flask = bool(marker())
        except Exception as exc:
            raise ValueError(f"__flask_response__() of the returned object failed: {exc}") from None
        if is_flask:
            return _flask_object(value)
    if isinstance(value, tuple) and 1 <= len(value) <= 3:
        return _tuple(value)
    if isinstance(value, str):
        return 200, {"Content-Type": _HTML}, value.encode()
    if isinstance(value, (dict, list)):
        return 200, {"Content-Type": _JSON}, _json(value)
    # Ours: bytes are a body (files, images, protobuf), not an iterable of ints giving an empty body.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return 200, {"Content-Type": _OCTETS}, bytes(value)
    if value is not None and isinstance(value, Iterable):
        return 200, {"Content-Type": _HTML}, _concatenate(value)
    raise ValueError("Unsupported return type from Python function")


#: Why a request got no reply from its plugin; `http/engine_replies` maps each to a status.
Outcome = Literal["answered", "no_trigger", "no_database", "timeout", "failed"]


@dataclass(frozen=True)
class RequestResult:
    """What running a request trigger gave: the plugin's shaped reply when answered, else the reason."""

    outcome: Outcome
    reply: tuple[int, dict[str, str], bytes] | None = None
    error: str = ""
