//! What an append workload runs against: a Fjord region the bench starts itself, or a peer that
//! `bench/peer` started (named by its addresses and process ids). Every target takes the same append —
//! a writer's batch of events to its own stream — and acknowledges it at the durability its row states.

use std::path::PathBuf;

use crate::fjord_region::FjordRegion;
use crate::peers::etcd::Etcd;
use crate::peers::nats::Nats;
use crate::peers::redis::Redis;

/// The systems a workload can run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum System {
    /// A Fjord region of real `fjord server` processes, started by the bench.
    Fjord,
    /// NATS JetStream, R3 file stream, `sync_interval: always` (`bench/peer start nats`).
    Nats,
    /// NATS JetStream, R3 file stream, default lazy fsync (`bench/peer start nats-lazy`).
    NatsLazy,
    /// etcd 3.4, 3 members (`bench/peer start etcd`).
    Etcd,
    /// Redis 7 streams, AOF `appendfsync always` (`bench/peer start redis`).
    Redis,
}

impl System {
    /// What an acknowledgement means for this system, as each results row states it.
    pub(crate) fn durability(self, nodes: u64) -> String {
        match self {
            System::Fjord if nodes == 1 => "fsync before ack (1 node)".to_owned(),
            System::Fjord => format!("fsync on a majority of {nodes} before ack"),
            System::Nats => "fsync on a majority of 3 before ack (sync_interval: always)".to_owned(),
            System::NatsLazy => "page cache of a majority of 3; fsync every 2 min".to_owned(),
            System::Etcd => "fsync on a majority of 3 before ack".to_owned(),
            System::Redis => "fsync before ack (1 node, appendfsync always)".to_owned(),
        }
    }
}

/// Which system to drive, and where it is.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TargetArgs {
    /// The system to measure.
    #[arg(long, value_enum, default_value = "fjord")]
    pub(crate) system: System,
    /// Fjord: the `fjord` binary (a release build).
    #[arg(long, default_value = "target/release/fjord")]
    pub(crate) fjord: PathBuf,
    /// Fjord: a node config file (TOML) every node also reads, e.g. to try `[groups]` settings.
    #[arg(long)]
    pub(crate) fjord_config: Option<PathBuf>,
    /// Fjord: nodes in the region.
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: u64,
    /// Fjord: directory for the nodes' data (a fresh temporary directory inside it per measurement).
    #[arg(long, default_value = ".")]
    pub(crate) dir: PathBuf,
    /// Peers: the client addresses `bench/peer start` printed, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) addresses: Vec<String>,
    /// Peers: the server process ids `bench/peer start` printed, for CPU accounting.
    #[arg(long, value_delimiter = ',')]
    pub(crate) pids: Vec<u32>,
}

/// A connected target.
pub(crate) enum Target {
    /// A Fjord region (owned: stopped when dropped).
    Fjord(FjordRegion),
    /// NATS JetStream.
    Nats(Nats),
    /// etcd.
    Etcd(Etcd),
    /// Redis.
    Redis(Redis),
}

impl Target {
    /// Starts (Fjord, with `partitions`) or connects to (peers) the target.
    pub(crate) async fn open(args: &TargetArgs, partitions: u32) -> anyhow::Result<Target> {
        let addresses = || {
            anyhow::ensure!(!args.addresses.is_empty(), "--addresses is required for {:?}", args.system);
            Ok(args.addresses.clone())
        };
        Ok(match args.system {
            System::Fjord => Target::Fjord(FjordRegion::start(args, partitions).await?),
            System::Nats | System::NatsLazy => Target::Nats(Nats::connect(&addresses()?).await?),
            System::Etcd => Target::Etcd(Etcd::connect(&addresses()?).await?),
            System::Redis => Target::Redis(Redis::connect(&addresses()?).await?),
        })
    }

    /// Appends `events` as one batch to `writer`'s stream; resolves when the target acknowledges it.
    pub(crate) async fn append(&self, writer: usize, events: &[Vec<u8>]) -> anyhow::Result<()> {
        match self {
            Target::Fjord(region) => region.append(writer, events).await,
            Target::Nats(nats) => nats.append(writer, events).await,
            Target::Etcd(etcd) => etcd.append(writer, events).await,
            Target::Redis(redis) => redis.append(writer, events).await,
        }
    }

    /// The server processes taking part (for CPU accounting).
    pub(crate) fn server_pids(&self, args: &TargetArgs) -> Vec<u32> {
        match self {
            Target::Fjord(region) => region.pids(),
            _ => args.pids.clone(),
        }
    }

    /// Fsyncs made so far by each node, when the target reports them (Fjord does).
    pub(crate) async fn fsyncs_per_node(&self) -> Option<Vec<u64>> {
        match self {
            Target::Fjord(region) => region.wal_syncs().await.ok(),
            _ => None,
        }
    }
}
