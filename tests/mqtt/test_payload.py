"""Line protocol payloads retagged with topic data, each output read back by the real line protocol
parser."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from appliance.lineprotocol.parser import parse
from appliance.model import Precision
from appliance.mqtt.jsonlines import JsonOptions
from appliance.mqtt.payload import retag_lines
from appliance.mqtt.reasons import MAX_REASONS, Reasons
from appliance.mqtt.topics import TopicParsing
from tests.mqtt.readback import ARRIVAL, NAME, NOW, SECOND, TEXT, VALUE, convert, read

# -- retag_lines ----------------------------------------------------------------------------


def test_retag_without_topic_data_returns_the_body_unchanged() -> None:
    body = b"m,t=1 f=1 5\nnot line protocol at all"
    assert retag_lines(body, None, {}) is body


def test_retag_adds_topic_tags() -> None:
    out = retag_lines(b"cpu,host=a usage=1.5 10", None, {"site": "lab", "rack": "r1"})
    assert out == b"cpu,host=a,site=lab,rack=r1 usage=1.5 10"
    assert read(out) == [
        {"_table": "cpu", "_time": 10, "host": "a", "site": "lab", "rack": "r1", "usage": 1.5}
    ]


def test_retag_replaces_the_measurement() -> None:
    out = retag_lines(b"cpu,host=a usage=1.5 10\nmem free=2i 20", "from topic", {})
    assert [r["_table"] for r in read(out)] == ["from topic", "from topic"]
    assert out == b"from\\ topic,host=a usage=1.5 10\nfrom\\ topic free=2i 20"


def test_retag_keeps_the_payloads_own_tags() -> None:
    out = retag_lines(b"m,site=payload f=1 1", None, {"site": "topic", "extra": "x"})
    assert read(out) == [{"_table": "m", "_time": 1, "site": "payload", "extra": "x", "f": 1.0}]


def test_retag_handles_escapes_in_the_payload() -> None:
    body = b'my\\ m\\,1,a\\,b=c\\ d,e\\=f=g\\,h f\\ 1="x, y=z \\"q\\"",g=1i 5'
    out = retag_lines(body, None, {"a,b": "topic", "e=f": "topic", "new tag": "v,1=2"})
    assert read(out) == [
        {
            "_table": "my m,1",
            "_time": 5,
            "a,b": "c d",
            "e=f": "g,h",
            "new tag": "v,1=2",
            "f 1": 'x, y=z "q"',
            "g": 1,
        }
    ]
    renamed = retag_lines(body, "n", {})
    assert renamed == b'n,a\\,b=c\\ d,e\\=f=g\\,h f\\ 1="x, y=z \\"q\\"",g=1i 5'


def test_retag_keeps_comments_blank_lines_whitespace_and_crlf() -> None:
    body = b"# a comment,with=stuff x=1\n\n   \n  cpu v=1 1\r\n\tmem v=2 2\r\n#another\n"
    out = retag_lines(body, None, {"site": "lab"})
    assert (
        out
        == b"# a comment,with=stuff x=1\n\n   \n  cpu,site=lab v=1 1\r\n\tmem,site=lab v=2 2\r\n#another\n"
    )
    assert [(r["_table"], r["site"]) for r in read(out)] == [("cpu", "lab"), ("mem", "lab")]


def test_retag_does_not_touch_the_continuation_of_a_multiline_string() -> None:
    body = b'm s="first\nnot,a=series key",n=1 1\nm2 v=2 2\nm3 s="end\\\\" 3'
    out = retag_lines(body, None, {"site": "lab"})
    assert (
        out == b'm,site=lab s="first\nnot,a=series key",n=1 1\nm2,site=lab v=2 2\nm3,site=lab s="end\\\\" 3'
    )
    assert [r.get("s") for r in read(out)] == ["first\nnot,a=series key", None, "end\\"]


def test_retag_keeps_lines_that_do_not_parse_as_they_are() -> None:
    bad = [
        b"garbage",
        b",t=1 f=1",
        b"m,novalue f=1",
        b"m,=v f=1",
        b"m,k= f=1",
        b"m\\\\ f=1",
        b"m,t=v\\\\ f=1",
        b"m\tx f=1",
    ]
    body = b"\n".join([b"ok v=1 1", *bad])
    out = retag_lines(body, "new", {"site": "lab"})
    assert out.split(b"\n") == [b"new,site=lab v=1 1", *bad]
    result = parse(out, Precision.NS, NOW)
    assert result.tables[0].num_rows == 1 and len(result.errors) == len(bad)


def test_retag_lists_the_first_unreadable_lines_and_counts_the_rest() -> None:
    body = b"x\n" * 1000 + b"ok v=1 1"
    errors = Reasons()
    out = retag_lines(body, None, {"dev": "a"}, errors)
    assert out.endswith(b"\nok,dev=a v=1 1") and out.count(b"\n") == 1000
    assert len(errors) == MAX_REASONS and errors.omitted == 1000 - MAX_REASONS and errors.total == 1000
    assert errors[0].startswith("line 1: its series key") and errors[-1].startswith(f"line {MAX_REASONS}:")
    plain: list[str] = []  # a plain list gets the listed ones and one line counting the rest
    retag_lines(body, None, {"dev": "a"}, plain)
    assert (
        plain[:-1] == errors
        and plain[-1] == f"and {1000 - MAX_REASONS} more lines whose series key could not be read"
    )


def test_retag_keeps_bytes_that_are_not_utf8() -> None:
    body = b"m,t=\xff v=1 1\nm v=\xfe 2"
    assert retag_lines(body, None, {"a": "b"}) == b"m,t=\xff,a=b v=1 1\nm,a=b v=\xfe 2"


def test_retag_leaves_timestamps_to_the_writes_precision() -> None:
    out = retag_lines(b"m v=1 1700000000", None, {"a": "b"})
    assert read(out, Precision.S) == [{"_table": "m", "_time": 1_700_000_000 * SECOND, "a": "b", "v": 1.0}]


def test_retag_ignores_values_line_protocol_cannot_carry() -> None:
    body = b"m v=1 1"
    assert retag_lines(body, "#x", {"": "v", "k": "a\nb"}) == body
    assert retag_lines(body, "a\tb", {"ok": "yes", "e": ""}) == b"m,ok=yes v=1 1"


def test_topic_parsing_and_retag_together() -> None:
    measurement, tags = TopicParsing.compile("_/{site}/{measurement}").apply("plant/hall 2/power/extra")
    out = retag_lines(b"meter,phase=1 watts=230.5 1\nmeter,phase=2 watts=231 2", measurement, tags)
    assert read(out) == [
        {"_table": "power", "_time": 1, "phase": "1", "site": "hall 2", "watts": 230.5},
        {"_table": "power", "_time": 2, "phase": "2", "site": "hall 2", "watts": 231.0},
    ]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    measurement=st.none() | NAME.filter(lambda s: not s.startswith("#")),
    tags=st.dictionaries(NAME, VALUE, max_size=3),
    own_key=NAME,
    own_value=VALUE,
    string=TEXT,
)
def test_retag_round_trips_arbitrary_names(
    measurement: str | None, tags: dict[str, str], own_key: str, own_value: str, string: str
) -> None:
    assume("s" not in tags and own_key != "s")
    body, errors = convert(
        {own_key: own_value, "s": string}, JsonOptions(tag_keys=(own_key,)), measurement="orig"
    )
    assert errors == []
    row = {
        **tags,
        own_key: own_value,  # the payload's own tag wins
        "_table": measurement if measurement is not None else "orig",
        "_time": ARRIVAL,
        "s": string,
    }
    assert read(retag_lines(body + b"\n# note\n" + body, measurement, tags)) == [row, row]


def test_retag_lines_reports_lines_it_cannot_retag() -> None:
    errors: list[str] = []
    out = retag_lines(b"m,t,=v f=1 1\ncpu,h=a u=1 2", None, {"site": "x"}, errors)
    assert out == b"m,t,=v f=1 1\ncpu,h=a,site=x u=1 2"
    assert errors == ["line 1: its series key could not be read, so the topic tags were not added"]
