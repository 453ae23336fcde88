"""The lazy table schema DataFusion sees, and the checks a query passes before planning."""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from datafusion import SessionConfig, SessionContext

from appliance.errors import QueryError
from appliance.query.service import QueryLimits, _query_error, lazy_schema
from appliance.query.sqlcheck import (
    MAX_EXPRESSION_DEPTH,
    check_sizes,
    check_sql,
    expression_depth,
    value_budget,
)


def test_tables_resolve_only_when_named_and_list_as_base_tables() -> None:
    resolved: list[str] = []

    def resolve(name: str) -> ds.Dataset | None:
        resolved.append(name)
        return ds.dataset(pa.table({"host": pa.array(["a"]).dictionary_encode(), "v": [float(len(name))]}))

    ctx = SessionContext(SessionConfig().with_information_schema(True))
    ctx.catalog().register_schema("public", lazy_schema(["cpu", "memory"], resolve))
    assert ctx.sql("SELECT v FROM 'cpu'").to_arrow_table().column("v").to_pylist() == [3.0]
    assert resolved == ["cpu"]
    tables = ctx.sql("SHOW TABLES").to_arrow_table().to_pylist()
    public = {t["table_name"]: t["table_type"] for t in tables if t["table_schema"] == "public"}
    assert public == {"cpu": "BASE TABLE", "memory": "BASE TABLE"}
    cols = ctx.sql(
        "SELECT data_type FROM information_schema.columns WHERE table_name = 'memory' AND column_name = 'host'"
    )
    assert cols.to_arrow_table().to_pylist() == [{"data_type": "Dictionary(Int32, Utf8)"}]


# -- checks before planning --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sql", "depth"),
    [
        ("SELECT 1", 0),
        ("SELECT " + "+".join(["1"] * 10), 9),
        ("SELECT f(1+1+1, 2+2), (1+1)+(1+1)", 2),
        ("SELECT '+++' || \"a+b\" -- +++\n", 1),
        ("SELECT 1 /* /* + */ + */ + 1", 1),
        ("SELECT e'\\'+++' + 1", 1),
        ("SELECT x FROM t WHERE a = 1 AND b = 2", 1),
        ("SELECT x FROM t WHERE a + 1 = 1 AND b = 2 - 1 - 1", 3),
        ("SELECT CASE WHEN a = 1 THEN 1 + 1 WHEN a = 2 THEN 2 ELSE 3 END + 1 + 1", 2),
        ("SELECT x IN (" + ",".join(map(str, range(500))) + ")", 1),
        ("SELECT 1::int::bigint", 2),
        ("SELECT a[1][1][1]", 3),
    ],
)
def test_expression_depth_counts_operators_outside_literals_and_comments(sql: str, depth: int) -> None:
    assert expression_depth(sql)[0] == depth


def test_check_sql_refuses_long_text_and_deep_or_costly_expressions() -> None:
    check_sql("SELECT " + "+".join(["1"] * 500), 1 << 20)
    with pytest.raises(QueryError, match="too complex"):
        check_sql("SELECT " + "+".join(["1"] * (MAX_EXPRESSION_DEPTH + 2)), 1 << 20)
    many = ", ".join("+".join(["1"] * 1500) for _ in range(5))  # each chain fine, together minutes
    with pytest.raises(QueryError, match="too complex"):
        check_sql("SELECT " + many, 1 << 20)
    with pytest.raises(QueryError, match="query.max_sql_bytes"):
        check_sql("SELECT 1 -- " + "é" * 600, 1000)
    with pytest.raises(QueryError, match="too complex"):
        check_sql("SELECT " + "(" * 200 + "1" + ")" * 200, 1 << 20)


