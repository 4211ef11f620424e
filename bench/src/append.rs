//! The write-path workloads, the same for Fjord and for every peer:
//!
//! - `append-latency`: one writer, one append at a time, beside the disk's raw fdatasync measured just
//!   before in the same run;
//! - `append-throughput`: closed-loop writers swept over writers x partitions x event size, fsync on; for
//!   each partitions x size it reports the highest events/s whose p99 stays within the limit, then offers
//!   half that load open loop and reports the latency there;
//! - `append-batch`: the same with client-side batches (100 events per append by default).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::disk::fdatasync_latency;
use crate::load::CpuSeconds;
use crate::load::Pace;
use crate::load::Window;
use crate::load::join_writers;
use crate::load::writer_loop;
use crate::summary::Latency;
use crate::target::System;
use crate::target::Target;
use crate::target::TargetArgs;

/// Requests before this much time has passed are not counted.
const WARM_UP: Duration = Duration::from_secs(1);
/// An append not acknowledged in this long fails the measurement: a stuck system is a finding, not a hang.
const APPEND_DEADLINE: Duration = Duration::from_secs(60);

/// Flags every append workload takes.
#[derive(Debug, clap::Args)]
pub(crate) struct CommonArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Seconds to measure each point (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Print one JSON line per result to stdout (the readable line goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Flags of `fjord-bench append-latency`.
#[derive(Debug, clap::Args)]
pub(crate) struct LatencyArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 256)]
    event_size: usize,
    /// Partitions (Fjord only).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
}

/// Flags of `fjord-bench append-throughput`.
#[derive(Debug, clap::Args)]
pub(crate) struct SweepArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Concurrent writers to sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
    writers: Vec<usize>,
    /// Partition counts to sweep (Fjord only; a fresh region for each).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    partitions: Vec<u32>,
    /// Event sizes to sweep, in bytes.
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    event_sizes: Vec<usize>,
    /// The p99 latency, in milliseconds, within which throughput counts as sustained.
    #[arg(long, default_value_t = 10.0)]
    p99_limit_ms: f64,
}

/// Flags of `fjord-bench append-batch`.
#[derive(Debug, clap::Args)]
pub(crate) struct BatchArgs {
    #[command(flatten)]
    sweep: SweepArgs,
    /// Events per append (one client-side batch).
    #[arg(long, default_value_t = 100)]
    events_per_append: usize,
}

/// The load of one measurement.
#[derive(Debug, Clone, Copy, Serialize)]
struct Shape {
    writers: usize,
    event_size: usize,
    events_per_append: usize,
}

/// One measured point.
#[derive(Debug, Serialize)]
struct Point {
    workload: &'static str,
    system: System,
    durability: String,
    /// Fjord's region size; `None` for peers (their row names their topology).
    nodes: Option<u64>,
    /// Fjord's partitions; `None` for peers.
    partitions: Option<u32>,
    #[serde(flatten)]
    shape: Shape,
    /// `closed`, or `open` with the offered rate.
    pace: &'static str,
    offered_appends_per_sec: Option<f64>,
    seconds: f64,
    appends_per_sec: f64,
    events_per_sec: f64,
    mb_per_sec: f64,
    /// Fjord: appends acknowledged per write-ahead-log sync, averaged over the nodes.
    appends_per_fsync: Option<f64>,
    latency: Latency,
    cpu_seconds_per_million_events: CpuSeconds,
    /// `append-latency`: the disk's raw fdatasync p50 measured just before, in the same run.
    fdatasync_p50_us: Option<u64>,
}

