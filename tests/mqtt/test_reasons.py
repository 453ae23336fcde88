"""Reasons: the first ones listed, the rest counted."""

from __future__ import annotations

from appliance.mqtt.reasons import Reasons


def test_reasons_keep_the_first_ones_and_count_the_rest() -> None:
    r = Reasons(limit=2)
    r.extend(["a", "b", "c"])
    r.append("d")
    inner = Reasons(limit=1)
    inner.extend(["e", "f"])
    r.extend(inner)
    assert r == ["a", "b"] and r.omitted == 4 and r.total == 6
