"""What `/api/v3/engine/<path>` answers: a request trigger's result as status, headers and body.

The engine says what happened (`RequestResult`); the HTTP side decides how that reads on the
wire: the plugin's own reply when it answered, else a JSON error with the status InfluxDB 3
gives (404 no trigger, 500 database gone or plugin failed, 504 past engine.call_timeout).
"""

from __future__ import annotations

import json

from ..engine.responses import RequestResult

_JSON = {"Content-Type": "application/json"}
_STATUS = {"no_trigger": 404, "no_database": 500, "timeout": 504, "failed": 500}
# Fixed bodies, byte for byte as before: clients may match on them.
_FIXED = {"no_trigger": b'{"error":"not found"}', "no_database": b'{"error":"database not found"}'}


def engine_reply(result: RequestResult) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for a request trigger's result."""
    if result.reply is not None:
        return result.reply
    body = _FIXED.get(result.outcome) or json.dumps({"error": result.error}).encode()
    return _STATUS[result.outcome], dict(_JSON), body
