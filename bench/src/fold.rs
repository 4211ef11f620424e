//! `fold`: materialized views over a Nexmark-style log, against DuckDB answering from the raw events.
//!
//! 1. Preloads a Nexmark-style auction log (per 100 events: 2 `Person`, 6 `Auction` and 92 `Bid` events,
//!    JSON; a bid names one of `--groups` auctions and the auction's category), 100 events per append by
//!    16 writers.
//! 2. Fold rate: defines each view in turn — Nexmark q1 (a projection with arithmetic), q2 (a filter), bids
//!    per auction (a GROUP BY count over `--groups` groups) and revenue per category (a GROUP BY sum) — and
//!    times how long the node takes to fold the whole log into it, from offset 0, with the CPU seconds the
//!    node spent meanwhile: events per second, and per CPU-second (a core).
//! 3. The query over the view of `--groups` groups (bids per auction), p50 and p99 over gRPC `Query.Sql`;
//!    then `bench/fold_peer.py` exports the raw events to Parquet and times DuckDB computing the same
//!    answer from them, and checks the answers agree.
//! 4. Freshness: appends at half the load the region sustained closed-loop, each followed by a query of
//!    revenue per category carrying the append's consistency token: acknowledged-to-visible p50 and p99,
//!    beside the same query without a token (what the round trip alone costs).

use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use fjord_client::EventData;
use fjord_client::Expected;
use fjord_proto::auth::BearerToken;
use fjord_proto::v1;
use fjord_proto::v1::query_client::QueryClient;
use serde::Serialize;
use serde_json::Value;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::fjord_region::FjordRegion;
use crate::follow::settle;
use crate::load::CpuSeconds;
use crate::load::Pace;
use crate::load::Window;
use crate::load::join_writers;
use crate::load::preload_progress;
use crate::load::writer_loop;
use crate::summary::Latency;
use crate::summary::histogram;
use crate::summary::record;
use crate::target::System;
use crate::target::TargetArgs;

/// Events per append while preloading.
const EVENTS_PER_APPEND: u64 = 100;
/// Writers that preload.
const PRELOAD_WRITERS: usize = 16;
/// Writers measuring the region's closed-loop append load, then offering half of it.
const LOAD_WRITERS: usize = 16;
/// The categories an auction is in.
const CATEGORIES: u64 = 20;

/// The views measured, in order: (name, definition).
const VIEWS: [(&str, &str); 4] = [
    (
        "q1_bids_in_euros",
        "SELECT json_get_int(data, 'auction') AS auction, json_get_int(data, 'bidder') AS bidder, \
         json_get_int(data, 'price') * 0.908 AS price_eur, \"timestamp\" FROM events WHERE type = 'Bid'",
    ),
    (
        "q2_selected_auctions",
        "SELECT json_get_int(data, 'auction') AS auction, json_get_int(data, 'price') AS price \
         FROM events WHERE type = 'Bid' AND json_get_int(data, 'auction') % 123 = 0",
    ),
    (
        "bids_per_auction",
        "SELECT json_get_int(data, 'auction') AS auction, count(*) AS bids, max(json_get_int(data, 'price')) AS top \
         FROM events WHERE type = 'Bid' GROUP BY 1",
    ),
    (
        "revenue_per_category",
        "SELECT json_get_int(data, 'category') AS category, count(*) AS bids, sum(json_get_int(data, 'price')) AS revenue \
         FROM events WHERE type = 'Bid' GROUP BY 1",
    ),
];
/// The query over the view of `--groups` groups; `bench/fold_peer.py` asks DuckDB the same of the raw events.
const GROUPS_QUERY: &str = "SELECT count(*) AS auctions, sum(bids) AS bids, max(top) AS top FROM bids_per_auction";
/// What the freshness probe reads.
const FRESHNESS_QUERY: &str = "SELECT sum(bids) FROM revenue_per_category";

