//! A region of real `fjord server` processes — on loopback, or each on a host of its own ([`hosts`]) — for
//! the integration tests: start, kill with SIGKILL, restart from their data, and talk to them with real
//! gRPC clients.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

pub mod containers;
pub mod history;
pub mod hosts;
pub mod lazyfs;
pub mod nemesis;
pub mod netns;
pub mod workload;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use fjord_proto::v1;
use fjord_proto::v1::cluster_client::ClusterClient;
use fjord_proto::v1::event_store_client::EventStoreClient;
use tonic::transport::Channel;

/// One node process and how to restart it.
pub struct TestNode {
    pub id: u64,
    pub address: String,
    pub data_dir: PathBuf,
    peers: String,
    partitions: u32,
    config: PathBuf,
    /// Extra environment (a planted bug, say).
    env: Vec<(String, String)>,
    /// The region's hosts, when the node runs on a host of its own.
    network: Option<Arc<hosts::Hosts>>,
    child: Option<Child>,
}

impl TestNode {
    fn spawn(&mut self) {
        // Appended to, so a node's log keeps every run of it across restarts.
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.data_dir.with_extension("log")).unwrap();
        let mut env = self.env.clone();
        if !env.iter().any(|(key, _)| key == "FJORD_LOG") {
            env.push(("FJORD_LOG".to_owned(), "warn".to_owned()));
        }
        // A container mounts the data dir, which must be there first.
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let launch = hosts::Launch {
            program: fjord_program(),
            args: [
                ["server", "--node-id", &self.id.to_string(), "--listen", &self.address].as_slice(),
                &["--peers", &self.peers, "--partitions", &self.partitions.to_string(), "--region", "test"],
                &["--data-dir", &self.data_dir.display().to_string()],
                &["--config", &self.config.display().to_string()],
            ]
            .concat()
            .into_iter()
            .map(str::to_owned)
            .collect(),
            env,
            paths: vec![&self.data_dir, &self.config],
        };
        let mut command = match &self.network {
            Some(hosts) => hosts.command(self.id, &launch),
            None => launch.with_args_and_env(Command::new(launch.program)),
        };
        let child = command.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            match &self.network {
                Some(hosts) => hosts.kill(self.id, &mut child),
                None => hosts::kill_process(&mut child),
            }
        }
    }

    /// Pauses the node (`pause: true`) or lets it go on: SIGSTOP and SIGCONT, or a container's freezer. It
    /// keeps its state and sockets but does nothing, as a node stalled by a long GC pause, a hung disk or
    /// an overloaded host does.
    pub fn signal_pause(&self, pause: bool) {
        let child = self.child.as_ref().expect("the node is not running");
        match &self.network {
            Some(hosts) => hosts.pause(self.id, child, pause),
            None => hosts::pause_process(child, pause),
        }
    }

    /// Starts the node again from its data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub async fn store(&self) -> EventStoreClient<Channel> {
        EventStoreClient::new(channel(&self.address).await)
    }

    pub async fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(channel(&self.address).await)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `fjord` binary cargo built for these tests.
pub fn fjord_program() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_fjord"))
}

pub async fn channel(address: &str) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// A free loopback address (see [`free_ports`]).
pub fn free_address() -> String {
    format!("127.0.0.1:{}", free_ports(1))
}

/// The first of `count` consecutive loopback ports that are free now. They are taken below the kernel's
/// ephemeral range (32768 and up), so no outgoing connection can grab one between this check and the
/// server's bind; each test process walks its own sequence, so concurrent test binaries do not collide.
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

/// How a test region runs.
#[derive(Default)]
pub struct RegionOptions {
    /// Each node's data dir on a lose-unsynced-writes filesystem of its own (see [`lazyfs`]).
    pub lazy_disks: bool,
    /// Each node on a host of its own, so links between nodes can be cut (see [`hosts`]).
    pub own_hosts: bool,
    /// Extra environment for every node (a planted bug, say).
    pub env: Vec<(String, String)>,
}

/// A region of `n` nodes with `partitions` partitions. (Fields drop in order: the nodes stop before their
/// lazy filesystems unmount and their network goes, and those before the directory goes.)
pub struct TestRegion {
    pub nodes: Vec<TestNode>,
    /// Node id → the lose-unsynced-writes filesystem its data dir is on (regions started on them).
    pub disks: BTreeMap<u64, lazyfs::LazyFs>,
    /// The nodes' hosts and the network between them (regions started on hosts of their own).
    pub network: Option<Arc<hosts::Hosts>>,
    pub dir: tempfile::TempDir,
    pub partitions: u32,
    config: PathBuf,
}

