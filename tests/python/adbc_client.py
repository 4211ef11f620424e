"""Drives the ADBC Flight SQL driver (Go, through adbc_driver_flightsql.dbapi) against a Fjord node.

The DB-API cursor prepares every statement (ActionCreatePreparedStatementRequest), binds parameters with
DoPut, then runs GetFlightInfo of CommandPreparedStatementQuery and DoGet, and closes the statement when
the cursor changes query or closes. Checks: a query, a query with $1/$2 parameters, one prepared statement
executed twice with different parameters, GetObjects down to tables (GetCatalogs, GetDbSchemas,
GetTables), a table's schema (GetTables with include_schema), a syntax error and a bad bearer token are
refused, and Basic auth (username and password: the driver logs in through Handshake).

Inputs: FJORD_FLIGHT (host:port, plaintext gRPC), FJORD_TOKEN, FJORD_STREAM, FJORD_WAIT_FOR (optional).
Prints one JSON line: by_type, prepared, prepared_counts, tables, events_schema, errors, basic_auth.
"""

import json
import os

import adbc_driver_flightsql.dbapi as flightsql
from adbc_driver_flightsql import DatabaseOptions
from adbc_driver_manager import DatabaseOptions as CommonOptions

BY_TYPE = "SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type"
COUNT = "SELECT count(*) AS n FROM events"
STREAM_ROWS = "SELECT stream, revision FROM events WHERE stream = $1 AND revision >= $2 ORDER BY revision"


def connect(credentials):
    """A connection with `credentials` (database options) and the read-your-writes header if given."""
    db_kwargs = {
        **credentials,
        DatabaseOptions.TIMEOUT_QUERY.value: "30",
        DatabaseOptions.TIMEOUT_FETCH.value: "30",
    }
    if wait_for := os.environ.get("FJORD_WAIT_FOR"):
        db_kwargs[DatabaseOptions.RPC_CALL_HEADER_PREFIX.value + "x-fjord-wait-for"] = wait_for
    return flightsql.connect(f"grpc://{os.environ['FJORD_FLIGHT']}", db_kwargs=db_kwargs, autocommit=True)


def bearer(token):
    return {DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"}


def table_names(objects):
    """Every table name in GetObjects' nested catalogs -> db schemas -> tables."""
    return sorted(
        table["table_name"]
        for catalog in objects.to_pylist()
        for schema in catalog["catalog_db_schemas"] or []
        for table in schema["db_schema_tables"] or []
    )


def refusal(conn, sql):
    """The exception class and ADBC status a query is refused with, and its message (None if it runs)."""
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            cur.fetchall()
        return {"error": None, "status": None}, ""
    except flightsql.Error as e:
        return {"error": type(e).__name__, "status": e.status_code.name}, str(e)


def main():
    token = os.environ["FJORD_TOKEN"]
    stream = os.environ["FJORD_STREAM"]
    result = {}
    with connect(bearer(token)) as conn:
        with conn.cursor() as cur:
            result["by_type"] = [list(row.values()) for row in cur.execute(BY_TYPE).fetch_arrow_table().to_pylist()]
            result["prepared"] = [list(row) for row in cur.execute(STREAM_ROWS, (stream, 1)).fetchall()]
        with conn.cursor() as cur:
            cur.adbc_prepare(STREAM_ROWS)
            result["prepared_counts"] = [len(cur.execute(STREAM_ROWS, (stream, first)).fetchall()) for first in (0, 2)]
        result["tables"] = table_names(conn.adbc_get_objects(depth="tables").read_all())
        result["events_schema"] = conn.adbc_get_table_schema("events").names
        syntax, message = refusal(conn, "SELEC 1")
    with connect(bearer("nope")) as conn:
        bad_token, _ = refusal(conn, COUNT)
    result["errors"] = {"syntax": {**syntax, "mentions_syntax": "syntax" in message.lower()}, "bad_token": bad_token}
    basic = {CommonOptions.USERNAME.value: "analyst", CommonOptions.PASSWORD.value: token}
    with connect(basic) as conn, conn.cursor() as cur:
        result["basic_auth"] = {"n": cur.execute(COUNT).fetchone()[0]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