_CHAIN = "+".join(["1"] * 12_000)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT CASE "
        + " ".join(f"WHEN hum = {i} THEN 'v{i}'" for i in range(2000))
        + " ELSE 'x' END FROM h",
        "SELECT count(*) FROM h WHERE " + " OR ".join(f"room = 'r{i}'" for i in range(600)),
        "SELECT count(*) FROM h WHERE "
        + " OR ".join(f"(room = 'r{i % 3}' AND hum > {i})" for i in range(300)),
        "SELECT count(*) FROM h WHERE time > now() AND " + " AND ".join(f"hum <> {i}" for i in range(700)),
        "SELECT " + "+".join(["1"] * 1900),
    ],
)
def test_long_but_safe_expressions_pass(sql: str) -> None:
    check_sql(sql, 1 << 20)


@pytest.mark.parametrize(
    "sql",
    [
        # a chain continues across a CASE, IS DISTINCT FROM and WITHIN GROUP
        "SELECT " + " + CASE WHEN 1 THEN 1 END + ".join(["+".join(["1"] * 1000)] * 12),
        "SELECT " + " IS NOT DISTINCT FROM ".join(["+".join(["1"] * 1000)] * 12),
        "SELECT "
        + " + percentile_cont(0.5) WITHIN GROUP (ORDER BY v) + ".join(["+".join(["1"] * 1000)] * 12),
        "SELECT count(*) FROM h WHERE " + " AND ".join(f"hum <> {i}" for i in range(3000)),
        "SELECT count(*) FROM h WHERE " + " OR ".join(["(" + "+".join(["1"] * 1500) + ") = 1"] * 5),
    ],
)
def test_chains_across_keywords_and_many_terms_are_refused(sql: str) -> None:
    with pytest.raises(QueryError, match="too complex"):
        check_sql(sql, 1 << 20)


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT $$'$$ AS a, {_CHAIN}",  # a dollar-quoted string holding a quote
        f"SELECT $t$'$t$ AS a, {_CHAIN}",
        f"SELECT 1 +/* ' */ {_CHAIN} -- '",  # a comment opened inside an operator run
        f"SELECT 1 */* ' */ {_CHAIN} -- '",
        f"SELECT 1 +-- '\n{_CHAIN} -- '",
        f"SELECT 1 AS a -- '\n, {_CHAIN} AS b",
        f"SELECT E'a\\'' AS a, {_CHAIN} -- '",  # E'' strings escape with a backslash
        f"SELECT 'a\\' AS a, {_CHAIN} -- '",  # plain strings do not
        f'SELECT 1 AS "a""b", {_CHAIN} -- "',
        f"SELECT 1 AS a /* /* */ ' */, {_CHAIN} -- '",  # block comments nest
        f"SELECT 1 AS @$$a, {_CHAIN} -- $$",  # `$` continues a name
    ],
)
def test_chains_hidden_behind_quotes_or_comments_are_seen(sql: str) -> None:
    with pytest.raises(QueryError, match="too complex"):
        check_sql(sql, 1 << 20)


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT '{_CHAIN}",
        f"SELECT E'\\'{_CHAIN}",
        f'SELECT "{_CHAIN}',
        f"SELECT `{_CHAIN}",
        f"SELECT $$ {_CHAIN}",
        f"SELECT $t$ {_CHAIN} $u$",
        f"SELECT 1 /* /* */ {_CHAIN}",
    ],
)
def test_unclosed_quotes_and_comments_are_refused(sql: str) -> None:
    with pytest.raises(QueryError, match="not closed"):
        check_sql(sql, 1 << 20)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT $$a'b$$ AS a, $t$x$u$y$t$ AS b, $1$ab$1$ AS c",
        "SELECT E'a\\'b' AS x, 'it''s' AS y, 'a\\' AS z",
        'SELECT 1 AS "a""b", 1 AS `c`',
        "SELECT 1 /* a /* b */ c */ AS x, 2 AS y -- end",
        "SELECT 1 AS x, 2 AS a$$b",
    ],
)
def test_scanner_reads_literals_as_datafusion_does(sql: str) -> None:
    check_sql(sql, 1 << 20)
    SessionContext().sql(sql).collect()  # DataFusion reads them too