/// Raft timing for tests on a small, busy machine, and snapshots often enough to be exercised.
const TEST_CONFIG: &str = "[groups]\nsnapshot_every_entries = 50\nentries_kept_after_snapshot = 10\n";

impl TestRegion {
    pub async fn start(n: u64, partitions: u32) -> TestRegion {
        Self::start_with(n, partitions, TEST_CONFIG).await
    }

    /// A region whose nodes read `config` (TOML) as their config file.
    pub async fn start_with(n: u64, partitions: u32, config: &str) -> TestRegion {
        Self::launch(n, partitions, config, &RegionOptions::default()).await
    }

    /// A region run as `options` say.
    pub async fn start_with_options(n: u64, partitions: u32, options: &RegionOptions) -> TestRegion {
        Self::launch(n, partitions, TEST_CONFIG, options).await
    }

    async fn launch(n: u64, partitions: u32, config: &str, options: &RegionOptions) -> TestRegion {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("fjord.toml");
        std::fs::write(&config_path, config).unwrap();
        let ids: Vec<u64> = (1..=n).collect();
        let network = options.own_hosts.then(|| Arc::new(hosts::Hosts::create(&ids, fjord_program())));
        let addresses: BTreeMap<u64, String> = match &network {
            Some(network) => {
                ids.iter().map(|id| (*id, format!("{}:{}", network.address(*id), hosts::NODE_PORT))).collect()
            }
            None => ids.iter().map(|id| (*id, free_address())).collect(),
        };
        let peers = addresses.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",");
        let (mut nodes, mut disks) = (Vec::new(), BTreeMap::new());
        for (id, address) in addresses {
            let data_dir = dir.path().join(format!("node-{id}"));
            if options.lazy_disks {
                let backing = dir.path().join(format!("disk-{id}"));
                disks.insert(id, lazyfs::LazyFs::mount(&backing, &data_dir).unwrap());
            }
            let mut node = TestNode {
                id,
                address,
                data_dir,
                peers: peers.clone(),
                partitions,
                config: config_path.clone(),
                env: options.env.clone(),
                network: network.clone(),
                child: None,
            };
            node.spawn();
            nodes.push(node);
        }
        let region = TestRegion { nodes, disks, network, dir, partitions, config: config_path };
        region.wait_for_leaders().await;
        region
    }

    /// Adds a node that is not in the initial membership (it starts empty and waits to be added).
    pub fn spawn_extra_node(&mut self, id: u64) -> &mut TestNode {
        let mut node = TestNode {
            id,
            address: free_address(),
            data_dir: self.dir.path().join(format!("node-{id}")),
            peers: String::new(),
            partitions: self.partitions,
            config: self.config.clone(),
            env: Vec::new(),
            network: None,
            child: None,
        };
        node.spawn();
        self.nodes.push(node);
        self.nodes.last_mut().unwrap()
    }

    /// Power loss of every node at once: all are killed, every disk loses what was not fsynced, and all
    /// start again. Only for regions started on lazy filesystems.
    pub fn power_loss(&mut self) {
        assert!(!self.disks.is_empty(), "a power loss needs a region on lazy filesystems");
        if let Some(hosts) = &self.network {
            hosts.kill_all();
        }
        for node in &mut self.nodes {
            node.kill();
        }
        for disk in self.disks.values() {
            disk.lose_unsynced_writes().unwrap();
        }
        for node in &mut self.nodes {
            node.restart();
        }
    }

    pub fn node(&mut self, id: u64) -> &mut TestNode {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }

    /// Waits until every partition has a leader that a running node agrees on.
    pub async fn wait_for_leaders(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(leaders) = self.leaders().await
                && leaders.len() == self.partitions as usize
            {
                return;
            }
            assert!(Instant::now() < deadline, "no leaders after 30 s; see {}", self.dir.path().display());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// partition → leader, as the running nodes see it, when every partition has a leader that is running.
    pub async fn leaders(&self) -> Option<BTreeMap<u32, u64>> {
        let running: Vec<&TestNode> = self.nodes.iter().filter(|n| n.is_running()).collect();
        let mut leaders = BTreeMap::new();
        for node in &running {
            let Ok(status) = node.cluster().await.status(v1::StatusRequest {}).await else { continue };
            for p in status.into_inner().partitions {
                if p.role == "leader" {
                    leaders.insert(p.partition, node.id);
                }
            }
        }
        (leaders.len() == self.partitions as usize).then_some(leaders)
    }

    /// Reads a whole partition from one node's applied state.
    pub async fn local_partition(&self, id: u64, partition: u32) -> Vec<v1::RecordedEvent> {
        self.try_local_partition(id, partition).await.unwrap()
    }

    /// Reads a whole partition from one node's applied state, or says why it could not.
    pub async fn try_local_partition(&self, id: u64, partition: u32) -> Result<Vec<v1::RecordedEvent>, tonic::Status> {
        let node = self.nodes.iter().find(|n| n.id == id).unwrap();
        let request = v1::ReadPartitionRequest {
            partition,
            from_offset: 0,
            limit: 0,
            consistency: v1::ReadConsistency::Local as i32,
        };
        let mut pages = node.store().await.read_partition(request).await?.into_inner();
        let mut events = Vec::new();
        while let Some(page) = pages.message().await? {
            events.extend(page.events);
        }
        Ok(events)
    }

    /// Waits until every running node has applied the same number of events in every partition, then
    /// checks they are byte-identical.
    pub async fn assert_replicas_identical(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ids: Vec<u64> = self.nodes.iter().filter(|n| n.is_running()).map(|n| n.id).collect();
        for partition in 0..self.partitions {
            loop {
                let mut copies = Vec::new();
                for &id in &ids {
                    copies.push(self.local_partition(id, partition).await);
                }
                if copies.windows(2).all(|w| w[0] == w[1]) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "partition {partition} differs between nodes: lengths {:?}",
                    copies.iter().map(Vec::len).collect::<Vec<_>>()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// An append of events with the given ids (as u128) to a stream.
pub fn append(stream: &str, expected: Option<v1::expected_revision::Kind>, ids: &[u128]) -> v1::AppendRequest {
    v1::AppendRequest {
        stream: stream.to_owned(),
        expected: expected.map(|kind| v1::ExpectedRevision { kind: Some(kind) }),
        events: ids
            .iter()
            .map(|id| v1::ProposedEvent {
                id: uuid::Uuid::from_u128(*id).as_bytes().to_vec(),
                r#type: "Tested".to_owned(),
                content_type: String::new(),
                data: format!("{{\"id\":{id}}}").into_bytes(),
                metadata: Default::default(),
            })
            .collect(),
    }
}

/// Reads a whole stream, linearizably, through the given node.
pub async fn read_stream(
    client: &mut EventStoreClient<Channel>,
    stream: &str,
) -> Result<Vec<v1::RecordedEvent>, tonic::Status> {
    let request = v1::ReadStreamRequest { stream: stream.to_owned(), ..Default::default() };
    let mut pages = client.read_stream(request).await?.into_inner();
    let mut events = Vec::new();
    while let Some(page) = pages.message().await? {
        events.extend(page.events);
    }
    Ok(events)
}

/// How many events a stream holds, read linearizably through the given node: one page, backward from the
/// end (its last event's revision + 1), however long the stream has grown.
pub async fn stream_length(client: &mut EventStoreClient<Channel>, stream: &str) -> Result<u64, tonic::Status> {
    let request = v1::ReadStreamRequest {
        stream: stream.to_owned(),
        from_revision: u64::MAX,
        backward: true,
        limit: 1,
        consistency: v1::ReadConsistency::Linearizable as i32,
    };
    let mut pages = client.read_stream(request).await?.into_inner();
    let mut last = None;
    while let Some(page) = pages.message().await? {
        last = last.or(page.events.into_iter().next());
    }
    Ok(last.map_or(0, |event| event.position.expect("a recorded event has a position").revision + 1))
}

/// The ids (as u128) of a whole stream's events, read linearizably through the given node.
pub async fn stream_ids(client: &mut EventStoreClient<Channel>, stream: &str) -> Vec<u128> {
    let events = read_stream(client, stream).await.unwrap();
    events.iter().map(|e| uuid::Uuid::from_slice(&e.id).unwrap().as_u128()).collect()
}

/// The reason metadata of a status.
pub fn reason(status: &tonic::Status) -> String {
    status.metadata().get("fjord-reason").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}
