//! The disk's raw fdatasync latency, the floor under every durable append.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::summary::Latency;
use crate::summary::histogram;
use crate::summary::record;

/// Flags of `fjord-bench fsync`.
#[derive(Debug, clap::Args)]
pub(crate) struct FsyncArgs {
    /// Directory on the disk to measure (a temporary file is created in it).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Number of write + fdatasync rounds.
    #[arg(long, default_value_t = 2000)]
    rounds: u32,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct FsyncResult {
    workload: &'static str,
    rounds: u32,
    latency: Latency,
}

/// Times `rounds` of a 4 KiB write + fdatasync in a temporary file under `dir`, one at a time.
pub(crate) fn fdatasync_latency(dir: &Path, rounds: u32) -> anyhow::Result<Latency> {
    let file = tempfile::tempfile_in(dir)?;
    let block = vec![0xA5u8; 4096];
    let mut latencies = histogram()?;
    for round in 0..rounds {
        // Rewrite a small ring of blocks, as a WAL does, so the file's size settles.
        let position = u64::from(round % 256) * 4096;
        let start = Instant::now();
        file.write_all_at(&block, position)?;
        file.sync_data()?;
        record(&mut latencies, start.elapsed());
    }
    Ok(Latency::of(&latencies))
}

pub(crate) fn run(args: &FsyncArgs) -> anyhow::Result<()> {
    let result =
        FsyncResult { workload: "fsync", rounds: args.rounds, latency: fdatasync_latency(&args.dir, args.rounds)? };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "fsync: {} rounds of 4 KiB write + fdatasync: {}", result.rounds, result.latency)?;
    }
    Ok(())
}
