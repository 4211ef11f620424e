//! `query`: SQL over a preloaded region, against DuckDB over the same events.
//!
//! 1. Preloads a small e-commerce workload: `order-<n>` streams of 100 events each (an `OrderPlaced`, 96
//!    `ItemAdded` with a category and a price in their JSON, then `PaymentReceived`, `OrderShipped` and
//!    `OrderDelivered`), appended a stream per append by 16 writers.
//! 2. Runs `bench/query_peer.py` (the setup's virtualenv): it exports the events through Flight SQL to
//!    Parquet, runs the fixed query set (count by type, revenue by category from the JSON, one stream's 100
//!    events by a point lookup, a time-range scan) on Fjord (Flight SQL, and the lookup over Postgres too)
//!    and on DuckDB over the Parquet file, checks the answers are identical, and times them.
//! 3. Measures appends (closed loop, single events) alone, then beside 16 heavy queries (revenue by
//!    category, over and over through gRPC `Query.Sql`): their p99 each, and the ratio.

use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use fjord_client::EventData;
use fjord_client::Expected;
use fjord_proto::v1;
use fjord_proto::v1::query_client::QueryClient;
use serde::Serialize;
use serde_json::Value;

use crate::fjord_region::FjordRegion;
use crate::follow::settle;
use crate::load::Pace;
use crate::load::Window;
use crate::load::join_writers;
use crate::load::preload_progress;
use crate::load::writer_loop;
use crate::summary::Latency;
use crate::target::System;
use crate::target::TargetArgs;

/// Events per stream: the point lookup reads one stream's.
const EVENTS_PER_STREAM: u64 = 100;
/// Writers that preload, each appending one stream's events at a time.
const PRELOAD_WRITERS: usize = 16;
/// Writers appending single events while the append latency is measured.
const APPEND_WRITERS: usize = 8;
/// The heavy query run over and over beside the appends.
const HEAVY_QUERY: &str = "SELECT data->>'category' AS category, sum(CAST(data->>'price' AS BIGINT)) AS revenue \
                           FROM events WHERE type = 'ItemAdded' GROUP BY 1 ORDER BY 1";
/// The categories an `ItemAdded` is in.
const CATEGORIES: [&str; 8] = ["books", "camping", "garden", "kitchen", "music", "outdoor", "tools", "toys"];

/// Flags of `query`.
#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Events to preload (a multiple of 100: whole streams).
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) events: u64,
    /// Runs of each scan query (on Fjord and on DuckDB).
    #[arg(long, default_value_t = 5)]
    pub(crate) scan_runs: u32,
    /// Point lookups (each a different stream) over each interface.
    #[arg(long, default_value_t = 200)]
    pub(crate) lookup_runs: u32,
    /// Heavy queries running at once beside the appends.
    #[arg(long, default_value_t = 16)]
    pub(crate) heavy_queries: usize,
    /// Seconds of appends measured alone, then again beside the heavy queries.
    #[arg(long, default_value_t = 10)]
    pub(crate) append_seconds: u64,
    /// The Python with the clients and DuckDB (`bin/setup`'s virtualenv).
    #[arg(long, env = "FJORD_VENV", default_value = "/var/cache/fjord/venv")]
    pub(crate) venv: std::path::PathBuf,
    /// Print the result as one JSON line on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What one run measured.
#[derive(Debug, Serialize)]
struct QueryResult {
    workload: &'static str,
    events: u64,
    preload_secs: f64,
    /// What `bench/query_peer.py` measured: the export, and every query on Fjord and DuckDB.
    clients: Value,
    appends_alone: Latency,
    appends_beside_heavy_queries: Latency,
    heavy_queries: usize,
    heavy_queries_completed: u64,
    /// Heavy queries that failed (a query over its time limit, say): they ran beside the appends all the same.
    heavy_queries_failed: u64,
}

/// Runs `query`.
pub(crate) fn run(args: &QueryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.target.system == System::Fjord, "query runs against fjord (DuckDB is its peer)");
    anyhow::ensure!(
        args.events.is_multiple_of(EVENTS_PER_STREAM),
        "--events must be a multiple of {EVENTS_PER_STREAM}"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let region = Arc::new(FjordRegion::start(&args.target, 4).await?);
        let started = Instant::now();
        preload(&region, args.events).await?;
        let preload_secs = started.elapsed().as_secs_f64();
        settle(&region.pids()).await;
        let clients = clients(&region, args)?;
        eprintln!("query bench: appends alone for {} s", args.append_seconds);
        let alone = appends(&region, args.append_seconds).await?;
        eprintln!("query bench: appends beside {} heavy queries for {} s", args.heavy_queries, args.append_seconds);
        let stop = Arc::new(AtomicBool::new(false));
        let (completed, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let heavy: Vec<_> = (0..args.heavy_queries)
            .map(|n| {
                let counts = (completed.clone(), failed.clone());
                tokio::spawn(heavy_query_loop(region.clone(), n, stop.clone(), counts))
            })
            .collect();
        let beside = appends(&region, args.append_seconds).await;
        stop.store(true, Ordering::Relaxed);
        for task in heavy {
            task.await??;
        }
        let result = QueryResult {
            workload: "query",
            events: args.events,
            preload_secs,
            clients,
            appends_alone: alone,
            appends_beside_heavy_queries: beside?,
            heavy_queries: args.heavy_queries,
            heavy_queries_completed: completed.load(Ordering::Relaxed),
            heavy_queries_failed: failed.load(Ordering::Relaxed),
        };
        eprintln!(
            "query bench: appends' p99 {} µs alone, {} µs beside {} heavy queries ({} of them completed)",
            result.appends_alone.p99_us,
            result.appends_beside_heavy_queries.p99_us,
            result.heavy_queries,
            result.heavy_queries_completed
        );
        if args.json {
            println!("{}", serde_json::to_string(&result)?);
        }
        anyhow::Ok(())
    })
}

