//! Single-node durable appends through `fjord-log`'s [`Appender`] (group commit, fsync on).
//!
//! Closed loop: each writer keeps one append in flight and sends the next when the last is acknowledged,
//! so throughput at N writers over throughput at 1 writer shows what group commit buys.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fjord_log::AppendRequest;
use fjord_log::Appender;
use fjord_log::ExpectedRevision;
use fjord_log::GroupCommitConfig;
use fjord_log::Limits;
use fjord_log::LogStore;
use fjord_log::ProposedEvent;
use fjord_log::StoreOptions;
use serde::Serialize;

use crate::load::Pace;
use crate::load::Window;
use crate::load::cpu_seconds;
use crate::load::join_writers;
use crate::load::writer_loop;
use crate::summary::Latency;
use crate::summary::sweep;

/// Flags of `fjord-bench log-append`.
#[derive(Debug, clap::Args)]
pub(crate) struct LogAppendArgs {
    /// Concurrent writers to sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    writers: Vec<usize>,
    /// Partitions in the store.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 256)]
    event_size: usize,
    /// Events per append.
    #[arg(long, default_value_t = 1)]
    events_per_append: usize,
    /// Seconds to measure each writer count (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Directory for the store (a fresh temporary directory inside it per run).
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    /// Print one JSON line per writer count.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct LogAppendResult {
    workload: &'static str,
    writers: usize,
    partitions: u32,
    event_size: usize,
    events_per_append: usize,
    seconds: f64,
    appends_per_sec: f64,
    events_per_sec: f64,
    mb_per_sec: f64,
    appends_per_fsync: f64,
    cpu_seconds_per_million_events: f64,
    latency: Latency,
}

pub(crate) fn run(args: &LogAppendArgs) -> anyhow::Result<()> {
    sweep(
        &args.writers,
        args.json,
        |writers| measure(args, writers),
        |r| {
            let writers = r.writers;
            format!(
                "log-append: {writers:>3} writers, {} partitions, {} B events x{}: {:>9.0} events/s, {:>6.1} MB/s, \
                 {:.1} appends/fsync, {:.2} CPU-s per M events; {}",
                r.partitions,
                r.event_size,
                r.events_per_append,
                r.events_per_sec,
                r.mb_per_sec,
                r.appends_per_fsync,
                r.cpu_seconds_per_million_events,
                r.latency
            )
        },
    )
}

async fn measure(args: &LogAppendArgs, writers: usize) -> anyhow::Result<LogAppendResult> {
    let dir = tempfile::tempdir_in(&args.dir)?;
    let options = StoreOptions { partitions: args.partitions, ..StoreOptions::default() };
    let path = dir.path().to_owned();
    let store = tokio::task::spawn_blocking(move || LogStore::open(path, &options)).await??;
    let appender = Arc::new(Appender::start(&store, Limits::default(), GroupCommitConfig::default())?);
    let payload = vec![b'x'; args.event_size];
    let warm_up = Duration::from_secs(1);
    let measured = Duration::from_secs(args.seconds);
    let window = Window::starting_now(warm_up, measured);
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (appender, payload) = (appender.clone(), payload.clone());
        let events_per_append = args.events_per_append;
        tasks.push(tokio::spawn(async move {
            let stream = format!("bench-{writer}");
            writer_loop(window, Pace::Closed, writer, writers, || {
                let events = (0..events_per_append).map(|_| ProposedEvent::json("Measured", payload.clone())).collect();
                let request = AppendRequest { stream: stream.clone(), expected: ExpectedRevision::Any, events };
                let appender = appender.clone();
                async move { Ok(appender.append(request).await.map(|_| ())?) }
            })
            .await
        }));
    }
    let cpu_before = cpu_seconds(None).unwrap_or(0.0);
    let (appends, latencies) = join_writers(tasks).await?;
    let cpu = cpu_seconds(None).unwrap_or(0.0) - cpu_before;
    let stats = appender.stats();
    let fsyncs = stats.batches.load(Ordering::Relaxed);
    let written = stats.appends.load(Ordering::Relaxed);
    let seconds = measured.as_secs_f64();
    let events = appends * args.events_per_append as u64;
    let events_per_sec = events as f64 / seconds;
    if let Ok(appender) = Arc::try_unwrap(appender) {
        tokio::task::spawn_blocking(move || appender.shutdown()).await?;
    }
    Ok(LogAppendResult {
        workload: "log-append",
        writers,
        partitions: args.partitions,
        event_size: args.event_size,
        events_per_append: args.events_per_append,
        seconds,
        appends_per_sec: appends as f64 / seconds,
        events_per_sec,
        mb_per_sec: events_per_sec * args.event_size as f64 / 1e6,
        appends_per_fsync: if fsyncs == 0 { 0.0 } else { written as f64 / fsyncs as f64 },
        cpu_seconds_per_million_events: if events == 0 { 0.0 } else { cpu / events as f64 * 1e6 },
        latency: Latency::of(&latencies),
    })
}