@pytest.mark.parametrize(
    ("plan", "refused"),
    [
        ('Projection: lpad(Utf8("x"), Int64(1000000000))', True),
        ('Projection: rpad(Utf8("a)b\\""), Int64(10), Utf8("ab"))', False),
        ("Projection: array_repeat(Int64(1), Int64(100000000))", True),
        ("Projection: range(Int64(1), Int64(100000000000))", True),
        ("Projection: range(Int64(1), Int64(1000))", False),
        ("TableScan: generate_series()", False),
        ('Projection: lpad(Utf8("x"), Int64(1000) * Int64(1000000))', True),
        ("Projection: lpad(t.s, t.n)", True),  # a column's values: unchecked, so refused
        ('Projection: lpad(Utf8("x"), c.k)', True),
        ('Projection: lpad(t.s, Int64(10) + Int64(2), Utf8("0"))', False),
        ('Projection: lpad(t.s, CAST(Int64(10) AS Int64), Utf8("0"))', False),
        ("Projection: lpad(t.s, (- Int64(3)) * (Int64(2) + Int64(1)))", False),
        ('Projection: lpad(t.s, TRY_CAST(Utf8("10") AS Int32))', True),
        ("Projection: lpad(CAST(t.value AS Utf8), Int64(10000000))", True),  # 10 MB for each row
        ("Projection: lpad(t.s, Int64(30000))", False),
        ("Projection: lpad(t.s, Int64(40000))", True),  # over 256 MiB / 8192 rows
        ("Projection: range(t.a, t.b)", True),
        ('Projection: Utf8("lpad(x, y * 2)") AS m', False),
        ("Projection: array_repeat(array_repeat(Int64(1), Int64(10000)), Int64(10000))", True),
        (
            'Projection: concat(repeat(Utf8("x"), Int64(100000000)), repeat(Utf8("x"), Int64(200000000)))',
            True,
        ),
        ('Projection: repeat(Utf8("ab"), Int64(1000)), repeat(t.s, t.n)', False),
        ("Projection: range(Int64(5)), range(Int64(1), Int64(10), Int64(2))", False),
    ],
)
def test_check_sizes_reads_literal_sizes_in_the_plan(plan: str, refused: bool) -> None:
    if refused:
        with pytest.raises(QueryError, match=r"query\.memory_limit"):
            check_sizes(plan, value_budget(256 << 20))
    else:
        check_sizes(plan, value_budget(256 << 20))


def test_engine_errors_become_one_clean_line() -> None:
    limits = QueryLimits(256 << 20, 30_000_000_000, 256 << 20)
    err = _query_error(Exception("Error during planning: DDL not supported: CreateExternalTable"), limits)
    assert err.message.startswith("queries are read-only: CreateExternalTable is not allowed")
    pyerr = (
        "DataFusion error: Execution error: PyErr { type: <class 'ValueError'>, value: ValueError('bad"
        ' thing\'), traceback: Some("Traceback (most recent call last):\\n  File \\"/x/site-packages/a.py\\"")}'
    )
    assert _query_error(Exception(pyerr), limits).message == "ValueError: bad thing"
    plain = _query_error(Exception("Schema error: No field named nope.\n\nCandidates: a, b"), limits)
    assert plain.message == "Schema error: No field named nope."
    path = _query_error(
        Exception("External error: /usr/lib/python3/site-packages/pyarrow/x.py failed"), limits
    )
    assert "site-packages" not in path.message


