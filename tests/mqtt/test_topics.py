"""Topic parsing: topic levels to a measurement and tags, and bad patterns as config errors."""

from __future__ import annotations

import json

import pytest

from appliance.mqtt.jsonlines import JsonOptions
from appliance.mqtt.reasons import PayloadError
from appliance.mqtt.topics import TopicParsing
from tests.mqtt.readback import ARRIVAL, rows

# -- TopicParsing -------------------------------------------------------------------------


def test_topic_levels_become_tags_and_the_measurement() -> None:
    parsing = TopicParsing.compile("_/{site}/{device}/{measurement}")
    assert parsing.apply("sensors/lab/dev1/temp") == ("temp", {"site": "lab", "device": "dev1"})


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("a/lab/dev", {"site": "lab", "device": "dev"}),  # exactly the pattern's depth
        ("a/lab/dev/x", {"site": "lab", "device": "dev"}),  # deeper topics from a `#` filter
        ("a/lab/dev/x/y/z", {"site": "lab", "device": "dev"}),
        ("b/lab2/dev9/temp/extra", {"site": "lab2", "device": "dev9"}),  # any first level under `+`
    ],
)
def test_levels_past_the_pattern_are_ignored(topic: str, expected: dict[str, str]) -> None:
    assert TopicParsing.compile("+/{site}/{device}").apply(topic) == (None, expected)


def test_skipped_levels_past_the_last_named_one_need_not_exist() -> None:
    assert TopicParsing.compile("{site}/_/+").apply("lab") == (None, {"site": "lab"})


def test_topic_tag_adds_the_whole_topic() -> None:
    assert TopicParsing.compile("", "topic").apply("a/b c/d") == (None, {"topic": "a/b c/d"})
    parsed = TopicParsing.compile("_/{measurement}", "topic").apply("s/temp/x")
    assert parsed == ("temp", {"topic": "s/temp/x"})
    # A pattern of skipped levels is fine when topic_tag names something.
    assert TopicParsing.compile("_/+", "t").apply("x") == (None, {"t": "x"})


def test_empty_pattern_means_no_topic_parsing() -> None:
    parsing = TopicParsing.compile("")
    assert parsing.apply("any/topic/at/all") == (None, {})
    assert parsing.apply("") == (None, {})


def test_topic_with_too_few_levels_names_the_topic_and_the_missing_elements() -> None:
    parsing = TopicParsing.compile("_/{site}/{device}/{measurement}")
    with pytest.raises(PayloadError) as exc:
        parsing.apply("sensors/lab")
    message = str(exc.value)
    assert '"sensors/lab"' in message and "{device}, {measurement}" in message and "\n" not in message
    assert message.endswith("needs 4 for {device}, {measurement}")


def test_empty_tag_level_is_left_out() -> None:
    assert TopicParsing.compile("{a}/{b}/{c}").apply("x//z") == (None, {"a": "x", "c": "z"})
    assert TopicParsing.compile("{a}/{b}").apply("/y") == (None, {"b": "y"})


def test_empty_measurement_level_is_an_error() -> None:
    with pytest.raises(
        PayloadError, match=r'topic "s//x": level 2 \(\{measurement\}\): measurement "" is empty'
    ):
        TopicParsing.compile("_/{measurement}/{d}").apply("s//x")


@pytest.mark.parametrize(
    ("pattern", "topic", "fragment"),
    [
        ("{a}", "x\ty", "contains a tab"),
        ("{a}", "x\\", "ends with a backslash"),
        ("{measurement}", "#x", "starts with #"),
        ("", "line\nbreak", "contains a line break"),
    ],
)
def test_topic_values_line_protocol_cannot_carry_are_errors(pattern: str, topic: str, fragment: str) -> None:
    with pytest.raises(PayloadError, match=fragment):
        TopicParsing.compile(pattern, "" if pattern else "topic").apply(topic)


@pytest.mark.parametrize(
    ("pattern", "topic_tag", "fragment"),
    [
        ("sensors/{site}", "", 'level 1 "sensors" is not allowed; use _ or + to skip a level'),
        ("_/#", "", 'level 2 "#" is not allowed'),
        ("_//{site}", "", "level 2 is empty"),
        ("/{site}", "", "level 1 is empty"),
        ("{site}/", "", "level 2 is empty"),
        ("{site", "", 'level 1 "{site" is not allowed'),
        ("{}", "", 'level 1 "{}" is not allowed'),
        ("{a}b", "", 'level 1 "{a}b" is not allowed'),
        ("+x/{a}", "", 'level 1 "+x" is not allowed'),
        ("{site}/{site}", "", "{site} appears at levels 1 and 2"),
        ("{measurement}/_/{measurement}", "", "{measurement} appears at levels 1 and 3"),
        ("_/+", "", "names no level"),
        ("_", "", "names no level"),
        ("{time}", "", 'tag key "time" is reserved'),
        ("{a\tb}", "", "contains a tab"),
        ("{site}", "site", 'topic_tag "site" is also a {name}'),
        ("", "time", 'topic_tag: tag key "time" is reserved'),
    ],
)
def test_bad_patterns_are_config_errors_naming_pattern_and_element(
    pattern: str, topic_tag: str, fragment: str
) -> None:
    with pytest.raises(ValueError) as exc:
        TopicParsing.compile(pattern, topic_tag)
    assert not isinstance(exc.value, PayloadError)
    message = str(exc.value)
    assert fragment in message and "\n" not in message
    if pattern and "topic_tag" not in fragment:
        assert json.dumps(pattern) in message


def test_special_characters_in_topic_levels_survive_the_write() -> None:
    measurement, tags = TopicParsing.compile("{measurement}/{site}/{k}", "topic").apply("my m,1/a b,c=d/x\\y")
    assert (measurement, tags) == ("my m,1", {"topic": "my m,1/a b,c=d/x\\y", "site": "a b,c=d", "k": "x\\y"})
    got = rows({"v": 1}, JsonOptions(), measurement=measurement, tags=tags)
    assert got == [{"_table": "my m,1", "_time": ARRIVAL, **tags, "v": 1.0}]
