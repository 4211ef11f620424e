//! `fjord-bench`: Fjord's benchmark harness. One subcommand per workload; each prints a readable summary
//! and, with `--json`, a JSON result. Figures are only meaningful as ratios against peers measured on the
//! same machine in the same run (`bench/run-all` runs them all and writes bench/RESULTS.md).
//!
//! The region launcher lives in the package's library (`src/lib.rs`, [`fjord_bench::launcher`]), which the
//! workspace's integration tests use too; everything else is this binary's.

mod append;
mod disk;
mod fjord_region;
mod fold;
mod follow;
mod load;
mod log_append;
mod peers;
mod query;
mod report;
mod summary;
mod target;

use std::process::ExitCode;

use clap::Parser;
use clap::Subcommand;

/// Fjord's benchmark harness.
#[derive(Debug, Parser)]
#[command(name = "fjord-bench", about)]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// The disk's raw fdatasync latency: 4 KiB write + fdatasync, one at a time.
    Fsync(disk::FsyncArgs),
    /// Single-node durable appends through fjord-log's group commit, closed loop, one append in flight per writer.
    LogAppend(log_append::LogAppendArgs),
    /// One writer, one append at a time, against Fjord or a peer, beside the disk's raw fdatasync.
    AppendLatency(append::LatencyArgs),
    /// Closed-loop writers swept over writers x partitions x event size, then half the best load open loop.
    AppendThroughput(append::SweepArgs),
    /// The throughput sweep with client-side batches (100 events per append by default).
    AppendBatch(append::BatchArgs),
    /// Preloads events, then one subscriber replays them all from the beginning (NATS: an ordered consumer).
    Replay(follow::ReplayArgs),
    /// Append-acknowledged-to-delivered latency for 1 and 100 subscribers at half the region's maximum load.
    Live(follow::LiveArgs),
    /// Appends alone, then beside subscribers that never read: the append rate of each and the nodes' memory.
    Stalled(follow::StalledArgs),
    /// SQL over a preloaded e-commerce workload against DuckDB over the same events, and appends beside
    /// heavy queries.
    Query(query::QueryArgs),
    /// Materialized views over a Nexmark-style log: fold rate from offset 0, a query over a view of a million
    /// groups against DuckDB from the raw events, and append-to-visible freshness at half load.
    Fold(fold::FoldArgs),
    /// Turns the JSON results of a run into bench/RESULTS.md's tables, with Fjord/peer ratios.
    Report(report::ReportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.workload {
        Workload::Fsync(args) => disk::run(&args),
        Workload::LogAppend(args) => log_append::run(&args),
        Workload::AppendLatency(args) => append::latency(&args),
        Workload::AppendThroughput(args) => append::throughput(&args),
        Workload::AppendBatch(args) => append::batch(&args),
        Workload::Replay(args) => follow::replay(&args),
        Workload::Query(args) => query::run(&args),
        Workload::Fold(args) => fold::run(&args),
        Workload::Live(args) => follow::live(&args),
        Workload::Stalled(args) => follow::stalled(&args),
        Workload::Report(args) => report::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fjord-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