/// Flags of `fold`.
#[derive(Debug, clap::Args)]
pub(crate) struct FoldArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Events to preload (a multiple of 100).
    #[arg(long, default_value_t = 10_000_000)]
    pub(crate) events: u64,
    /// Auctions the bids are spread over: the groups of `bids_per_auction`.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) groups: u64,
    /// Runs of the query over the view of `--groups` groups (and of DuckDB's).
    #[arg(long, default_value_t = 50)]
    pub(crate) query_runs: u32,
    /// Seconds of appends at half load for freshness.
    #[arg(long, default_value_t = 10)]
    pub(crate) freshness_seconds: u64,
    /// The Python with the clients and DuckDB (`bin/setup`'s virtualenv).
    #[arg(long, env = "FJORD_VENV", default_value = "/var/cache/fjord/venv")]
    pub(crate) venv: std::path::PathBuf,
    /// Print the result as one JSON line on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// One view's fold from offset 0.
#[derive(Debug, Serialize)]
struct FoldRate {
    view: &'static str,
    events: u64,
    rows: u64,
    seconds: f64,
    events_per_second: f64,
    /// The node's CPU seconds over the fold (all its threads).
    cpu_seconds: f64,
    events_per_cpu_second: f64,
}

/// What one run measured.
#[derive(Debug, Serialize)]
struct FoldResult {
    workload: &'static str,
    events: u64,
    groups: u64,
    preload_secs: f64,
    folds: Vec<FoldRate>,
    groups_query: Latency,
    /// `bench/fold_peer.py`: the export and DuckDB's runs of the same answer from the raw events.
    duckdb: Value,
    closed_loop_appends_per_second: f64,
    offered_appends_per_second: f64,
    freshness: Latency,
    query_round_trip: Latency,
}

/// Runs `fold`.
pub(crate) fn run(args: &FoldArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.target.system == System::Fjord, "fold runs against fjord (DuckDB is its peer)");
    anyhow::ensure!(args.events.is_multiple_of(EVENTS_PER_APPEND), "--events must be a multiple of 100");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let region = Arc::new(FjordRegion::start(&args.target, 4).await?);
        let started = Instant::now();
        preload(&region, args.events, args.groups).await?;
        let preload_secs = started.elapsed().as_secs_f64();
        settle(&region.pids()).await;
        let mut sql = Sql::connect(&region, 0)?;
        let mut folds = Vec::new();
        for (view, definition) in VIEWS {
            folds.push(fold_rate(&region, &mut sql, view, definition).await?);
        }
        eprintln!("fold bench: {} queries over the view of {} groups", args.query_runs, args.groups);
        let mut latencies = histogram()?;
        let mut answer = Vec::new();
        for _ in 0..args.query_runs {
            let started = Instant::now();
            answer = sql.rows(GROUPS_QUERY, None).await?;
            record(&mut latencies, started.elapsed());
        }
        let groups_query = Latency::of(&latencies);
        let duckdb = duckdb(&region, args, &answer)?;
        let (closed_loop, offered, freshness, round_trip) = freshness(&region, args.freshness_seconds).await?;
        let result = FoldResult {
            workload: "fold",
            events: args.events,
            groups: args.groups,
            preload_secs,
            folds,
            groups_query,
            duckdb,
            closed_loop_appends_per_second: closed_loop,
            offered_appends_per_second: offered,
            freshness,
            query_round_trip: round_trip,
        };
        eprintln!(
            "fold bench: query over {} groups p50 {} µs; freshness p50 {} µs, p99 {} µs at {:.0} appends/s",
            args.groups, result.groups_query.p50_us, result.freshness.p50_us, result.freshness.p99_us, offered
        );
        if args.json {
            println!("{}", serde_json::to_string(&result)?);
        }
        anyhow::Ok(())
    })
}

/// Appends the auction log: `events / 100` appends of 100 events, each to a stream of its own.
async fn preload(region: &Arc<FjordRegion>, events: u64, groups: u64) -> anyhow::Result<()> {
    let appends = events / EVENTS_PER_APPEND;
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..PRELOAD_WRITERS {
        let (client, next) = (region.client(writer)?, next.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let batch = next.fetch_add(1, Ordering::Relaxed);
                if batch >= appends {
                    return anyhow::Ok(());
                }
                client.append(&format!("auctions-{batch}"), Expected::NoStream, auction_log(batch, groups)).await?;
            }
        }));
    }
    preload_progress(writers, events, || next.load(Ordering::Relaxed).min(appends) * EVENTS_PER_APPEND).await
}

