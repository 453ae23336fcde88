"""The lazy table schema DataFusion sees: tables resolve on first use and list as BASE TABLE."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as ds
from datafusion import SessionConfig, SessionContext

from appliance.query import lazy_schema


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
