//! `fjord-bench`: Fjord's benchmark harness. One subcommand per workload; each prints a readable summary
//! and, with `--json`, a JSON result. Figures are only meaningful as ratios against peers measured on the
//! same machine in the same run (see `bench/run-log` and bench/RESULTS.md).

mod disk;
mod log_append;
mod region_append;
mod summary;

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
    /// Durable appends to a region of real `fjord server` processes through gRPC, closed loop.
    RegionAppend(region_append::RegionAppendArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.workload {
        Workload::Fsync(args) => disk::run(&args),
        Workload::LogAppend(args) => log_append::run(&args),
        Workload::RegionAppend(args) => region_append::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fjord-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
