"""The fold bench's peer, run by `fjord-bench fold` against a Fjord node holding the auction log and its views.

Exports the raw events (type and data) through Flight SQL (ADBC) to Parquet, then times DuckDB computing,
from those raw events, the answer Fjord gives from the view of bids per auction: the auctions, their bids
and the top price. Checks that the two answers are the same.

Inputs (environment): FJORD_FLIGHT (host:port), FJORD_TOKEN, FJORD_PARQUET (the file to write), FJORD_RUNS,
FJORD_ANSWER (Fjord's answer: JSON rows of text). Progress goes to stderr; one line of JSON to stdout.
"""

import json
import os
import sys

import adbc_driver_flightsql.dbapi as flightsql
import duckdb
from adbc_driver_flightsql import DatabaseOptions

from query_peer import export, timed

EXPORT = "SELECT type, data FROM events"
FROM_RAW_EVENTS = (
    "SELECT count(*) AS auctions, sum(bids) AS bids, max(top) AS top FROM ("
    " SELECT CAST(data->>'auction' AS BIGINT) AS auction, count(*) AS bids,"
    " max(CAST(data->>'price' AS BIGINT)) AS top FROM events WHERE type = 'Bid' GROUP BY 1)"
)


def say(message):
    print(f"fold bench: {message}", file=sys.stderr, flush=True)


def main():
    env = os.environ
    options = {
        DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {env['FJORD_TOKEN']}",
        DatabaseOptions.TIMEOUT_QUERY.value: "600",
        DatabaseOptions.TIMEOUT_FETCH.value: "600",
    }
    fjord = flightsql.connect(f"grpc://{env['FJORD_FLIGHT']}", db_kwargs=options, autocommit=True)
    say("exporting the raw events to Parquet through Flight SQL")
    exported, seconds = export(fjord.cursor(), EXPORT, env["FJORD_PARQUET"])
    say(f"exported {exported} events in {seconds:.1f} s")
    duck = duckdb.connect()
    duck.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{env['FJORD_PARQUET']}')")
    runs = int(env["FJORD_RUNS"])
    say(f"DuckDB: {runs} runs of the answer from the raw events")
    answer, times = timed(lambda _: [[str(v) for v in row] for row in duck.sql(FROM_RAW_EVENTS).fetchall()], runs)
    fjord_answer = json.loads(env["FJORD_ANSWER"])
    if answer != fjord_answer:
        say(f"answers differ: fjord {fjord_answer}, duckdb {answer}")
    print(json.dumps({"export": {"events": exported, "seconds": seconds}, "duckdb": times,
                      "identical": answer == fjord_answer, "answer": answer}))


if __name__ == "__main__":
    main()
