"""The query bench's clients and its peer, run by `fjord-bench query` against a preloaded Fjord node.

1. Exports the node's events through Flight SQL (ADBC) to Parquet, streaming batch by batch: the peer's
   copy of exactly the same events (and a full scan through Flight SQL, timed).
2. Runs the fixed query set on Fjord over Flight SQL (ADBC) and on DuckDB over the Parquet file, and checks
   that every answer is identical.
3. Times each query on both: the scans a few times each, the point lookup (one stream's events, a
   different stream each time, by a bound parameter) many times over Flight SQL and over the Postgres wire
   protocol (psycopg).

Inputs (environment): FJORD_FLIGHT (host:port), FJORD_PG (host:port), FJORD_TOKEN, FJORD_EVENTS (how many
events the node holds), FJORD_STREAMS (how many `order-<n>` streams), FJORD_PARQUET (the file to write),
FJORD_SCAN_RUNS, FJORD_LOOKUP_RUNS. Progress goes to stderr; one line of JSON to stdout.
"""

import json
import os
import random
import sys
import time
from datetime import datetime, timezone

import adbc_driver_flightsql.dbapi as flightsql
import duckdb
import psycopg
import pyarrow.parquet as pq
from adbc_driver_flightsql import DatabaseOptions

EXPORT = 'SELECT partition, "offset", stream, revision, type, timestamp, data FROM events'
COUNT_BY_TYPE = "SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type"
REVENUE_BY_CATEGORY = (
    "SELECT data->>'category' AS category, sum(CAST(data->>'price' AS BIGINT)) AS revenue, count(*) AS items "
    "FROM events WHERE type = 'ItemAdded' GROUP BY 1 ORDER BY 1"
)
TIME_RANGE = (
    "SELECT count(*) AS n, sum(CAST(data->>'price' AS BIGINT)) AS revenue FROM events "
    "WHERE timestamp >= '{start}' AND timestamp < '{end}'"
)
LOOKUP = "SELECT revision, type, data FROM events WHERE stream = {param} ORDER BY revision"


def say(message):
    print(f"query bench: {message}", file=sys.stderr, flush=True)


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed(run, times):
    """Runs `run` `times` times: its last answer and the latencies in ms (p50, p99, each sample)."""
    samples, answer = [], None
    for i in range(times):
        started = time.perf_counter()
        answer = run(i)
        samples.append((time.perf_counter() - started) * 1000)
    return answer, {"p50_ms": percentile(samples, 0.5), "p99_ms": percentile(samples, 0.99), "runs": times}


def export(cursor, sql, parquet):
    """Streams the answer to `sql` (Flight SQL, batch by batch) into the Parquet file `parquet`: rows, seconds."""
    started = time.perf_counter()
    cursor.execute(sql)
    reader = cursor.fetch_record_batch()
    exported = 0
    with pq.ParquetWriter(parquet, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
            exported += batch.num_rows
    return exported, time.perf_counter() - started


def rows(table):
    return [tuple(str(value) for value in row.values()) for row in table.to_pylist()]


def main():
    env = os.environ
    events, streams = int(env["FJORD_EVENTS"]), int(env["FJORD_STREAMS"])
    scan_runs, lookup_runs = int(env["FJORD_SCAN_RUNS"]), int(env["FJORD_LOOKUP_RUNS"])
    parquet = env["FJORD_PARQUET"]
    options = {
        DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {env['FJORD_TOKEN']}",
        DatabaseOptions.TIMEOUT_QUERY.value: "600",
        DatabaseOptions.TIMEOUT_FETCH.value: "600",
    }
    fjord = flightsql.connect(f"grpc://{env['FJORD_FLIGHT']}", db_kwargs=options, autocommit=True)
    cursor = fjord.cursor()
    result = {"events": events}

    say(f"exporting {events} events to Parquet through Flight SQL")
    exported, seconds = export(cursor, EXPORT, parquet)
    assert exported == events, f"exported {exported} events, expected {events}"
    result["export"] = {"events": exported, "seconds": seconds, "events_per_s": exported / seconds}
    say(f"exported in {seconds:.1f} s ({exported / seconds:,.0f} events/s)")

    duck = duckdb.connect()
    duck.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{parquet}')")
    first, last = duck.execute("SELECT epoch_us(min(timestamp)), epoch_us(max(timestamp)) FROM events").fetchall()[0]
    iso = lambda micros: datetime.fromtimestamp(micros / 1e6, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    span = last - first
    time_range = TIME_RANGE.format(start=iso(first + span * 0.4), end=iso(first + span * 0.6))

    def fjord_query(sql):
        return lambda _: rows(cursor.execute(sql).fetch_arrow_table())

    def duck_query(sql):
        return lambda _: rows(duck.sql(sql).to_arrow_table())

    queries = {}
    for name, sql in [("count_by_type", COUNT_BY_TYPE), ("revenue_by_category", REVENUE_BY_CATEGORY),
                      ("time_range", time_range)]:
        say(f"{name}: {scan_runs} runs on each")
        fjord_answer, fjord_times = timed(fjord_query(sql), scan_runs)
        duck_answer, duck_times = timed(duck_query(sql), scan_runs)
        queries[name] = {"fjord": fjord_times, "duckdb": duck_times, "identical": fjord_answer == duck_answer,
                         "rows": len(fjord_answer)}
        if fjord_answer != duck_answer:
            say(f"{name}: answers differ:\n  fjord  {fjord_answer[:5]}\n  duckdb {duck_answer[:5]}")

    picks = random.Random(7).sample(range(streams), min(lookup_runs, streams))
    stream = lambda i: f"order-{picks[i % len(picks)]}"
    say(f"point lookup: {lookup_runs} streams over Flight SQL, Postgres and DuckDB")
    prepared = fjord.cursor()
    flight_answer, flight_times = timed(
        lambda i: rows(prepared.execute(LOOKUP.format(param="$1"), (stream(i),)).fetch_arrow_table()), lookup_runs)
    host, port = env["FJORD_PG"].split(":")
    with psycopg.connect(host=host, port=port, user="bench", password=env["FJORD_TOKEN"], dbname="fjord",
                         autocommit=True) as pg:
        pg_cursor = pg.cursor()
        pg_answer, pg_times = timed(
            lambda i: [tuple(str(v) for v in row) for row in
                       pg_cursor.execute(LOOKUP.format(param="%s"), (stream(i),), prepare=True).fetchall()],
            lookup_runs)
    duck_answer, duck_times = timed(
        lambda i: rows(duck.execute(LOOKUP.format(param="$1"), [stream(i)]).to_arrow_table()), lookup_runs)
    queries["point_lookup"] = {
        "fjord": flight_times, "fjord_postgres": pg_times, "duckdb": duck_times,
        "identical": flight_answer == duck_answer and pg_answer == duck_answer, "rows": len(flight_answer),
    }
    result["queries"] = queries
    print(json.dumps(result))


if __name__ == "__main__":
    main()
