"""MQTT topics to a measurement and tags: the compiled `topic_parsing` pattern (TopicParsing).

A pattern such as "_/{site}/{device}/{measurement}" names topic levels: `_` or `+` skips one,
{name} makes a tag, {measurement} the measurement; levels past the pattern are ignored.
`topic_tag` adds the whole topic as one tag. Pattern errors are ValueErrors (config errors);
a topic whose values line protocol cannot carry is a PayloadError for that message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..lineprotocol.syntax import MEASUREMENT, TAG_KEY, TAG_VALUE
from .reasons import PayloadError, quote, why_unwritable

_SKIP_LEVEL = ("_", "+")
_MEASUREMENT_LEVEL = "measurement"
_NAMED = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class TopicParsing:
    """Compiled `topic_parsing` pattern, e.g. "_/{site}/{device}/{measurement}"."""

    pattern: str = ""
    topic_tag: str = ""
    _named: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)

    @classmethod
    def compile(cls, pattern: str, topic_tag: str = "") -> TopicParsing:
        """Check a pattern (ValueError naming the bad element) and compile it."""
        return cls(pattern, topic_tag)

    def __post_init__(self) -> None:
        named = _compile_levels(self.pattern) if self.pattern else []
        if self.topic_tag:
            _check_config_name(self.topic_tag, "topic_tag")
            if any(name == self.topic_tag for _, name in named):
                raise ValueError(
                    f"topic_tag {quote(self.topic_tag)} is also a {{name}} in topic_parsing {quote(self.pattern)}"
                )
        elif self.pattern and not named:
            raise ValueError(
                f"topic_parsing {quote(self.pattern)} names no level: use {{name}} for a tag or "
                "{measurement} for the measurement in at least one level, or set topic_tag"
            )
        object.__setattr__(self, "_named", tuple(named))

    @property
    def gives_measurement(self) -> bool:
        """Whether a topic level is the measurement ({measurement})."""
        return any(name == _MEASUREMENT_LEVEL for _, name in self._named)

    def apply(self, topic: str) -> tuple[str | None, dict[str, str]]:
        """The measurement (None: not from the topic) and tags of a topic, or PayloadError."""
        tags: dict[str, str] = {}
        if self.topic_tag:
            _check_topic_value(topic, topic, TAG_VALUE, f"topic_tag {quote(self.topic_tag)}")
            tags[self.topic_tag] = topic
        if not self._named:
            return None, tags
        levels = topic.split("/")
        missing = [f"{{{name}}}" for i, name in self._named if i >= len(levels)]
        if missing:
            raise PayloadError(
                f"topic {quote(topic)} has {len(levels)} levels; topic_parsing {quote(self.pattern)} "
                f"needs {self._named[-1][0] + 1} for {', '.join(missing)}"
            )
        measurement = None
        for i, name in self._named:
            where = f"level {i + 1} ({{{name}}})"
            if name == _MEASUREMENT_LEVEL:
                measurement = levels[i]
                _check_topic_value(topic, measurement, MEASUREMENT, where)
            elif levels[i]:  # an empty tag value is left out, as line protocol has none
                _check_topic_value(topic, levels[i], TAG_VALUE, where)
                tags[name] = levels[i]
        return measurement, tags


def _compile_levels(pattern: str) -> list[tuple[int, str]]:
    """(level index, name) of each named level, {measurement} included; ValueError if bad."""
    named: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for i, element in enumerate(pattern.split("/")):
        if element in _SKIP_LEVEL:
            continue
        m = _NAMED.fullmatch(element)
        if m is None or not m.group(1):
            raise ValueError(_bad_element(pattern, i, element))
        name = m.group(1)
        if name in seen:
            raise ValueError(
                f"topic_parsing {quote(pattern)}: {element} appears at levels {seen[name] + 1} and {i + 1}; "
                "each name may be used once"
            )
        seen[name] = i
        if name != _MEASUREMENT_LEVEL:
            _check_config_name(name, f"topic_parsing {quote(pattern)}: level {i + 1}")
        named.append((i, name))
    return named


def _bad_element(pattern: str, i: int, element: str) -> str:
    allowed = "use _ or + to skip a level, {name} for a tag, or {measurement} for the measurement"
    if not element:
        what = "is empty"
    elif element == "#":
        what = '"#" is not allowed (levels past the pattern are ignored anyway)'
    else:
        what = f"{quote(element)} is not allowed"
    return f"topic_parsing {quote(pattern)}: level {i + 1} {what}; {allowed}"


def _check_config_name(name: str, where: str) -> None:
    problem = why_unwritable(name, TAG_KEY)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")


def _check_topic_value(topic: str, value: str, kind: str, where: str) -> None:
    problem = why_unwritable(value, kind)
    if problem is not None:
        raise PayloadError(f"topic {quote(topic)}: {where}: {problem}")
