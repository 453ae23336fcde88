"""Webhook: a request plugin that accepts JSON and writes it as points.

Trigger: `request:ingest`, served at POST /api/v3/engine/ingest, e.g.
    appliance create trigger hook -d iot --path webhook/webhook.py --trigger-spec request:ingest \
        --trigger-arguments table=events

Body: one JSON object or an array of them. String values become tags, numbers and booleans
become fields; `time` (int nanoseconds) is used when present. The table comes from the
`table` query parameter, else the trigger argument `table`, else "webhook".

Answers `{"written": N}`, or 400 with the reason when the body is not usable JSON.
"""

import json


def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
    table = query_parameters.get("table") or (args or {}).get("table") or "webhook"
    try:
        payload = json.loads(request_body or b"null")
    except ValueError as e:
        return {"error": f"body is not JSON: {e}"}, 400
    items = payload if isinstance(payload, list) else [payload]
    written = 0
    for item in items:
        if not isinstance(item, dict):
            return {"error": "each item must be a JSON object"}, 400
        line = LineBuilder(table)  # noqa: F821 - provided by the engine, as in InfluxDB 3
        fields = 0
        for key, value in item.items():
            if key == "time":
                continue
            if isinstance(value, bool):
                line.bool_field(key, value)
                fields += 1
            elif isinstance(value, int):
                line.int64_field(key, value)
                fields += 1
            elif isinstance(value, float):
                line.float64_field(key, value)
                fields += 1
            elif isinstance(value, str):
                line.tag(key, value)
        if not fields:
            return {"error": "each item needs at least one numeric or boolean value"}, 400
        if isinstance(item.get("time"), int):
            line.time_ns(item["time"])
        influxdb3_local.write_sync(line, no_sync=False)
        written += 1
    return {"written": written}