impl Point {
    /// Prints the readable line to stdout or, with `json`, the JSON line to stdout and the readable one to
    /// stderr (so a script collecting results still shows progress).
    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            writeln!(std::io::stdout().lock(), "{}", serde_json::to_string(self)?)?;
            writeln!(std::io::stderr().lock(), "{}", self.describe())?;
        } else {
            writeln!(std::io::stdout().lock(), "{}", self.describe())?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let Point { shape, latency, cpu_seconds_per_million_events: cpu, .. } = self;
        let mut line = format!(
            "{} {:?}{}{}: {} writers, {} B x{} per append, {}: {:.0} events/s ({:.1} MB/s); {latency}; CPU-s per M \
             events: servers {:.1}, client {:.1}",
            self.workload,
            self.system,
            self.nodes.map(|n| format!(" {n} nodes")).unwrap_or_default(),
            self.partitions.map(|p| format!(" {p} partitions")).unwrap_or_default(),
            shape.writers,
            shape.event_size,
            shape.events_per_append,
            match self.offered_appends_per_sec {
                Some(rate) => format!("open loop at {rate:.0} appends/s"),
                None => "closed loop".to_owned(),
            },
            self.events_per_sec,
            self.mb_per_sec,
            cpu.servers,
            cpu.client,
        );
        if let Some(per_fsync) = self.appends_per_fsync {
            line += &format!("; {per_fsync:.1} appends/fsync");
        }
        if let Some(fsync) = self.fdatasync_p50_us {
            line += &format!(
                "; fdatasync p50 {fsync} µs, append p50 = {:.1}x",
                latency.p50_us as f64 / fsync.max(1) as f64
            );
        }
        line
    }
}

/// A point of a sweep that could not be measured (an append went unacknowledged past the deadline, say):
/// recorded as a finding, and the sweep goes on.
#[derive(Debug, Serialize)]
struct FailedPoint {
    /// Always `failed-point`, so the report lists these apart.
    workload: &'static str,
    /// The sweep it belongs to.
    sweep: &'static str,
    system: System,
    partitions: Option<u32>,
    #[serde(flatten)]
    shape: Shape,
    pace: &'static str,
    error: String,
}

impl FailedPoint {
    fn new(
        sweep: &'static str,
        common: &CommonArgs,
        partitions: u32,
        shape: Shape,
        pace: &'static str,
        error: &anyhow::Error,
    ) -> Self {
        let system = common.target.system;
        let partitions = (system == System::Fjord).then_some(partitions);
        FailedPoint { workload: "failed-point", sweep, system, partitions, shape, pace, error: format!("{error:#}") }
    }

    fn print(&self, json: bool) -> anyhow::Result<()> {
        let line = format!(
            "{} {:?}: {} writers, {} B x{} per append, {} loop: FAILED: {}",
            self.sweep,
            self.system,
            self.shape.writers,
            self.shape.event_size,
            self.shape.events_per_append,
            self.pace,
            self.error
        );
        if json {
            writeln!(std::io::stdout().lock(), "{}", serde_json::to_string(self)?)?;
        }
        writeln!(std::io::stderr().lock(), "{line}")?;
        Ok(())
    }
}

/// Runs `append-latency`.
pub(crate) fn latency(args: &LatencyArgs) -> anyhow::Result<()> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let fsync = fdatasync_latency(&args.common.target.dir, 1000)?;
        let target = Arc::new(Target::open(&args.common.target, args.partitions).await?);
        let shape = Shape { writers: 1, event_size: args.event_size, events_per_append: 1 };
        let mut point = measure(&target, &args.common, args.partitions, shape, Pace::Closed).await?;
        point.workload = "append-latency";
        point.fdatasync_p50_us = Some(fsync.p50_us);
        point.print(args.common.json)
    })
}

/// Runs `append-throughput`.
pub(crate) fn throughput(args: &SweepArgs) -> anyhow::Result<()> {
    sweep(args, 1, "append-throughput")
}

