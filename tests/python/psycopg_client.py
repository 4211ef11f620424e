"""Drives psycopg 3 (libpq) against a Fjord node's Postgres endpoint.

Checks: a login with the token as the password; psycopg's implicit BEGIN (autocommit off) and COMMIT;
`SET fjord.wait_for` (read your writes); the simple query protocol (a GROUP BY); the extended protocol
with bound parameters (psycopg sends a str as text of unknown type and a small int as binary int2); named
prepared statements (prepare=True); results in binary format; the SQLSTATEs of refused statements, and
that the session stays usable after rolling each back; a login with a bad token is refused.

Inputs: FJORD_PG_HOST, FJORD_PG_PORT, FJORD_TOKEN, FJORD_STREAM, FJORD_WAIT_FOR (optional).
Prints one JSON line: by_type, stream_rows, prepared_counts, binary_rows, errors, usable_after_errors,
bad_token.
"""

import json
import os

import psycopg

BY_TYPE = "SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type"
STREAM_ROWS = (
    "SELECT stream, revision, data->>'amount' AS amount FROM events "
    "WHERE stream = %s AND revision >= %s ORDER BY revision"
)
REFUSED = {
    "syntax": "SELEC 1",
    "unknown_table": "SELECT * FROM nope",
    "unknown_column": "SELECT nope FROM events",
    "write": "INSERT INTO events (stream) VALUES ('x')",
}


def connect(password):
    return psycopg.connect(
        host=os.environ["FJORD_PG_HOST"],
        port=os.environ["FJORD_PG_PORT"],
        user="analyst",
        password=password,
        dbname="fjord",
        autocommit=False,
        connect_timeout=10,
    )


def rows(cursor):
    return [list(row) for row in cursor.fetchall()]


def sqlstate_of(conn, statement):
    """The SQLSTATE `statement` is refused with (None if it runs), leaving the session idle again."""
    try:
        conn.execute(statement)
        return None
    except psycopg.Error as e:
        return e.sqlstate
    finally:
        conn.rollback()


def bad_login():
    try:
        connect("not-a-token").close()
    except psycopg.Error as e:
        return {"refused": True, "error": type(e).__name__, "mentions_token": "token" in str(e).lower()}
    return {"refused": False, "error": None, "mentions_token": False}


def main():
    stream = os.environ["FJORD_STREAM"]
    wait_for = os.environ.get("FJORD_WAIT_FOR")
    result = {}
    with connect(os.environ["FJORD_TOKEN"]) as conn:
        cur = conn.cursor()
        if wait_for:
            cur.execute(f"SET fjord.wait_for = '{wait_for}'")
        result["by_type"] = rows(cur.execute(BY_TYPE))
        result["stream_rows"] = rows(cur.execute(STREAM_ROWS, (stream, 1)))
        result["prepared_counts"] = [
            len(cur.execute(STREAM_ROWS, (stream, first), prepare=True).fetchall()) for first in (0, 2)
        ]
        result["binary_rows"] = rows(conn.cursor(binary=True).execute(STREAM_ROWS, (stream, 1)))
        result["errors"] = {name: sqlstate_of(conn, statement) for name, statement in REFUSED.items()}
        result["usable_after_errors"] = conn.execute("SELECT 1").fetchone()[0] == 1
    result["bad_token"] = bad_login()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
