//! The command line: `fjord <subcommand>`. Every flag is also an environment variable; a TOML file given
//! with `--config` sets the rest (defaults < file < environment < flags).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;

use crate::node::NodeConfig;
use crate::security::certs::SecurityDir;
use crate::security::tokens::Grant;
use crate::security::tokens::Operation;

/// Fjord: a geo-distributed event log and projection engine.
#[derive(Debug, Parser)]
#[command(name = "fjord", version, about)]
pub struct Cli {
    /// A TOML node config file; flags and environment variables override it.
    #[arg(long, short, global = true, env = "FJORD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info,fjord_raft=debug`).
    #[arg(long, global = true, env = "FJORD_LOG", default_value = "warn,fjord=info")]
    pub log: String,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a 3-node region on 127.0.0.1 (data under ./data), append a sample workload, and stay up.
    Dev(DevArgs),
    /// Run one node of a region.
    Server(ServerArgs),
    /// Append one event to a stream of a running region.
    Append(crate::client::AppendArgs),
    /// Read a stream (or a partition) of a running region.
    Read(crate::client::ReadArgs),
    /// Show a running region's members and partitions.
    Status(crate::client::StatusArgs),
    /// Print the events of a running region as they are committed (history first), until Ctrl-C.
    Tail(crate::tail::TailArgs),
    /// Manage and consume named subscriptions (consumer groups) of a running region.
    Subscription(crate::subscription::SubscriptionArgs),
    /// Run one SQL statement that reads against a running region (tables: events, fjord_partitions,
    /// fjord_members, fjord_streams).
    Sql(crate::sql::SqlArgs),
    /// List the region's materialized views and follow those being built, with a progress bar.
    Views(crate::sql::ViewsArgs),
    /// Make a region's security dir: its CA, node certificates, token key and an admin token.
    Certs(CertsArgs),
    /// Issue a bearer token signed with a security dir's token key.
    Token(TokenArgs),
}

/// Flags of `fjord certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// The security dir to make or complete (what exists is kept).
    #[arg(long, env = "FJORD_SECURITY_DIR", default_value = "security")]
    pub dir: PathBuf,
    /// The region the node certificates are for.
    #[arg(long, env = "FJORD_REGION")]
    pub region: String,
    /// Node ids to make certificates for, e.g. `1,2,3`.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<u64>,
}

/// Flags of `fjord token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The security dir whose token key signs.
    #[arg(long, env = "FJORD_SECURITY_DIR", default_value = "security")]
    pub dir: PathBuf,
    /// Who the token is for (shown in logs and errors).
    #[arg(long)]
    pub subject: String,
    /// A grant, `operations:stream-prefix`, e.g. `append,read:orders-` (the empty prefix: every stream).
    /// Operations: append, read, subscribe, query, admin. Repeat for more grants.
    #[arg(long = "grant", required = true)]
    pub grants: Vec<String>,
    /// Seconds until the token expires (none: never).
    #[arg(long)]
    pub expires_in_secs: Option<u64>,
}

/// Flags of `fjord dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the three nodes keep their data (one directory each).
    #[arg(long, env = "FJORD_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// The first node's public port; the others take the next two, the three after are the nodes'
    /// node-to-node ports, and the three after those their Postgres ports.
    #[arg(long, env = "FJORD_DEV_PORT", default_value_t = 7101)]
    pub port: u16,
    /// Number of partitions (fixed when the data dirs are first created).
    #[arg(long, env = "FJORD_PARTITIONS")]
    pub partitions: Option<u32>,
}

/// Flags of `fjord server`; each overrides the config file.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// This node's id in its region (at least 1).
    #[arg(long, env = "FJORD_NODE_ID")]
    pub node_id: Option<u64>,
    /// The region's name.
    #[arg(long, env = "FJORD_REGION")]
    pub region: Option<String>,
    /// The address to serve the public API on.
    #[arg(long, env = "FJORD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The address to serve the node-to-node plane on (mutual TLS).
    #[arg(long, env = "FJORD_INTERNAL_LISTEN")]
    pub internal_listen: Option<SocketAddr>,
    /// The address to serve SQL over the Postgres wire protocol on (a token is the password).
    #[arg(long, env = "FJORD_POSTGRES_LISTEN")]
    pub postgres_listen: Option<SocketAddr>,
    /// The region's initial voters as `id=host:port,...`, their node-to-node addresses (used once, to
    /// bootstrap a new region).
    #[arg(long, env = "FJORD_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Where the node keeps its data.
    #[arg(long, env = "FJORD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The security dir (CA, this node's certificate and key, token key; see `fjord certs`).
    #[arg(long, env = "FJORD_SECURITY_DIR")]
    pub security_dir: Option<PathBuf>,
    /// Number of partitions (fixed when the data dir is first created).
    #[arg(long, env = "FJORD_PARTITIONS")]
    pub partitions: Option<u32>,
}

