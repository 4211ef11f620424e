"""Drives raw pyarrow.flight (Arrow's C++ Flight client) against a Fjord node's Flight SQL endpoint.

The Flight SQL commands are encoded by hand (a google.protobuf.Any around the command message), so this
checks the wire contract without a Flight SQL library: a CommandStatementQuery through GetFlightInfo and
DoGet of every endpoint's ticket (and that each stream's schema is the one the FlightInfo announced);
CommandGetTables; a syntax error and a bad bearer token are refused; Basic auth through Handshake answers
with a bearer token that then runs a query.

Inputs: FJORD_FLIGHT (host:port, plaintext gRPC), FJORD_TOKEN, FJORD_WAIT_FOR (optional).
Prints one JSON line: by_type, schema_matches, tables, errors, basic_auth.
"""

import json
import os

import pyarrow as pa
from pyarrow import flight

BY_TYPE = "SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type"
COUNT = "SELECT count(*) AS n FROM events"


def varint(n):
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number, payload):
    """A length-delimited protobuf field (wire type 2): a string, bytes or an embedded message."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def command(name, message=b""):
    """A Flight SQL command: google.protobuf.Any { string type_url = 1; bytes value = 2 }."""
    return field(1, f"type.googleapis.com/arrow.flight.protocol.sql.{name}".encode()) + field(2, message)


def statement_query(sql):
    """CommandStatementQuery { string query = 1; optional bytes transaction_id = 2 } (no transaction)."""
    return command("CommandStatementQuery", field(1, sql.encode()))


def call_options(authorization):
    headers = [(b"authorization", authorization)]
    if wait_for := os.environ.get("FJORD_WAIT_FOR"):
        headers.append((b"x-fjord-wait-for", wait_for.encode()))
    return flight.FlightCallOptions(headers=headers, timeout=30)


def fetch(client, cmd, options):
    """GetFlightInfo of `cmd`, then DoGet of every endpoint: the tables read and the announced schema."""
    info = client.get_flight_info(flight.FlightDescriptor.for_command(cmd), options)
    return [client.do_get(endpoint.ticket, options).read_all() for endpoint in info.endpoints], info.schema


def rows(tables):
    return [list(row.values()) for table in tables for row in table.to_pylist()]


def refusal(client, sql, options):
    """The exception class a query is refused with and its message (None, "" if it runs)."""
    try:
        fetch(client, statement_query(sql), options)
        return None, ""
    except (flight.FlightError, pa.ArrowException) as e:
        return type(e).__name__, str(e)


def main():
    token = os.environ["FJORD_TOKEN"].encode()
    options = call_options(b"Bearer " + token)
    result = {}
    with flight.FlightClient(f"grpc://{os.environ['FJORD_FLIGHT']}") as client:
        tables, schema = fetch(client, statement_query(BY_TYPE), options)
        result["by_type"] = rows(tables)
        result["schema_matches"] = schema is not None and all(t.schema.equals(schema) for t in tables)

        tables, _ = fetch(client, command("CommandGetTables"), options)
        result["tables"] = sorted(name for t in tables for name in t.column("table_name").to_pylist())

        error, message = refusal(client, "SELEC 1", options)
        bad_token_error, _ = refusal(client, COUNT, call_options(b"Bearer nope"))
        result["errors"] = {
            "syntax": {"error": error, "mentions_syntax": "syntax" in message.lower()},
            "bad_token": bad_token_error,
        }

        _, bearer = client.authenticate_basic_token(b"analyst", token, flight.FlightCallOptions(timeout=30))
        answered_bearer = bearer.startswith(b"Bearer ")
        n = None
        if answered_bearer:
            tables, _ = fetch(client, statement_query(COUNT), call_options(bearer))
            n = rows(tables)[0][0]
        result["basic_auth"] = {"bearer": answered_bearer, "n": n}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
