"""Downsampler: a scheduled plugin that writes `date_bin` averages of one table into another.

Trigger: `every:1m` (or any schedule), e.g.
    appliance create trigger ds -d iot --path downsampler/downsampler.py --trigger-spec every:1m \
        --trigger-arguments source=weather,target=weather_5m,fields=temp:hum,interval=5 minutes,window=1 hour

Arguments (all optional except `source`):
    source    table to read
    target    table to write (default: <source>_ds)
    fields    numeric fields to average, separated by ':' (default: every float/int field)
    interval  date_bin width (default: "5 minutes")
    window    how far back each run looks (default: "1 hour")
    tags      tags to group by, separated by ':' (default: every tag of the source table)

Every bucket in the window is rewritten on each run; a point is its table, tags and time, so
the rewrite replaces the earlier value instead of adding a row.
"""


def _columns(influxdb3_local, table):
    rows = influxdb3_local.query(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $t",
        {"t": table},
    )
    tags = [r["column_name"] for r in rows if r["data_type"].startswith("Dictionary")]
    numeric = [r["column_name"] for r in rows if r["data_type"] in ("Float64", "Int64", "UInt64")]
    return tags, numeric


def process_scheduled_call(influxdb3_local, call_time, args=None):
    args = args or {}
    source = args.get("source")
    if not source:
        influxdb3_local.error("downsampler needs a 'source' argument (the table to read)")
        return
    target = args.get("target", f"{source}_ds")
    interval = args.get("interval", "5 minutes")
    window = args.get("window", "1 hour")
    all_tags, numeric = _columns(influxdb3_local, source)
    fields = args["fields"].split(":") if args.get("fields") else numeric
    tags = args["tags"].split(":") if args.get("tags") else all_tags
    if not fields:
        influxdb3_local.warn(f"table {source} has no numeric fields to average")
        return
    select = ", ".join([f'avg("{f}") AS "{f}"' for f in fields] + [f'"{t}"' for t in tags])
    group = ", ".join(["bucket"] + [f'"{t}"' for t in tags])
    sql = (
        f"SELECT date_bin(INTERVAL '{interval}', time, '1970-01-01T00:00:00Z') AS bucket, {select} "
        f"FROM \"{source}\" WHERE time > now() - INTERVAL '{window}' GROUP BY {group}"
    )
    written = 0
    for row in influxdb3_local.query(sql):
        line = LineBuilder(target)  # noqa: F821 - provided by the engine, as in InfluxDB 3
        for t in tags:
            if row.get(t) is not None:
                line.tag(t, row[t])
        values = [(f, row.get(f)) for f in fields if row.get(f) is not None]
        if not values:
            continue
        for f, v in values:
            line.float64_field(f, float(v))
        line.time_ns(row["bucket"])
        influxdb3_local.write(line)
        written += 1
    influxdb3_local.info(f"downsampled {source} into {target}: {written} buckets")
