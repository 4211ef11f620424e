"""Defines, reads and drops a materialized view through the ADBC Flight SQL driver (Go, through
adbc_driver_flightsql.dbapi), as an analyst's notebook would.

Checks: CREATE MATERIALIZED VIEW runs as a statement (the driver prepares it and runs it once); the view
reads back, with the read-your-writes header, once it has folded the token's offsets; a second CREATE of
the same name is refused; DROP MATERIALIZED VIEW drops it and a read then fails.

Inputs: FJORD_FLIGHT (host:port, plaintext gRPC), FJORD_TOKEN, FJORD_WAIT_FOR.
Prints one JSON line: rows, duplicate_refused, dropped_then_missing.
"""

import json
import os

import adbc_driver_flightsql.dbapi as flightsql
from adbc_driver_flightsql import DatabaseOptions

VIEW = "adbc_by_type"
DEFINE = f"CREATE MATERIALIZED VIEW {VIEW} AS SELECT type, count(*) AS n FROM events GROUP BY type"


def connect():
    db_kwargs = {
        DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {os.environ['FJORD_TOKEN']}",
        DatabaseOptions.TIMEOUT_QUERY.value: "30",
        DatabaseOptions.TIMEOUT_FETCH.value: "30",
        DatabaseOptions.RPC_CALL_HEADER_PREFIX.value + "x-fjord-wait-for": os.environ["FJORD_WAIT_FOR"],
    }
    return flightsql.connect(f"grpc://{os.environ['FJORD_FLIGHT']}", db_kwargs=db_kwargs, autocommit=True)


def refused(cursor, statement):
    try:
        cursor.execute(statement)
        cursor.fetchall()
    except Exception as error:  # the driver's error classes vary by version
        return str(error)
    return None


with connect() as connection, connection.cursor() as cursor:
    cursor.execute(DEFINE)
    cursor.execute(f"SELECT type, n FROM {VIEW} ORDER BY type")
    rows = [list(row) for row in cursor.fetchall()]
    duplicate = refused(cursor, DEFINE)
    cursor.execute(f"DROP MATERIALIZED VIEW {VIEW}")
    missing = refused(cursor, f"SELECT * FROM {VIEW}")

print(
    json.dumps(
        {
            "rows": rows,
            "duplicate_refused": duplicate is not None and "already exists" in duplicate,
            "dropped_then_missing": missing is not None and VIEW in missing,
        }
    )
)