# -- the query slots of the HTTP handler ----------------------------------------------------------
def test_query_slots_are_given_back_on_timeout_and_when_the_pool_refuses() -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from appliance.http.handlers import _run_query

    async def scenario() -> None:
        pool = ThreadPoolExecutor(1)
        limits = QueryLimits(1 << 20, int(0.2e9), 1 << 20)
        app: Any = SimpleNamespace(
            queries=SimpleNamespace(limits=limits),
            query_slots=asyncio.Semaphore(1),
            query_pool=pool,
            config=SimpleNamespace(query=SimpleNamespace(max_concurrent=1)),
        )
        assert await _run_query(app, lambda: [b"ok"]) == [b"ok"]
        await app.query_slots.acquire()  # every slot busy: the next query waits, then answers 503
        with pytest.raises(QueryError) as busy:
            await _run_query(app, lambda: [b"never"])
        assert busy.value.http_status == 503
        app.query_slots.release()
        # many waiters timing out while slots come and go leave the count where it was
        waiters = [
            asyncio.ensure_future(_run_query(app, lambda: time.sleep(0.05) or [b"x"])) for _ in range(20)
        ]
        await asyncio.gather(*waiters, return_exceptions=True)
        await asyncio.sleep(0.1)
        assert app.query_slots._value == 1
        pool.shutdown()
        with pytest.raises(QueryError) as stopping:
            await _run_query(app, lambda: [b"x"])
        assert stopping.value.http_status == 503 and app.query_slots._value == 1

    asyncio.run(scenario())


def test_results_keep_the_batches_schema_when_the_plan_says_nullable() -> None:
    from pathlib import Path

    from appliance.query.service import QueryService

    service = QueryService(None, None, None, Path("."), None, QueryLimits(1 << 20, int(10e9), 1 << 20))  # type: ignore[arg-type]
    ctx = SessionContext()
    for sql, expected in [
        ("SELECT upper('x') AS u", [{"u": "X"}]),
        ("SELECT repeat('-', 3) AS r", [{"r": "---"}]),
        ("SELECT range(1, 3) AS g", [{"g": [1, 2]}]),
        ("SELECT 1 AS n WHERE false", []),
    ]:
        table = service._pull(ctx.sql(sql), time.monotonic() + 10)
        assert table.to_pylist() == expected
    assert (
        service._pull(ctx.sql("SELECT upper('x') AS u"), time.monotonic() + 10).schema.field("u").type
        == pa.string()
    )


@pytest.mark.parametrize(
    ("text", "old", "new"),
    [
        (["abc", "bbb", None, "é-é"], ["b"] * 4, ["yy"] * 4),
        (["abc", "aaa"], [""] * 2, ["x"] * 2),
        (["aaa", "abab"], ["aa", "ab"], ["b", ""]),
        (["abc", "abc"], ["b", None], ["x", "x"]),
        (["abc"], ["b"], [None]),
    ],
)
def test_guarded_replace_answers_as_datafusion_does(text: list[Any], old: list[Any], new: list[Any]) -> None:
    from appliance.query.service import _guarded_replace

    got = _guarded_replace(
        pa.array(text, pa.string()), pa.array(old, pa.string()), pa.array(new, pa.string()), 1 << 20
    )
    ctx = SessionContext()
    ctx.register_record_batches(
        "t",
        [
            [
                pa.record_batch(
                    {"s": text, "o": old, "n": new},
                    schema=pa.schema([("s", pa.string()), ("o", pa.string()), ("n", pa.string())]),
                )
            ]
        ],
    )
    want = ctx.sql("SELECT replace(s, o, n) AS r FROM t").to_arrow_table().column("r").to_pylist()
    assert got.to_pylist() == want


def test_guarded_replace_refuses_before_building() -> None:
    from appliance.query.service import _guarded_replace

    text = pa.array(["x" * 1000] * 10)
    with pytest.raises(ValueError, match=r"replace\(\) would build 10010000 bytes"):
        _guarded_replace(text, pa.array(["x"] * 10), pa.array(["y" * 1001] * 10), 1 << 20)
    with pytest.raises(ValueError, match="replace"):
        _guarded_replace(text, pa.array(["x"] * 9 + ["xx"]), pa.array(["y" * 1001] * 10), 1 << 20)
