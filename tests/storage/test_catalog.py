"""The catalog on a real Store: durable schema, limits, InfluxDB's name rules."""

from __future__ import annotations

import pyarrow as pa
import pytest

from appliance.errors import CatalogError, Conflict, LimitExceeded
from appliance.model import ColumnType
from appliance.storage.catalog import Catalog, CatalogLimits
from appliance.storage.store import Store


def test_catalog_persists_and_enforces_limits(store: Store) -> None:
    cat = Catalog(store, CatalogLimits(max_databases=2, max_tables=3, max_columns=2))
    cat.create_database("one", 86_400 * 10**9)
    cat.create_table("one", "cpu", ["host"], {"usage": ColumnType.FLOAT})
    with pytest.raises(Conflict):
        cat.create_database("one", None)
    with pytest.raises(CatalogError):
        cat.create_database("bad name!", None)
    cat.create_database("two", None)
    with pytest.raises(LimitExceeded, match="limit of 2 databases"):
        cat.create_database("three", None)
    with pytest.raises(LimitExceeded, match="columns per table limit of 2"):
        cat.create_table("one", "mem", ["a", "b"], {"c": ColumnType.INTEGER})
    reopened = Catalog(store, CatalogLimits())
    one = reopened.require("one")
    assert one.retention_ns == 86_400 * 10**9
    assert one.tables["cpu"].columns == {
        "time": ColumnType.TIME,
        "host": ColumnType.TAG,
        "usage": ColumnType.FLOAT,
    }
    assert one.tables["cpu"].schema().field("host").type == pa.dictionary(pa.int32(), pa.string())


def test_database_names_follow_influxdb_rules(store: Store) -> None:
    cat = Catalog(store, CatalogLimits())
    for ok in ("a", "db_1-x", "db/rp", "9lives"):
        cat.create_database(ok, None)
    for bad in ("_x", "-x", "a/b/c", "a/", "with space", "x" * 512, ""):
        with pytest.raises(CatalogError):
            cat.create_database(bad, None)
