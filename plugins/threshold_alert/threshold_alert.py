"""Threshold alert: a WAL plugin that writes an alert row when a field crosses a threshold.

Trigger: `table:NAME` (or `all_tables`), e.g.
    appliance create trigger hot -d iot --path threshold_alert/threshold_alert.py \
        --trigger-spec table:weather --trigger-arguments field=temp,above=30,webhook=http://127.0.0.1:9000/hook

Arguments:
    field     the field to watch (required)
    above     alert when the value is greater than this
    below     alert when the value is less than this
    target    table for alert rows (default: alerts)
    webhook   optional URL: each alert is also POSTed there as JSON (failures are logged, not raised)

Each alert row carries the source table and every tag of the row as tags, and `value`,
`threshold` and `message` fields, at the row's own timestamp.
"""

import json
import urllib.request


def _post(url, payload):
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


def process_writes(influxdb3_local, table_batches, args=None):
    args = args or {}
    field = args.get("field")
    if not field:
        influxdb3_local.error("threshold_alert needs a 'field' argument")
        return
    above = float(args["above"]) if "above" in args else None
    below = float(args["below"]) if "below" in args else None
    target = args.get("target", "alerts")
    alerts = []
    for batch in table_batches:
        if batch["table_name"] == target:
            continue  # never alert on our own alert rows
        for row in batch["rows"]:
            value = row.get(field)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if above is not None and value > above:
                alerts.append((batch["table_name"], row, value, above, f"{field} {value} above {above}"))
            elif below is not None and value < below:
                alerts.append((batch["table_name"], row, value, below, f"{field} {value} below {below}"))
    for table, row, value, threshold, message in alerts:
        line = LineBuilder(target).tag("source", table)  # noqa: F821 - provided by the engine
        for key, tag_value in row.items():
            if isinstance(tag_value, str) and key not in ("source", "message"):
                line.tag(key, tag_value)
        line.float64_field("value", float(value)).float64_field("threshold", threshold)
        line.string_field("message", message).time_ns(row["time"])
        influxdb3_local.write(line)
        if args.get("webhook"):
            alert = {"table": table, "message": message, "value": value, "time": row["time"]}
            try:
                _post(args["webhook"], alert)
            except Exception as e:  # an unreachable webhook must not lose the alert row
                influxdb3_local.warn(f"webhook {args['webhook']} failed: {e}")
    if alerts:
        influxdb3_local.info(f"{len(alerts)} alert(s) written to {target}")
