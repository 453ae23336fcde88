"""Path constants of the HTTP API (InfluxDB 3 compatible)."""

WRITE_LP = "/api/v3/write_lp"
WRITE_V2 = "/api/v2/write"
WRITE_V1 = "/write"
QUERY_SQL = "/api/v3/query_sql"
QUERY_INFLUXQL = "/api/v3/query_influxql"
QUERY_V1 = "/query"
HEALTH = "/health"
HEALTH_V1 = "/api/v1/health"
PING = "/ping"
CONFIGURE_DATABASE = "/api/v3/configure/database"
CONFIGURE_RETENTION = "/api/v3/configure/database/retention_period"
CONFIGURE_TABLE = "/api/v3/configure/table"
TOKEN_ADMIN = "/api/v3/configure/token/admin"
TOKEN_ADMIN_REGENERATE = "/api/v3/configure/token/admin/regenerate"
PERSIST = "/api/v3/persist"

#: Reachable without a token.
PUBLIC = frozenset({HEALTH, HEALTH_V1, PING})
