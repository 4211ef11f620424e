//! Starting a Fjord region of real `fjord server` processes: free loopback addresses, each node's command
//! line (node id, listen address, peers, partitions, data dir, config, region), spawning it with its log
//! beside its data dir, and waiting until every partition has a leader.
//!
//! The one launcher of the workspace: the bench starts a region per measurement with it
//! (`fjord_region.rs`), and the integration tests (`tests/common`) start theirs with it too, adding on top
//! what only they need: hosts of their own, lazy disks, kills, pauses and restarts. It never owns the
//! processes it starts: the caller keeps each [`Child`] and decides how to stop it.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use fjord_proto::v1;
use fjord_proto::v1::cluster_client::ClusterClient;
use tonic::transport::Channel;

/// How long [`wait_for_leaders`] waits for every partition to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// A free loopback address (see [`free_ports`]).
pub fn free_address() -> String {
    format!("127.0.0.1:{}", free_ports(1))
}

/// The first of `count` consecutive loopback ports that are free now. They are taken below the kernel's
/// ephemeral range (32768 and up), so no outgoing connection can grab one between this check and the
/// server's bind; each process walks its own sequence, so concurrent processes do not collide, and the
/// regions one process starts (tests running side by side) take turns along it.
pub fn free_ports(count: u16) -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let step = NEXT.fetch_add(u64::from(count), Ordering::Relaxed);
        let first = 10_000 + ((u64::from(std::process::id()) * 7919 + step) % 22_000) as u16;
        if (0..count).all(|i| TcpListener::bind(("127.0.0.1", first + i)).is_ok()) {
            return first;
        }
    }
}

/// Node id → a free loopback address (see [`free_address`]), for each of `ids`.
pub fn loopback_addresses(ids: &[u64]) -> BTreeMap<u64, String> {
    ids.iter().map(|id| (*id, free_address())).collect()
}

/// A lazily connecting channel to the node at `address` (`host:port`), that gives up connecting after
/// 500 ms and waits at most 10 s for an answer. Panics if `address` is not `host:port`.
pub async fn channel(address: &str) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .expect("host:port makes a valid URI")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// What every node of a region runs with.
#[derive(Debug, Clone)]
pub struct RegionSpec {
    /// Partitions (fixed when a node's data dir is created).
    pub partitions: u32,
    /// The region's directory: node `id` keeps its data in `node-<id>` and its log in `node-<id>.log`.
    pub dir: PathBuf,
    /// The config file (TOML) every node reads, if any.
    pub config: Option<PathBuf>,
    /// The region's name (`--region`), if not the nodes' default.
    pub region: Option<String>,
}

impl RegionSpec {
    /// One node per entry of `addresses` (node id → the address it listens on), in id order, each with
    /// every node of `addresses` as its initial peers.
    pub fn nodes(&self, addresses: &BTreeMap<u64, String>) -> Vec<NodeSpec> {
        let peers = addresses.iter().map(|(id, address)| format!("{id}={address}")).collect::<Vec<_>>().join(",");
        addresses.iter().map(|(id, address)| self.node(*id, address.clone(), peers.clone())).collect()
    }

    /// A node that is not in the initial membership (no peers: it starts empty and waits to be added).
    pub fn extra_node(&self, id: u64, address: String) -> NodeSpec {
        self.node(id, address, String::new())
    }

    fn node(&self, id: u64, address: String, peers: String) -> NodeSpec {
        NodeSpec {
            id,
            address,
            peers,
            partitions: self.partitions,
            data_dir: self.dir.join(format!("node-{id}")),
            config: self.config.clone(),
            region: self.region.clone(),
        }
    }
}

/// One node: what its `fjord server` command line says.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Its id in the region.
    pub id: u64,
    /// The address it listens on (`host:port`).
    pub address: String,
    /// The region's initial voters, `id=host:port,…` (empty for a node added later).
    pub peers: String,
    /// Partitions.
    pub partitions: u32,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// The config file (TOML) it reads, if any.
    pub config: Option<PathBuf>,
    /// The region's name, if not the default.
    pub region: Option<String>,
}

impl NodeSpec {
    /// `server --node-id <id> --listen <address> --peers <peers> --partitions <n> [--region <name>]
    /// --data-dir <dir> [--config <file>]`.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "server".into(),
            "--node-id".into(),
            self.id.to_string(),
            "--listen".into(),
            self.address.clone(),
            "--peers".into(),
            self.peers.clone(),
            "--partitions".into(),
            self.partitions.to_string(),
        ];
        if let Some(region) = &self.region {
            args.extend(["--region".to_owned(), region.clone()]);
        }
        args.extend(["--data-dir".to_owned(), self.data_dir.display().to_string()]);
        if let Some(config) = &self.config {
            args.extend(["--config".to_owned(), config.display().to_string()]);
        }
        args
    }

    /// The paths the node reads or writes: its data dir and its config file.
    pub fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.data_dir.as_path()];
        paths.extend(self.config.as_deref());
        paths
    }

    /// The node's log (its stderr): `<data dir>.log`, beside the data dir, appended to by every run.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }

    /// `program` run as this node, as a process of this machine, with `env` besides what it inherits.
    pub fn command(&self, program: &Path, env: &[(String, String)]) -> Command {
        let mut command = Command::new(program);
        command.args(self.args()).envs(env.iter().map(|(key, value)| (key, value)));
        command
    }

    /// Starts the node: creates its data dir (a container mounts it, so it is there before the command is
    /// made), then spawns the command `make` returns — [`Self::command`], or the same on a host of its own —
    /// with stdout discarded and stderr appended to [`Self::log_path`].
    pub fn spawn(&self, make: impl FnOnce() -> Command) -> std::io::Result<Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        std::fs::create_dir_all(&self.data_dir)?;
        make().stdout(Stdio::null()).stderr(log).spawn()
    }
}

/// Partition → leader, as the nodes at `nodes` (id, address) say, when every one of `partitions`
/// partitions has a leader among them: a node that says it leads. A node that does not answer is skipped.
pub async fn leaders(nodes: &[(u64, &str)], partitions: u32) -> Option<BTreeMap<u32, u64>> {
    let mut leaders = BTreeMap::new();
    for (id, address) in nodes {
        let mut cluster = ClusterClient::new(channel(address).await);
        let Ok(status) = cluster.status(v1::StatusRequest {}).await else { continue };
        for partition in status.into_inner().partitions {
            if partition.role == "leader" {
                leaders.insert(partition.partition, *id);
            }
        }
    }
    (leaders.len() == partitions as usize).then_some(leaders)
}

/// Waits until every one of `partitions` partitions has a leader among `nodes` (see [`leaders`]),
/// asking every 200 ms; an error after 30 s.
pub async fn wait_for_leaders(nodes: &[(u64, &str)], partitions: u32) -> anyhow::Result<BTreeMap<u32, u64>> {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        if let Some(leaders) = leaders(nodes, partitions).await {
            return Ok(leaders);
        }
        anyhow::ensure!(Instant::now() < deadline, "no leaders after {} s", LEADER_WAIT.as_secs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
