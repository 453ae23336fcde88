"""Hostile writes against a real server: bad names, junk bodies, huge lines, extreme times."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.server import Server, wait_for

GOOD = "cpu,host=a usage=1 1000000000"


def v3(server: Server, db: str, body: str | bytes, **params: Any) -> Any:
    return server.request("POST", "/api/v3/write_lp", {"db": db, **params}, body)


def rows(server: Server, db: str, sql: str) -> list[dict[str, Any]]:
    return list(server.query(db, sql))


# -- item 2: control and invisible characters in names ----------------------------------------------
BAD_NAMES = [
    ("cpu usage\0=2", "field key", "U+0000"),
    ("cpu,ho\0st=a usage=2", "tag key", "U+0000"),
    ("c\x01pu usage=2", "measurement", "U+0001"),
    ("cpu usage\u200b=2", "field key", "U+200B"),
    ("cpu,host\u202e=a usage=2", "tag key", "U+202E"),
    ("\ufeffcpu usage=2", "measurement", "U+FEFF"),
]


@pytest.mark.parametrize(("line", "kind", "code"), BAD_NAMES)
def test_a_name_with_a_control_or_invisible_character_is_refused_and_queries_keep_working(
    server: Server, line: str, kind: str, code: str
) -> None:
    # v3 with accept_partial (the default): the good lines around it are stored.
    r = v3(server, "db", f"{GOOD}\n{line} 2000000000\ncpu,host=b usage=3 3000000000")
    assert r.status == 400, r.body
    (err,) = r.json()["data"]
    assert err["line_number"] == 2 and f"invalid {kind}" in err["error_message"], err
    assert code in err["error_message"]
    got = rows(server, "db", "SELECT host, usage FROM cpu ORDER BY time")
    assert got == [{"host": "a", "usage": 1.0}, {"host": "b", "usage": 3.0}]
    # v2 and v1 are all-or-nothing (as InfluxDB): the whole body is refused, naming the line.
    r = server.request("POST", "/api/v2/write", {"bucket": "db"}, f"{GOOD}\n{line} 4000000000")
    assert r.status == 400 and "line 2" in r.json()["message"] and code in r.json()["message"], r.body
    r = server.request("POST", "/write", {"db": "db"}, f"{GOOD}\n{line} 4000000000")
    assert r.status == 400 and "line 2" in r.json()["error"] and code in r.json()["error"], r.body
    assert len(rows(server, "db", "SELECT * FROM cpu")) == 2
    assert server.query("db", "SHOW TABLES")  # the catalog holds nothing that breaks a query


def test_nul_and_invisible_characters_in_values_are_data_and_survive_persist(server: Server) -> None:
    body = 'tv,t=a\0b\u200b s="x\0y\u202e",v=1 1000000000\ntv,t=plain s="ok",v=2 2000000000'
    assert v3(server, "db", body).status == 204
    assert server.request("POST", "/api/v3/persist").status == 200
    got = rows(server, "db", "SELECT t, s, v FROM tv ORDER BY time")
    assert got == [{"t": "a\0b\u200b", "s": "x\0y\u202e", "v": 1.0}, {"t": "plain", "s": "ok", "v": 2.0}]


def test_joined_persian_and_emoji_names_and_a_leading_byte_order_mark_are_written(server: Server) -> None:
    body = "\ufeffمی\u200cخواهم,flag=🏳️\u200d🌈 v=1 1000000000\nمی\u200cخواهم,flag=x v=2 2000000000"
    assert v3(server, "db", body).status == 204  # the BOM as Notepad and PowerShell's Out-File write it
    got = rows(server, "db", 'SELECT flag, v FROM "می\u200cخواهم" ORDER BY time')
    assert got == [{"flag": "🏳️\u200d🌈", "v": 1.0}, {"flag": "x", "v": 2.0}]
    r = v3(server, "db", "m,\u200dflag=a v=1 1")  # a joiner that joins nothing is still refused
    assert r.status == 400 and "U+200D" in r.text, r.body


def test_the_configure_api_applies_the_same_name_rule(server: Server) -> None:
    for bad in ("usage\0", "usage\u200b"):
        r = server.request(
            "POST",
            "/api/v3/configure/table",
            body=json.dumps(
                {"db": "db", "table": "t", "tags": [], "fields": [{"name": bad, "type": "float64"}]}
            ),
            headers={"Content-Type": "application/json"},
        )
        assert r.status == 400 and "U+" in r.text, r.body


# -- item 5: error reports are bounded ---------------------------------------------------------------
def test_ten_megabytes_of_bad_lines_get_a_small_answer_in_bounded_memory(server: Server) -> None:
    assert v3(server, "db", GOOD).status == 204
    baseline = server.memory_mib()
    body = b"x\n" * 5_000_000  # 10 MB, 5 M bad lines
    r = v3(server, "db", body)
    assert r.status == 400
    assert len(r.body) < 16_000, len(r.body)
    answer = r.json()
    assert len(answer["data"]) == 100 and answer["data"][0]["line_number"] == 1
    assert "5000000 lines were rejected; the first 100 are listed" in answer["error"]
    assert server.memory_mib() < baseline + 250, (baseline, server.memory_mib())  # was +2.9 GB (OOM)
    assert v3(server, "db", "cpu,host=c usage=4 5000000000").status == 204
    r = server.request("POST", "/api/v2/write", {"bucket": "db"}, body)
    assert r.status == 400 and len(r.body) < 1000 and "line 1" in r.json()["message"]
    metrics = server.request("GET", "/metrics").text
    assert 'appliance_lines_rejected_total{protocol="http"} 10000000' in metrics


# -- item 8: a line with very many fields ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fields", "tags"])
def test_a_ten_megabyte_line_of_a_million_fields_is_refused_quickly_while_others_write(
    server: Server, kind: str
) -> None:
    if kind == "fields":
        huge = ("m " + ",".join(f"f{i}={i}" for i in range(1_000_000)) + " 1").encode()[: 10 << 20]
    else:  # the tags were all read before the limit was checked: 1.5 s per line
        huge = ("m," + ",".join(f"t{i}=a" for i in range(1_000_000)) + " f=1 1").encode()[: 10 << 20]
    huge = huge[: huge.rindex(b",")]
    answers: list[Any] = []

    def attack() -> None:
        answers.append(v3(server, "db", huge))

    attackers = [threading.Thread(target=attack) for _ in range(4)]
    for t in attackers:
        t.start()
    for n in range(5):  # small writes and /health keep answering meanwhile
        start = time.monotonic()
        assert v3(server, "db", f"ok v={n} {n + 1}000000000").status == 204
        assert server.request("GET", "/health").status == 200
        assert time.monotonic() - start < 5
    for t in attackers:
        t.join(60)
    assert [a.status for a in answers] == [400] * 4
    (err,) = answers[0].json()["data"]
    want = "more than 500 tags and fields" if kind == "fields" else "more than 500 tags;"
    assert err["line_number"] == 1 and want in err["error_message"]
    assert "catalog.max_columns" in err["error_message"]


def test_lines_that_name_more_columns_than_a_table_holds_are_refused_without_work_per_column(
    server: Server,
) -> None:
    body = "\n".join(f"sparse f{i}_a=1,f{i}_b=2 {i + 1}" for i in range(20_000))  # 40,000 columns
    start = time.monotonic()
    r = v3(server, "db", body + "\nother v=1 1")
    assert r.status == 422 and time.monotonic() - start < 20
    assert "limit of 500 columns" in r.json()["data"][0]["error_message"]
    assert rows(server, "db", "SELECT v FROM other") == [{"v": 1.0}]


def test_a_body_naming_half_a_million_tables_is_refused_quickly_while_others_write(server: Server) -> None:
    flood = "\n".join(f"m{i} v=1 1" for i in range(600_000)).encode()  # 11 MB, 600,000 tables
    answers: list[Any] = []
    attacker = threading.Thread(target=lambda: answers.append(v3(server, "flood", flood)))
    attacker.start()
    for n in range(5):
        start = time.monotonic()
        assert v3(server, "db", f"ok v={n} {n + 1}000000000").status == 204
        assert server.request("GET", "/health").status == 200
        assert time.monotonic() - start < 5
    attacker.join(60)
    (r,) = answers
    assert r.status == 422 and len(r.body) < 20_000
    assert "599000 lines were rejected" in r.json()["error"]
    assert "limit of 1000 tables in database 'flood'" in r.json()["data"][0]["error_message"]


# -- item 14: tables per database --------------------------------------------------------------------
def test_one_database_cannot_take_every_table(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[catalog]\nmax_tables = 6\nmax_tables_per_database = 4\n")
    server = Server(tmp_path / "data", args=["--config", str(config)]).start()
    r = v3(server, "flood", "\n".join(f"t{i} v=1 1" for i in range(10)))
    assert r.status == 422
    errors = r.json()["data"]
    assert [e["line_number"] for e in errors] == list(range(5, 11))
    assert (
        "limit of 4 tables in database 'flood' (catalog.max_tables_per_database)"
        in errors[0]["error_message"]
    )
    assert v3(server, "other", "a v=1 1\nb v=1 1").status == 204  # room is left for other databases
    server.stop()


# -- item 15: times outside what partitions can name -------------------------------------------------
def test_a_time_outside_whole_int64_days_gets_a_line_error_naming_it(server: Server) -> None:
    for ts, precision in [
        (-(2**63), "ns"),
        (2**63 - 1, "ns"),
        (9_223_372_037, "s"),  # overflows int64 once scaled to ns
        (9_223_286_400, "s"),  # 2262-04-11T00:00:00Z: in int64, past the last whole day
        (-9_223_286_400_001, "ms"),  # just before 1677-09-22T00:00:00Z
        (-(2**63), "auto"),
    ]:
        r = v3(server, "db", f"{GOOD}\nt v=1 {ts}", precision=precision)
        assert r.status == 400, r.body
        (err,) = r.json()["data"]
        assert err["line_number"] == 2 and f"timestamp, {ts}," in err["error_message"], err
        r = server.request("POST", "/api/v2/write", {"bucket": "db", "precision": precision}, f"t v=1 {ts}")
        assert r.status == 400 and str(ts) in r.json()["message"]
    # the good line was stored each time (1e9 read as ns, s and ms: three points)
    assert server.query("db", "SELECT count(*) AS n FROM cpu") == [{"n": 3}]
    assert server.request("GET", "/api/v3/query_sql", {"db": "db", "q": "SELECT * FROM t"}).status != 200


def test_the_edge_times_land_in_their_own_date_folders(server: Server) -> None:
    body = (
        "t v=1 -9223286400000000000\nt v=2 9223286399999999999"  # 1677-09-22T00:00Z, 2262-04-10T23:59:59.9..Z
    )
    assert v3(server, "db", body, precision="ns").status == 204
    assert v3(server, "db", "t v=3 9223286399", precision="s").status == 204
    assert server.request("POST", "/api/v3/persist").status == 200
    folders = sorted(p.parent.parent.name for p in (server.data_dir / "parquet").rglob("*.parquet"))
    assert folders == ["date=1677-09-22", "date=2262-04-10"]
    got = rows(server, "db", "SELECT v, CAST(time AS BIGINT) AS ns FROM t ORDER BY time")
    assert got == [
        {"v": 1.0, "ns": -9223286400000000000},
        {"v": 3.0, "ns": 9223286399000000000},
        {"v": 2.0, "ns": 9223286399999999999},
    ]


# -- fuzz, black-box: only 204/400/422, and the server stays up ---------------------------------------
def test_random_and_mutated_bodies_get_only_clean_answers(server: Server) -> None:
    rnd = random.Random(10)
    seeds = [
        GOOD,
        'm,t=a\\ b f="x\\"y",g=1i,h=2u,b=t 1',
        "m f=1e400,g=99999999999999999999i 9223372036854775807",
        "m\0,t\0=\0 f\0=1",
        "m f=1 -9223372036854775809",
    ]
    alphabet = [c.encode() for c in ' ,="\\\n\r\t#0123456789iuetf.-\0\u200bxyz'] + [b"\xff", b"\xc3"]
    for _ in range(300):
        line = bytearray(rnd.choice(seeds).encode())
        for _ in range(rnd.randint(1, 6)):
            pos = rnd.randint(0, len(line))
            if rnd.random() < 0.3 and line:
                del line[min(pos, len(line) - 1)]
            else:
                line[pos:pos] = rnd.choice(alphabet)
        if rnd.random() < 0.1:
            line = bytearray(rnd.randbytes(rnd.randint(1, 64)))
        r = v3(server, "fuzz", bytes(line), precision=rnd.choice(["auto", "s", "ms", "us", "ns"]))
        assert r.status in (204, 400, 422), (bytes(line), r.status, r.body)
    assert server.request("GET", "/health").status == 200
    for table in server.query("fuzz", "SHOW TABLES"):
        if table["table_schema"] not in ("system", "information_schema"):
            name = table["table_name"].replace('"', '""')
            server.query("fuzz", f'SELECT * FROM "{name}" LIMIT 1')
    wait_for(lambda: server.request("GET", "/health").status == 200, 5)
