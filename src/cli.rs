//! The command line: `fjord <subcommand>`, each flag also an environment variable.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clap::Subcommand;

use crate::config::Config;

/// Fjord: a geo-distributed event log and projection engine.
#[derive(Debug, Parser)]
#[command(name = "fjord", version, about)]
pub struct Cli {
    /// A TOML config file; flags and environment variables override it.
    #[arg(long, short, global = true, env = "FJORD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info,fjord_log=debug`).
    #[arg(long, global = true, env = "FJORD_LOG", default_value = "info")]
    pub log: String,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node on an embedded default, append sample events, read them back and print what it did.
    Dev(DevArgs),
}

/// Flags of `fjord dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the node keeps its data.
    #[arg(long, env = "FJORD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of partitions (fixed when the data dir is first created).
    #[arg(long, env = "FJORD_PARTITIONS")]
    pub partitions: Option<u32>,
}

/// Parses the command line, runs the subcommand, and turns its error into a message and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fjord: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Dev(args) => {
            if let Some(data_dir) = args.data_dir {
                config.data_dir = data_dir;
            }
            if let Some(partitions) = args.partitions {
                config.store.partitions = partitions;
            }
            runtime.block_on(crate::dev::run(&config))
        }
    }
}
