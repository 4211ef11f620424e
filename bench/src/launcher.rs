//! Starting a Fjord region of real `fjord server` processes: free loopback addresses, the region's
//! security dir (made with `fjord certs`, as an operator would), each node's command line (node id, public
//! and node-to-node addresses, peers, partitions, data dir, security dir, config, region), spawning it with
//! its log beside its data dir, and waiting until every partition has a leader. Clients present the
//! region's admin token.
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

use anyhow::Context;
use fjord_proto::auth::BearerToken;
use fjord_proto::v1;
use fjord_proto::v1::cluster_client::ClusterClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// How long [`wait_for_leaders`] waits for every partition to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// A channel to a node that presents a token with every request.
pub type NodeChannel = InterceptedService<Channel, BearerToken>;

/// Where a node listens: its public API, its node-to-node plane (which its peers know it by), and SQL
/// over the Postgres wire protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddresses {
    /// The public API, `host:port`.
    pub public: String,
    /// The node-to-node plane, `host:port`.
    pub internal: String,
    /// The Postgres wire protocol, `host:port`.
    pub postgres: String,
}

/// Three free loopback addresses for one node (see [`free_ports`]).
pub fn free_addresses() -> NodeAddresses {
    let first = free_ports(3);
    let address = |offset: u16| format!("127.0.0.1:{}", first + offset);
    NodeAddresses { public: address(0), internal: address(1), postgres: address(2) }
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

/// Node id → free loopback addresses (see [`free_addresses`]), for each of `ids`.
pub fn loopback_addresses(ids: &[u64]) -> BTreeMap<u64, NodeAddresses> {
    ids.iter().map(|id| (*id, free_addresses())).collect()
}

/// A lazily connecting channel to the node at `address` (`host:port`, its public API) that presents
/// `token`, gives up connecting after 500 ms and waits at most 10 s for an answer. Panics if `address` is
/// not `host:port`.
pub async fn channel(address: &str, token: &BearerToken) -> NodeChannel {
    let channel = Channel::from_shared(format!("http://{address}"))
        .expect("host:port makes a valid URI")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    InterceptedService::new(channel, token.clone())
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
    /// The region's name.
    pub region: String,
}

impl RegionSpec {
    /// The region's security dir: `security` in its directory.
    pub fn security_dir(&self) -> PathBuf {
        self.dir.join("security")
    }

    /// Makes (or completes) the region's security dir with `program certs` (the `fjord` binary), with
    /// certificates for the nodes `ids`, and returns the admin token it holds.
    pub fn make_credentials(&self, program: &Path, ids: &[u64]) -> anyhow::Result<BearerToken> {
        let security_dir = self.security_dir();
        let nodes = ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let output = Command::new(program)
            .args(["certs", "--region", &self.region, "--nodes", &nodes, "--dir"])
            .arg(&security_dir)
            .output()
            .with_context(|| format!("running {} certs", program.display()))?;
        anyhow::ensure!(output.status.success(), "fjord certs: {}", String::from_utf8_lossy(&output.stderr));
        let token = std::fs::read_to_string(security_dir.join("admin.token"))?;
        BearerToken::new(&token).map_err(|status| anyhow::anyhow!("admin.token: {}", status.message()))
    }

    /// One node per entry of `addresses` (node id → where it listens), in id order, each with every node
    /// of `addresses` as its initial peers.
    pub fn nodes(&self, addresses: &BTreeMap<u64, NodeAddresses>) -> Vec<NodeSpec> {
        let peers =
            addresses.iter().map(|(id, address)| format!("{id}={}", address.internal)).collect::<Vec<_>>().join(",");
        addresses.iter().map(|(id, address)| self.node(*id, address.clone(), peers.clone())).collect()
    }

    /// A node that is not in the initial membership (no peers: it starts empty and waits to be added).
    pub fn extra_node(&self, id: u64, addresses: NodeAddresses) -> NodeSpec {
        self.node(id, addresses, String::new())
    }

    fn node(&self, id: u64, addresses: NodeAddresses, peers: String) -> NodeSpec {
        NodeSpec {
            id,
            address: addresses.public,
            internal_address: addresses.internal,
            postgres_address: addresses.postgres,
            peers,
            partitions: self.partitions,
            data_dir: self.dir.join(format!("node-{id}")),
            security_dir: self.security_dir(),
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
    /// The address of its public API (`host:port`).
    pub address: String,
    /// The address of its node-to-node plane (`host:port`).
    pub internal_address: String,
    /// The address it serves the Postgres wire protocol on (`host:port`).
    pub postgres_address: String,
    /// The region's initial voters, `id=host:port,…` (node-to-node addresses; empty for a node added later).
    pub peers: String,
    /// Partitions.
    pub partitions: u32,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// The region's security dir.
    pub security_dir: PathBuf,
    /// The config file (TOML) it reads, if any.
    pub config: Option<PathBuf>,
    /// The region's name.
    pub region: String,
}

impl NodeSpec {
    /// `server --node-id <id> --listen <address> --internal-listen <address> --postgres-listen <address> --peers <peers>
    /// --partitions <n> --region <name> --data-dir <dir> --security-dir <dir> [--config <file>]`.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "server".into(),
            "--node-id".into(),
            self.id.to_string(),
            "--listen".into(),
            self.address.clone(),
            "--internal-listen".into(),
            self.internal_address.clone(),
            "--postgres-listen".into(),
            self.postgres_address.clone(),
            "--peers".into(),
            self.peers.clone(),
            "--partitions".into(),
            self.partitions.to_string(),
            "--region".into(),
            self.region.clone(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--security-dir".into(),
            self.security_dir.display().to_string(),
        ];
        if let Some(config) = &self.config {
            args.extend(["--config".to_owned(), config.display().to_string()]);
        }
        args
    }

    /// The paths the node reads or writes: its data dir, the security dir and its config file.
    pub fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.data_dir.as_path(), self.security_dir.as_path()];
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

/// Partition → leader, as the nodes at `nodes` (id, public address) say to the holder of `token` (an admin
/// token), when every one of `partitions` partitions has a leader among them: a node that says it leads. A
/// node that does not answer is skipped.
pub async fn leaders(nodes: &[(u64, &str)], partitions: u32, token: &BearerToken) -> Option<BTreeMap<u32, u64>> {
    let mut leaders = BTreeMap::new();
    for (id, address) in nodes {
        let mut cluster = ClusterClient::new(channel(address, token).await);
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
pub async fn wait_for_leaders(
    nodes: &[(u64, &str)],
    partitions: u32,
    token: &BearerToken,
) -> anyhow::Result<BTreeMap<u32, u64>> {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        if let Some(leaders) = leaders(nodes, partitions, token).await {
            return Ok(leaders);
        }
        anyhow::ensure!(Instant::now() < deadline, "no leaders after {} s", LEADER_WAIT.as_secs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