/// Appends the e-commerce workload: `events / 100` streams, one append each, showing progress.
async fn preload(region: &Arc<FjordRegion>, events: u64) -> anyhow::Result<()> {
    let streams = events / EVENTS_PER_STREAM;
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..PRELOAD_WRITERS {
        let (client, next) = (region.client(writer)?, next.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let stream = next.fetch_add(1, Ordering::Relaxed);
                if stream >= streams {
                    return anyhow::Ok(());
                }
                client.append(&format!("order-{stream}"), Expected::NoStream, order(stream)).await?;
            }
        }));
    }
    preload_progress(writers, events, || next.load(Ordering::Relaxed).min(streams) * EVENTS_PER_STREAM).await
}

/// One order's 100 events, the same for the same `n` in every run.
fn order(n: u64) -> Vec<EventData> {
    let mut events = vec![EventData::json("OrderPlaced", format!(r#"{{"customer":"c-{}"}}"#, n % 9973).as_bytes())];
    for item in 0..EVENTS_PER_STREAM - 4 {
        let mix = (n * 7919 + item * 104_729) % 1_000_003;
        let (category, price) = (CATEGORIES[(mix % 8) as usize], 100 + mix % 9_900);
        let data = format!(r#"{{"sku":"sku-{}","category":"{category}","price":{price}}}"#, mix % 5000);
        events.push(EventData::json("ItemAdded", data.as_bytes()));
    }
    events.push(EventData::json("PaymentReceived", br#"{"method":"card"}"#));
    events.push(EventData::json("OrderShipped", br#"{"carrier":"posten"}"#));
    events.push(EventData::json("OrderDelivered", b"{}"));
    events
}

/// Runs `bench/query_peer.py` against node 1: its JSON.
fn clients(region: &FjordRegion, args: &QueryArgs) -> anyhow::Result<Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("query_peer.py");
    let parquet = tempfile::Builder::new().suffix(".parquet").tempfile_in(&args.target.dir)?;
    let output = Command::new(args.venv.join("bin/python"))
        .arg(&script)
        .env("FJORD_FLIGHT", region.address(0))
        .env("FJORD_PG", region.postgres_address(0))
        .env("FJORD_TOKEN", region.token())
        .env("FJORD_EVENTS", args.events.to_string())
        .env("FJORD_STREAMS", (args.events / EVENTS_PER_STREAM).to_string())
        .env("FJORD_PARQUET", parquet.path())
        .env("FJORD_SCAN_RUNS", args.scan_runs.to_string())
        .env("FJORD_LOOKUP_RUNS", args.lookup_runs.to_string())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} with {}", script.display(), args.venv.display()))?;
    anyhow::ensure!(output.status.success(), "{} failed ({})", script.display(), output.status);
    serde_json::from_slice(&output.stdout).context("the query clients printed no JSON")
}

/// Closed-loop single-event appends by [`APPEND_WRITERS`] writers for `seconds` (after a second's
/// warm-up): their latency.
async fn appends(region: &Arc<FjordRegion>, seconds: u64) -> anyhow::Result<Latency> {
    let window = Window::starting_now(Duration::from_secs(1), Duration::from_secs(seconds));
    let mut tasks = Vec::new();
    for writer in 0..APPEND_WRITERS {
        let client = region.client(writer)?;
        tasks.push(tokio::spawn(async move {
            writer_loop(window, Pace::Closed, writer, APPEND_WRITERS, || {
                let client = client.clone();
                async move {
                    let event = EventData::json("CartViewed", br#"{"page":"checkout"}"#);
                    client.append(&format!("visitor-{writer}"), Expected::Any, vec![event]).await?;
                    Ok(())
                }
            })
            .await
        }));
    }
    let (_, latencies) = join_writers(tasks).await?;
    Ok(Latency::of(&latencies))
}

/// Runs [`HEAVY_QUERY`] through node `n mod nodes` until `stop`, counting the queries that completed and
/// those that failed. No client-side time limit: a heavy query may take long beside fifteen others.
async fn heavy_query_loop(
    region: Arc<FjordRegion>,
    n: usize,
    stop: Arc<AtomicBool>,
    (completed, failed): (Arc<AtomicU64>, Arc<AtomicU64>),
) -> anyhow::Result<()> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", region.address(n)))?.connect_lazy();
    let token = fjord_proto::auth::BearerToken::new(region.token()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut client = QueryClient::new(tonic::service::interceptor::InterceptedService::new(channel, token));
    while !stop.load(Ordering::Relaxed) {
        let request = v1::SqlRequest { sql: HEAVY_QUERY.to_owned(), wait_for: None, max_staleness_ms: 0 };
        let answered = async {
            let mut answer = client.sql(request).await?.into_inner();
            while answer.message().await?.is_some() {}
            Ok::<_, tonic::Status>(())
        };
        let counter = if answered.await.is_ok() { &completed } else { &failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