/// Runs `append-batch`.
pub(crate) fn batch(args: &BatchArgs) -> anyhow::Result<()> {
    sweep(&args.sweep, args.events_per_append, "append-batch")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn sweep(args: &SweepArgs, events_per_append: usize, workload: &'static str) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let common = &args.common;
    // Peers have no partitions to sweep: their stream is what it is.
    let partition_counts = if common.target.system == System::Fjord { args.partitions.clone() } else { vec![1] };
    runtime.block_on(async {
        for partitions in partition_counts {
            let target = Arc::new(Target::open(&common.target, partitions).await?);
            for &event_size in &args.event_sizes {
                let mut points = Vec::new();
                for &writers in &args.writers {
                    let shape = Shape { writers, event_size, events_per_append };
                    match measure(&target, common, partitions, shape, Pace::Closed).await {
                        Ok(mut point) => {
                            point.workload = workload;
                            point.print(common.json)?;
                            points.push(point);
                        }
                        Err(error) => FailedPoint::new(workload, common, partitions, shape, "closed", &error)
                            .print(common.json)?,
                    }
                }
                // The highest throughput within the p99 limit, then half of it offered open loop.
                let limit_us = (args.p99_limit_ms * 1000.0) as u64;
                let best = points
                    .iter()
                    .filter(|p| p.latency.p99_us <= limit_us)
                    .max_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec))
                    .or_else(|| points.iter().max_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec)));
                if let Some(best) = best {
                    let per_second = best.appends_per_sec / 2.0;
                    match measure(&target, common, partitions, best.shape, Pace::Open { per_second }).await {
                        Ok(mut half) => {
                            half.workload = workload;
                            half.print(common.json)?;
                        }
                        Err(error) => FailedPoint::new(workload, common, partitions, best.shape, "open", &error)
                            .print(common.json)?,
                    }
                }
            }
        }
        Ok(())
    })
}

/// Measures one point against an open target.
async fn measure(
    target: &Arc<Target>,
    common: &CommonArgs,
    partitions: u32,
    shape: Shape,
    pace: Pace,
) -> anyhow::Result<Point> {
    let events = Arc::new(vec![vec![0x5Au8; shape.event_size]; shape.events_per_append]);
    let window = Window::starting_now(WARM_UP, Duration::from_secs(common.seconds));
    let mut tasks = Vec::new();
    for writer in 0..shape.writers {
        let (target, events) = (target.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            writer_loop(window, pace, writer, shape.writers, || {
                let (target, events) = (target.clone(), events.clone());
                async move {
                    match tokio::time::timeout(APPEND_DEADLINE, target.append(writer, &events)).await {
                        Ok(acknowledged) => acknowledged,
                        Err(_) => anyhow::bail!("writer {writer}: no acknowledgement in {APPEND_DEADLINE:?}"),
                    }
                }
            })
            .await
        }));
    }
    tokio::time::sleep(WARM_UP).await;
    let pids = target.server_pids(&common.target);
    let (cpu_before, fsyncs_before) = (CpuSeconds::now(&pids), target.fsyncs_per_node().await);
    let (appends, latencies) = join_writers(tasks).await?;
    let (cpu_after, fsyncs_after) = (CpuSeconds::now(&pids), target.fsyncs_per_node().await);
    let seconds = common.seconds as f64;
    let events = appends * shape.events_per_append as u64;
    let events_per_sec = events as f64 / seconds;
    let is_fjord = common.target.system == System::Fjord;
    Ok(Point {
        workload: "",
        system: common.target.system,
        durability: common.target.system.durability(common.target.nodes),
        nodes: is_fjord.then_some(common.target.nodes),
        partitions: is_fjord.then_some(partitions),
        shape,
        pace: match pace {
            Pace::Closed => "closed",
            Pace::Open { .. } => "open",
        },
        offered_appends_per_sec: match pace {
            Pace::Closed => None,
            Pace::Open { per_second } => Some(per_second),
        },
        seconds,
        appends_per_sec: appends as f64 / seconds,
        events_per_sec,
        mb_per_sec: events_per_sec * shape.event_size as f64 / 1e6,
        appends_per_fsync: appends_per_fsync(appends, fsyncs_before, fsyncs_after),
        latency: Latency::of(&latencies),
        cpu_seconds_per_million_events: cpu_after.per_million_since(&cpu_before, events),
        fdatasync_p50_us: None,
    })
}

/// Appends per fsync, averaged over the nodes: every node holds every partition, so each node's syncs
/// served all `appends`.
fn appends_per_fsync(appends: u64, before: Option<Vec<u64>>, after: Option<Vec<u64>>) -> Option<f64> {
    let (before, after) = (before?, after?);
    let ratios: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b))
        .filter(|&s| s > 0)
        .map(|s| appends as f64 / s as f64)
        .collect();
    (!ratios.is_empty()).then(|| ratios.iter().sum::<f64>() / ratios.len() as f64)
}