/// Parses the command line, runs the subcommand, and turns its error into a message and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let started = crate::config::load(cli.config.as_deref()).and_then(|config| {
        init_logging(&cli)?;
        run(cli, config)
    });
    match started {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fjord: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, except under `fjord dev`, whose three nodes log to `<data dir>/dev.log` so that the
/// terminal shows only what the workload did (peers refuse connections while they start, and say so).
fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match &cli.command {
        Command::Dev(args) => {
            std::fs::create_dir_all(&args.data_dir)?;
            let log = std::fs::OpenOptions::new().create(true).append(true).open(args.data_dir.join("dev.log"))?;
            builder.with_writer(std::sync::Mutex::new(log)).with_ansi(false).init();
        }
        _ => builder.with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).init(),
    }
    Ok(())
}

fn run(cli: Cli, config: NodeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Dev(args) => runtime.block_on(crate::dev::run(config, args)),
        Command::Server(args) => runtime.block_on(crate::server::run(server_config(config, args)?)),
        Command::Append(args) => runtime.block_on(args.run()),
        Command::Read(args) => runtime.block_on(args.run()),
        Command::Status(args) => runtime.block_on(args.run()),
        Command::Tail(args) => runtime.block_on(args.run()),
        Command::Subscription(args) => runtime.block_on(args.run()),
        Command::Sql(args) => runtime.block_on(args.run()),
        Command::Views(args) => runtime.block_on(args.run()),
        Command::Certs(args) => make_certs(&args),
        Command::Token(args) => issue_token(&args),
    }
}

fn make_certs(args: &CertsArgs) -> anyhow::Result<()> {
    let dir = SecurityDir::new(&args.dir);
    let made = dir.ensure(&args.region, &args.nodes)?;
    for path in &made {
        println!("made {}", path.display());
    }
    if made.is_empty() {
        println!("{} has everything asked for already", args.dir.display());
    }
    Ok(())
}

fn issue_token(args: &TokenArgs) -> anyhow::Result<()> {
    let grants = args.grants.iter().map(|grant| parse_grant(grant)).collect::<anyhow::Result<Vec<_>>>()?;
    println!("{}", SecurityDir::new(&args.dir).issue_token(&args.subject, grants, args.expires_in_secs)?);
    Ok(())
}

/// Parses `operation,operation:stream-prefix`.
pub fn parse_grant(grant: &str) -> anyhow::Result<Grant> {
    let (operations, stream_prefix) =
        grant.split_once(':').ok_or_else(|| anyhow::anyhow!("grant {grant:?} is not operations:stream-prefix"))?;
    let operations = operations
        .split(',')
        .map(str::parse)
        .collect::<anyhow::Result<Vec<Operation>>>()
        .with_context(|| format!("grant {grant:?}"))?;
    Ok(Grant { operations, stream_prefix: stream_prefix.to_owned() })
}

fn server_config(mut config: NodeConfig, args: ServerArgs) -> anyhow::Result<NodeConfig> {
    if let Some(node_id) = args.node_id {
        config.node_id = node_id;
    }
    if let Some(region) = args.region {
        config.region = region;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(internal_listen) = args.internal_listen {
        config.internal_listen = internal_listen;
    }
    if let Some(postgres_listen) = args.postgres_listen {
        config.postgres_listen = postgres_listen;
    }
    if let Some(security_dir) = args.security_dir {
        config.security_dir = security_dir;
    }
    if !args.peers.is_empty() {
        config.initial_members = parse_peers(&args.peers)?;
    }
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(partitions) = args.partitions {
        config.store.partitions = partitions;
    }
    Ok(config)
}

/// Parses `id=host:port` pairs.
pub fn parse_peers(peers: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
    peers
        .iter()
        .filter(|peer| !peer.is_empty())
        .map(|peer| {
            let (id, address) =
                peer.split_once('=').ok_or_else(|| anyhow::anyhow!("peer {peer:?} is not id=host:port"))?;
            let id: u64 = id.parse().map_err(|_| anyhow::anyhow!("peer {peer:?}: {id:?} is not a node id"))?;
            Ok((id, address.to_owned()))
        })
        .collect()
}