/// The 100 events of batch `n`: the same for the same `n` in every run.
fn auction_log(n: u64, groups: u64) -> Vec<EventData> {
    (0..EVENTS_PER_APPEND)
        .map(|i| {
            let seq = n * EVENTS_PER_APPEND + i;
            let mix = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
            let auction = mix % groups;
            let category = auction % CATEGORIES;
            match i % 50 {
                0 => {
                    let data = format!(r#"{{"id":{seq},"name":"person-{seq}","city":"c{}"}}"#, mix % 97);
                    EventData::json("Person", data.as_bytes())
                }
                1..=3 => {
                    let data = format!(r#"{{"id":{auction},"seller":{},"category":{category}}}"#, mix % 10_007);
                    EventData::json("Auction", data.as_bytes())
                }
                _ => {
                    let (bidder, price) = (mix % 100_003, 100 + (mix >> 20) % 100_000);
                    let data = format!(
                        r#"{{"auction":{auction},"bidder":{bidder},"price":{price},"category":{category},"channel":"web"}}"#
                    );
                    EventData::json("Bid", data.as_bytes())
                }
            }
        })
        .collect()
}

/// Defines `view`, waits until it serves, and drops nothing: its fold rate from offset 0.
async fn fold_rate(
    region: &FjordRegion,
    sql: &mut Sql,
    view: &'static str,
    definition: &str,
) -> anyhow::Result<FoldRate> {
    let before = CpuSeconds::now(&region.pids());
    let started = Instant::now();
    sql.rows(&format!("CREATE MATERIALIZED VIEW {view} AS {definition}"), None).await?;
    let status = format!("SELECT status, rows, build_done, build_total FROM fjord_views WHERE name = '{view}'");
    let rows = loop {
        let answer = sql.rows(&status, None).await?;
        let row = answer.first().context("the view is not listed")?;
        let number = |i: usize| row.get(i).and_then(|text| text.parse::<u64>().ok()).unwrap_or(0);
        match row[0].as_str() {
            "serving" => break number(1),
            "failed" => anyhow::bail!("{view} failed to fold"),
            _ => {
                eprint!("\rfold bench: {view}: {} of {} events folded   ", number(2), number(3));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let cpu = CpuSeconds::now(&region.pids()).servers - before.servers;
    let applied = sql.rows("SELECT sum(applied_offset) FROM fjord_partitions WHERE node = 1", None).await?;
    let events: u64 = applied.first().and_then(|row| row.first()).and_then(|text| text.parse().ok()).unwrap_or(0);
    eprintln!(
        "\rfold bench: {view}: {events} events in {seconds:.2} s ({:.0} events/s, {:.0} per CPU-second), {rows} rows",
        events as f64 / seconds,
        events as f64 / cpu.max(1e-9)
    );
    Ok(FoldRate {
        view,
        events,
        rows,
        seconds,
        events_per_second: events as f64 / seconds,
        cpu_seconds: cpu,
        events_per_cpu_second: events as f64 / cpu.max(1e-9),
    })
}

/// Runs `bench/fold_peer.py` against node 1 with Fjord's answer to [`GROUPS_QUERY`]: its JSON.
fn duckdb(region: &FjordRegion, args: &FoldArgs, answer: &[Vec<String>]) -> anyhow::Result<Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fold_peer.py");
    let parquet = tempfile::Builder::new().suffix(".parquet").tempfile_in(&args.target.dir)?;
    let output = Command::new(args.venv.join("bin/python"))
        .arg(&script)
        .env("FJORD_FLIGHT", region.address(0))
        .env("FJORD_TOKEN", region.token())
        .env("FJORD_PARQUET", parquet.path())
        .env("FJORD_RUNS", args.query_runs.to_string())
        .env("FJORD_ANSWER", serde_json::to_string(answer)?)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} with {}", script.display(), args.venv.display()))?;
    anyhow::ensure!(output.status.success(), "{} failed ({})", script.display(), output.status);
    serde_json::from_slice(&output.stdout).context("fold_peer.py printed no JSON")
}

/// The region's closed-loop single-event append rate, then half of it offered open-loop with each append
/// followed by [`FRESHNESS_QUERY`] carrying its token: the rates, acknowledged-to-visible latency, and the
/// same query's latency without a token.
async fn freshness(region: &Arc<FjordRegion>, seconds: u64) -> anyhow::Result<(f64, f64, Latency, Latency)> {
    let window = Window::starting_now(Duration::from_secs(1), Duration::from_secs(seconds));
    let mut tasks = Vec::new();
    for writer in 0..LOAD_WRITERS {
        let client = region.client(writer)?;
        tasks.push(tokio::spawn(async move {
            writer_loop(window, Pace::Closed, writer, LOAD_WRITERS, || {
                let client = client.clone();
                async move {
                    client.append(&format!("bidder-{writer}"), Expected::Any, vec![bid()]).await?;
                    Ok(())
                }
            })
            .await
        }));
    }
    let (appends, _) = join_writers(tasks).await?;
    let closed_loop = appends as f64 / seconds as f64;
    let offered = closed_loop / 2.0;
    eprintln!(
        "fold bench: {closed_loop:.0} appends/s closed-loop; offering {offered:.0}/s with a token read after each"
    );
    let window = Window::starting_now(Duration::from_secs(1), Duration::from_secs(seconds));
    let mut tasks = Vec::new();
    for writer in 0..LOAD_WRITERS {
        let client = region.client(writer)?;
        // Each writer's own query client and histogram, held across its (sequential) requests.
        let probe = Arc::new(tokio::sync::Mutex::new((Sql::connect(region, writer)?, histogram()?)));
        tasks.push(tokio::spawn(async move {
            writer_loop(window, Pace::Open { per_second: offered }, writer, LOAD_WRITERS, || {
                let (client, probe) = (client.clone(), probe.clone());
                async move {
                    let appended = client.append(&format!("bidder-{writer}"), Expected::Any, vec![bid()]).await?;
                    let acknowledged = Instant::now();
                    let (sql, visible) = &mut *probe.lock().await;
                    sql.rows(FRESHNESS_QUERY, appended.token).await?;
                    record(visible, acknowledged.elapsed());
                    Ok(())
                }
            })
            .await?;
            let (_, visible) =
                Arc::try_unwrap(probe).map_err(|_| anyhow::anyhow!("a probe still in use"))?.into_inner();
            anyhow::Ok(visible)
        }));
    }
    let mut visible = histogram()?;
    for task in tasks {
        visible.add(task.await??)?;
    }
    let mut sql = Sql::connect(region, 0)?;
    let mut round_trip = histogram()?;
    for _ in 0..200 {
        let started = Instant::now();
        sql.rows(FRESHNESS_QUERY, None).await?;
        record(&mut round_trip, started.elapsed());
    }
    Ok((closed_loop, offered, Latency::of(&visible), Latency::of(&round_trip)))
}

/// One bid of the freshness load.
fn bid() -> EventData {
    EventData::json("Bid", br#"{"auction":7,"bidder":1,"price":250,"category":7,"channel":"app"}"#)
}

/// `Query.Sql` on one node, answers as JSON rows.
struct Sql {
    client: QueryClient<InterceptedService<Channel, BearerToken>>,
}

impl Sql {
    fn connect(region: &FjordRegion, node: usize) -> anyhow::Result<Self> {
        let address = region.address(node % region.pids().len().max(1));
        let channel = Channel::from_shared(format!("http://{address}"))?.connect_lazy();
        let token = BearerToken::new(region.token()).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Sql { client: QueryClient::new(InterceptedService::new(channel, token)) })
    }

    /// Runs `statement` (waiting for `token` if given): its rows, each value as text (`NULL` for null).
    async fn rows(&mut self, statement: &str, token: Option<v1::ConsistencyToken>) -> anyhow::Result<Vec<Vec<String>>> {
        use datafusion::arrow::ipc::reader::StreamReader;
        use datafusion::arrow::util::display::ArrayFormatter;
        use datafusion::arrow::util::display::FormatOptions;
        let request = v1::SqlRequest { sql: statement.to_owned(), wait_for: token, max_staleness_ms: 0 };
        let mut responses = self.client.sql(request).await.with_context(|| statement.to_owned())?.into_inner();
        let mut bytes = Vec::new();
        while let Some(response) = responses.message().await? {
            bytes.extend(response.arrow_ipc);
        }
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in StreamReader::try_new(std::io::Cursor::new(bytes), None)? {
            let batch = batch?;
            let formatters = batch
                .columns()
                .iter()
                .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()?;
            for row in 0..batch.num_rows() {
                rows.push(formatters.iter().map(|formatter| formatter.value(row).to_string()).collect());
            }
        }
        Ok(rows)
    }
}
