"""Writes bench/RESULTS.md with its "SQL over the log" part made from a `bench/run-query` run.

Usage: query_report.py RESULTS_JSONL MACHINE RESULTS_MD   (prints the whole new RESULTS.md: the old one
with that part replaced, or added at the end)
"""

import json
import sys

HEADING = "# SQL over the log"
TARGETS = {
    "scan": 2_000_000,  # events/s, aggregate full scan over 10M events on one node
    "lookup_ms": 2.0,  # p50 of one stream's 100 events, over psql and Flight SQL
    "append_p99_ratio": 2.0,  # appends' p99 beside 16 heavy queries / alone
}
QUERIES = [
    ("count_by_type", "count by type (full scan, aggregate)"),
    ("revenue_by_category", "revenue by category (full scan, JSON fields)"),
    ("time_range", "time-range scan (the middle 20 % of commit times)"),
    ("point_lookup", "one stream's 100 events (point lookup, a bound parameter)"),
]


def section(runs, machine):
    lines = [
        HEADING,
        "",
        f"`bench/run-query` on {machine}. One Fjord node (release build, 4 partitions) preloaded with order "
        "streams of 100 events (JSON data: categories and prices); DuckDB (Python `duckdb`) answers the same "
        "queries over the same events, exported from Fjord through Flight SQL to one Parquet file, in the same "
        "run. Every answer was compared: \"identical\" means Fjord's and DuckDB's rows matched exactly.",
        "",
    ]
    for run in runs:
        events, clients = run["events"], run["clients"]
        queries = clients["queries"]
        lines += [
            f"## {events:,} events",
            "",
            f"Preloaded in {run['preload_secs']:.0f} s; exported through Flight SQL (ADBC) in "
            f"{clients['export']['seconds']:.1f} s ({clients['export']['events_per_s']:,.0f} events/s).",
            "",
            "| query | Fjord p50 | Fjord p99 | DuckDB p50 | DuckDB p99 | Fjord/DuckDB (p50) | Fjord scan rate | identical |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, label in QUERIES:
            q = queries[name]
            fjord, duck = q["fjord"], q["duckdb"]
            scan = f"{events / (fjord['p50_ms'] / 1000):,.0f} events/s" if name != "point_lookup" else "—"
            lines.append(
                f"| {label} | {fjord['p50_ms']:.1f} ms | {fjord['p99_ms']:.1f} ms | {duck['p50_ms']:.1f} ms | "
                f"{duck['p99_ms']:.1f} ms | {fjord['p50_ms'] / duck['p50_ms']:.1f}x | {scan} | "
                f"{'yes' if q['identical'] else '**no**'} |"
            )
        pg = queries["point_lookup"]["fjord_postgres"]
        lines += [
            "",
            f"Point lookup over the Postgres wire protocol (psycopg, a prepared statement): p50 {pg['p50_ms']:.2f} ms, "
            f"p99 {pg['p99_ms']:.2f} ms; over Flight SQL (ADBC, prepared, bound): p50 "
            f"{queries['point_lookup']['fjord']['p50_ms']:.2f} ms.",
            "",
            f"Appends (8 writers, closed loop, single events) alone: p99 {run['appends_alone']['p99_us'] / 1000:.2f} ms; "
            f"beside {run['heavy_queries']} heavy queries (revenue by category, over and over; "
            f"{run['heavy_queries_completed']} completed, {run['heavy_queries_failed']} failed): p99 "
            f"{run['appends_beside_heavy_queries']['p99_us'] / 1000:.2f} ms "
            f"({run['appends_beside_heavy_queries']['p99_us'] / max(run['appends_alone']['p99_us'], 1):.2f}x).",
            "",
        ]
    largest = max(runs, key=lambda run: run["events"])
    queries = largest["clients"]["queries"]
    scan = largest["events"] / (queries["count_by_type"]["fjord"]["p50_ms"] / 1000)
    ratio = largest["appends_beside_heavy_queries"]["p99_us"] / max(largest["appends_alone"]["p99_us"], 1)
    lookup = max(queries["point_lookup"]["fjord"]["p50_ms"], queries["point_lookup"]["fjord_postgres"]["p50_ms"])
    met = lambda ok: "met" if ok else "**missed**"
    lines += [
        f"## Against the targets ({largest['events']:,} events)",
        "",
        "| target | figure | where it stands |",
        "|---|---|---|",
        f"| aggregate full scan ≥ 2M events/s | {scan:,.0f} events/s | {met(scan >= TARGETS['scan'])} |",
        f"| point lookup p50 ≤ 2 ms over psql and Flight SQL | {lookup:.2f} ms (the slower of the two) | "
        f"{met(lookup <= TARGETS['lookup_ms'])} |",
        f"| appends' p99 beside 16 heavy queries ≤ 2x alone | {ratio:.2f}x | {met(ratio <= TARGETS['append_p99_ratio'])} |",
        "",
    ]
    return "\n".join(lines)


def replace_part(path, heading, part):
    """The text of the Markdown file at `path` with its part under the top-level `heading` replaced by `part`
    (or `part` added at the end)."""
    try:
        text = open(path).read()
    except FileNotFoundError:
        text = ""
    before, found, after = text.partition(heading + "\n")
    rest = ""
    if found:
        # The part ends at the next top-level heading.
        tail = after.split("\n# ", 1)
        rest = "\n# " + tail[1] if len(tail) == 2 else ""
    return (before.rstrip() + "\n\n" if before.strip() else "") + part + rest.rstrip() + "\n"


def write_part(heading, section_of):
    """The scripts' command line: RESULTS_JSONL MACHINE RESULTS_MD; prints RESULTS_MD with its part under
    `heading` made by `section_of(runs, machine)`."""
    results, machine, old = sys.argv[1:4]
    runs = [json.loads(line) for line in open(results) if line.strip()]
    print(replace_part(old, heading, section_of(runs, machine)), end="")


def main():
    write_part(HEADING, section)


if __name__ == "__main__":
    main()
