"""Writes bench/RESULTS.md with its "Materialized views" part made from a `bench/run-fold` run.

Usage: fold_report.py RESULTS_JSONL MACHINE RESULTS_MD   (prints the whole new RESULTS.md: the old one with
that part replaced, or added at the end)
"""

from query_report import write_part

HEADING = "# Materialized views"
TARGETS = {
    "fold_per_core": 1_000_000,  # events per CPU-second folding a GROUP BY count/sum view from offset 0
    "freshness_p99_ms": 50.0,  # append acknowledged -> visible in the view, at half load
    "groups_query_p50_ms": 10.0,  # a query over a view of 1M groups
    "duckdb_ratio": 20.0,  # DuckDB answering from the raw events / Fjord from the view
}


def section(runs, machine):
    lines = [
        HEADING,
        "",
        f"`bench/run-fold` on {machine}. One Fjord node (release build, 4 partitions) preloaded with a "
        "Nexmark-style auction log (per 100 events: 2 Person, 6 Auction, 92 Bid; JSON), then each view defined "
        "in turn and folded from offset 0. DuckDB (Python `duckdb`) answers the view's question from the raw "
        "events, exported from Fjord through Flight SQL to Parquet, in the same run.",
        "",
    ]
    for run in runs:
        lines += [
            f"## {run['events']:,} events, {run['groups']:,} auctions",
            "",
            "| view | rows | fold time | events/s | events per CPU-second |",
            "|---|---|---|---|---|",
        ]
        for fold in run["folds"]:
            lines.append(
                f"| {fold['view']} | {fold['rows']:,} | {fold['seconds']:.2f} s | {fold['events_per_second']:,.0f} | "
                f"{fold['events_per_cpu_second']:,.0f} |"
            )
        query, duck = run["groups_query"], run["duckdb"]["duckdb"]
        lines += [
            "",
            f"Query over the view of {run['groups']:,} groups (`count(*), sum(bids), max(top)` over bids per "
            f"auction, gRPC `Query.Sql`): p50 {query['p50_us'] / 1000:.2f} ms, p99 {query['p99_us'] / 1000:.2f} ms. "
            f"DuckDB, the same answer from the raw events: p50 {duck['p50_ms']:.1f} ms, p99 {duck['p99_ms']:.1f} ms "
            f"({duck['p50_ms'] / max(query['p50_us'] / 1000, 1e-9):.0f}x Fjord's p50); answers "
            f"{'identical' if run['duckdb']['identical'] else '**different**'}.",
            "",
            f"Freshness: {run['closed_loop_appends_per_second']:,.0f} single-event appends/s closed-loop (16 writers); "
            f"at half that ({run['offered_appends_per_second']:,.0f}/s, open loop), an append acknowledged to a query "
            f"carrying its token answering from revenue per category: p50 {run['freshness']['p50_us'] / 1000:.2f} ms, "
            f"p99 {run['freshness']['p99_us'] / 1000:.2f} ms; the same query without a token: p50 "
            f"{run['query_round_trip']['p50_us'] / 1000:.2f} ms, p99 {run['query_round_trip']['p99_us'] / 1000:.2f} ms.",
            "",
        ]
    largest = max(runs, key=lambda run: run["events"])
    grouped = [fold for fold in largest["folds"] if fold["view"] in ("bids_per_auction", "revenue_per_category")]
    per_core = min(fold["events_per_cpu_second"] for fold in grouped)
    fresh = largest["freshness"]["p99_us"] / 1000
    query = largest["groups_query"]["p50_us"] / 1000
    ratio = largest["duckdb"]["duckdb"]["p50_ms"] / max(query, 1e-9)
    met = lambda ok: "met" if ok else "**missed**"
    lines += [
        f"## Against the targets ({largest['events']:,} events)",
        "",
        "| target | figure | where it stands |",
        "|---|---|---|",
        f"| fold ≥ 1M events/s per core (GROUP BY count/sum) | {per_core:,.0f} events per CPU-second (the slower "
        f"of the two grouped views) | {met(per_core >= TARGETS['fold_per_core'])} |",
        f"| freshness p99 ≤ 50 ms at half load | {fresh:.2f} ms | {met(fresh <= TARGETS['freshness_p99_ms'])} |",
        f"| query over {largest['groups']:,} groups p50 ≤ 10 ms | {query:.2f} ms | "
        f"{met(query <= TARGETS['groups_query_p50_ms'])} |",
        f"| ≥ 20x faster than DuckDB from the raw events | {ratio:.0f}x | {met(ratio >= TARGETS['duckdb_ratio'])} |",
        "",
    ]
    return "\n".join(lines)


def main():
    write_part(HEADING, section)


if __name__ == "__main__":
    main()
