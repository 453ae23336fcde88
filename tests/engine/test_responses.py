"""A request plugin's return value shaped Flask-style as (status, headers, body)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from appliance.engine.responses import flask_response

# -- flask_response ---------------------------------------------------------------------------


class FlaskLike:
    """Enough of a flask.Response for the engine: marker, status_code, get_data(), headers."""

    def __init__(self, data: Any, status: Any = 201, headers: Any = None, marker: Any = True) -> None:
        self.data, self.status_code, self.marker = data, status, marker
        self.headers = headers if headers is not None else {"Content-Type": "text/csv", "X-A": 1}

    def __flask_response__(self) -> Any:
        return self.marker

    def get_data(self) -> Any:
        return self.data

    def __iter__(self) -> Iterator[str]:
        return iter(["iterated"])


class Headers:
    """Like werkzeug's Headers: items() yields pairs, possibly repeated."""

    def items(self) -> list[tuple[str, str]]:
        return [("X-One", "1"), ("X-Two", "2")]


def test_flask_like_object() -> None:
    assert flask_response(FlaskLike("a,b\n")) == (201, {"Content-Type": "text/csv", "X-A": "1"}, b"a,b\n")
    assert flask_response(FlaskLike(b"\x00raw", 200, Headers())) == (
        200,
        {"X-One": "1", "X-Two": "2"},
        b"\x00raw",
    )
    assert flask_response(FlaskLike("x", 200, [("X-Pair", "p")]))[1] == {"X-Pair": "p"}


def test_flask_like_object_errors() -> None:
    with pytest.raises(ValueError, match="expected str"):
        flask_response(FlaskLike(42))
    with pytest.raises(ValueError, match="invalid status code 99"):
        flask_response(FlaskLike("x", 99))
    with pytest.raises(ValueError, match="invalid status code '200'"):
        flask_response(FlaskLike("x", "200"))


def test_flask_marker_false_falls_through_to_later_rules() -> None:
    assert flask_response(FlaskLike("x", marker=False)) == (
        200,
        {"Content-Type": "text/html; charset=utf-8"},
        b"iterated",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (("hi",), (200, {"Content-Type": "text/html; charset=utf-8"}, b"hi")),
        (("hi", 201), (201, {"Content-Type": "text/html; charset=utf-8"}, b"hi")),
        (({"a": 1}, 202), (202, {"Content-Type": "application/json"}, b'{"a": 1}')),
        (([1, 2],), (200, {"Content-Type": "application/json"}, b"[1, 2]")),
        ((42, 200), (200, {"Content-Type": "text/plain; charset=utf-8"}, b"42")),
        ((None,), (200, {"Content-Type": "text/plain; charset=utf-8"}, b"None")),
        ((b"\x89PNG", 200), (200, {"Content-Type": "application/octet-stream"}, b"\x89PNG")),
        ((bytearray(b"ab"),), (200, {"Content-Type": "application/octet-stream"}, b"ab")),
        (("hi", {"X-A": "1"}), (200, {"Content-Type": "text/html; charset=utf-8", "X-A": "1"}, b"hi")),
        (
            ("hi", 404, {"X-A": 5, "content-type": "text/plain"}),
            (404, {"X-A": "5", "content-type": "text/plain"}, b"hi"),
        ),
        (("a,b", 200, {"Content-Type": "text/csv"}), (200, {"Content-Type": "text/csv"}, b"a,b")),
    ],
)
def test_tuple_forms(value: tuple[Any, ...], expected: tuple[int, dict[str, str], bytes]) -> None:
    assert flask_response(value) == expected


def test_tuple_errors() -> None:
    with pytest.raises(ValueError, match="^expected a dictionary in header item$"):
        flask_response(("hi", 200, "X-A: 1"))
    with pytest.raises(ValueError, match="^expected a dictionary in header item$"):
        flask_response(("hi", 200, [("X-A", "1")]))
    with pytest.raises(ValueError, match="dictionary in header item"):
        flask_response(("hi", "201"))
    with pytest.raises(ValueError, match="dictionary in header item"):
        flask_response(("hi", {"X": "1"}, {"Y": "2"}))
    with pytest.raises(ValueError, match="invalid status code 600"):
        flask_response(("hi", 600))
    with pytest.raises(ValueError, match="invalid status code 99"):
        flask_response(("hi", 99, {}))
    with pytest.raises(ValueError, match="invalid status code True"):
        flask_response(("hi", True))


def test_header_names_validated_and_values_stringified() -> None:
    status, headers, _ = flask_response(
        ("hi", 200, {"Bad\nName": "x", "Bad Name": "x", "": "x", 7: "x", "X-Ok": 3.5, "X-Split": "a\r\nb"})
    )
    assert headers == {"Content-Type": "text/html; charset=utf-8", "X-Ok": "3.5", "X-Split": ""}


def test_str_is_html() -> None:
    assert flask_response("<b>hé</b>") == (
        200,
        {"Content-Type": "text/html; charset=utf-8"},
        "<b>hé</b>".encode(),
    )


def test_dict_and_list_are_json() -> None:
    assert flask_response({"ok": True, "n": [1]}) == (
        200,
        {"Content-Type": "application/json"},
        b'{"ok": true, "n": [1]}',
    )
    assert flask_response([]) == (200, {"Content-Type": "application/json"}, b"[]")
    with pytest.raises(ValueError, match="could not convert the return value to JSON"):
        flask_response({"when": datetime(2025, 1, 1)})


@pytest.mark.parametrize("value", [b"\x00\xff", bytearray(b"\x00\xff"), memoryview(b"\x00\xff")])
def test_bare_bytes_are_octet_stream(value: Any) -> None:
    assert flask_response(value) == (200, {"Content-Type": "application/octet-stream"}, b"\x00\xff")


def test_other_iterables_concatenate_str_and_utf8_bytes() -> None:
    def gen() -> Iterator[Any]:
        yield "a"
        yield b"b\xc3\xa9"
        yield b"\xff"  # not UTF-8: skipped
        yield 3  # neither str nor bytes: skipped
        yield "c"

    assert flask_response(gen()) == (200, {"Content-Type": "text/html; charset=utf-8"}, "abéc".encode())
    assert flask_response(("a", "b", "c", "d")) == (
        200,
        {"Content-Type": "text/html; charset=utf-8"},
        b"abcd",
    )
    assert flask_response(()) == (200, {"Content-Type": "text/html; charset=utf-8"}, b"")
    assert flask_response({"x"}) == (200, {"Content-Type": "text/html; charset=utf-8"}, b"x")


def test_iteration_failure_is_an_error() -> None:
    def broken() -> Iterator[str]:
        yield "a"
        raise RuntimeError("boom")

    with pytest.raises(ValueError, match="iterating the return value failed: boom"):
        flask_response(broken())


@pytest.mark.parametrize("value", [None, 42, 1.5, True, object()])
def test_unsupported_return_types(value: Any) -> None:
    with pytest.raises(ValueError, match="^Unsupported return type from Python function$"):
        flask_response(value)
