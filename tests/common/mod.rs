//! A region of real `fjord server` processes — on loopback, or each on a host of its own ([`hosts`]) — for
//! the integration tests: start, kill with SIGKILL, restart from their data, and talk to them with real
//! gRPC clients. Addresses, each node's command line, spawning and waiting for leaders are the workspace's
//! one launcher ([`fjord_bench::launcher`], shared with the bench); hosts, lazy disks, kills, pauses and
//! restarts are ours.

pub(crate) mod clients;
pub(crate) mod containers;
pub(crate) mod history;
pub(crate) mod hosts;
pub(crate) mod lazyfs;
pub(crate) mod nemesis;
pub(crate) mod netns;
pub(crate) mod sql;
pub(crate) mod workload;

use std::collections::BTreeMap;
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use fjord_bench::launcher;
use fjord_bench::launcher::NodeAddresses;
use fjord_bench::launcher::NodeChannel;
use fjord_bench::launcher::NodeSpec;
use fjord_bench::launcher::RegionSpec;
use fjord_bench::launcher::free_addresses;
use fjord_proto::auth::BearerToken;
use fjord_proto::v1;
use fjord_proto::v1::cluster_client::ClusterClient;
use fjord_proto::v1::event_store_client::EventStoreClient;

pub(crate) use fjord_bench::launcher::channel;
pub(crate) use fjord_bench::launcher::free_ports;

/// An `EventStore` client of a test region, presenting its admin token.
pub(crate) type StoreClient = EventStoreClient<NodeChannel>;

/// The fault tests (`faults`, `planted_bugs`, `power_loss`) and the overload test take turns: each drives a
/// region hard (power losses, planted bugs, a seeded schedule of faults, thousands of streams), and two at
/// once would starve each other on a small machine. (As separate test binaries they never overlapped; in one binary the lock keeps it so.)
pub(crate) static FAULT_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One node process and how to restart it.
pub(crate) struct TestNode {
    pub(crate) id: u64,
    /// Its public API.
    pub(crate) address: String,
    /// Its node-to-node plane (what membership changes name).
    pub(crate) internal_address: String,
    /// Its Postgres wire protocol endpoint.
    pub(crate) postgres_address: String,
    /// The region's admin token.
    pub(crate) token: BearerToken,
    /// Its `fjord server` command line.
    spec: NodeSpec,
    /// Extra environment (a planted bug, say).
    env: Vec<(String, String)>,
    /// The region's hosts, when the node runs on a host of its own.
    network: Option<Arc<hosts::Hosts>>,
    child: Option<Child>,
}

impl TestNode {
    fn new(
        spec: NodeSpec,
        token: BearerToken,
        env: Vec<(String, String)>,
        network: Option<Arc<hosts::Hosts>>,
    ) -> TestNode {
        let (id, address, internal_address) = (spec.id, spec.address.clone(), spec.internal_address.clone());
        let postgres_address = spec.postgres_address.clone();
        TestNode { id, address, internal_address, postgres_address, token, spec, env, network, child: None }
    }

    /// Where the node keeps its data.
    pub(crate) fn data_dir(&self) -> &std::path::Path {
        &self.spec.data_dir
    }

    /// Starts the node, on its host if it has one; its log (appended to, so it keeps every run of the node
    /// across restarts) is beside its data dir.
    fn spawn(&mut self) {
        let mut env = self.env.clone();
        if !env.iter().any(|(key, _)| key == "FJORD_LOG") {
            env.push(("FJORD_LOG".to_owned(), "warn".to_owned()));
        }
        let (spec, network) = (&self.spec, &self.network);
        let command = || match network {
            Some(network) => {
                let launch = hosts::Launch { program: fjord_program(), args: spec.args(), env, paths: spec.paths() };
                network.command(spec.id, &launch)
            }
            None => spec.command(fjord_program(), &env),
        };
        self.child = Some(spec.spawn(command).unwrap());
    }

    /// SIGKILL: no shutdown, no flush.
    pub(crate) fn kill(&mut self) {
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
    pub(crate) fn signal_pause(&self, pause: bool) {
        let child = self.child.as_ref().expect("the node is not running");
        match &self.network {
            Some(hosts) => hosts.pause(self.id, child, pause),
            None => hosts::pause_process(child, pause),
        }
    }

    /// Starts the node again from its data.
    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        self.spawn();
    }

    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// What the node has logged (every run of it).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.spec.log_path()).unwrap_or_default()
    }

    pub(crate) async fn store(&self) -> StoreClient {
        EventStoreClient::new(channel(&self.address, &self.token).await)
    }

    pub(crate) async fn cluster(&self) -> ClusterClient<NodeChannel> {
        ClusterClient::new(channel(&self.address, &self.token).await)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `fjord` binary cargo built for these tests.
pub(crate) fn fjord_program() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_fjord"))
}

/// How a test region runs.
#[derive(Default)]
pub(crate) struct RegionOptions {
    /// Each node's data dir on a lose-unsynced-writes filesystem of its own (see [`lazyfs`]).
    pub(crate) lazy_disks: bool,
    /// Each node on a host of its own, so links between nodes can be cut (see [`hosts`]).
    pub(crate) own_hosts: bool,
    /// Extra environment for every node (a planted bug, say).
    pub(crate) env: Vec<(String, String)>,
    /// TOML added to the test config every node reads (its own sections: `[server]`, say).
    pub(crate) extra_config: String,
}

/// A region of `n` nodes with `partitions` partitions. (Fields drop in order: the nodes stop before their
/// lazy filesystems unmount and their network goes, and those before the directory goes.)
pub(crate) struct TestRegion {
    pub(crate) nodes: Vec<TestNode>,
    /// Node id → the lose-unsynced-writes filesystem its data dir is on (regions started on them).
    pub(crate) disks: BTreeMap<u64, lazyfs::LazyFs>,
    /// The nodes' hosts and the network between them (regions started on hosts of their own).
    pub(crate) network: Option<Arc<hosts::Hosts>>,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) partitions: u32,
    /// The region's admin token (every operation on every stream).
    pub(crate) token: BearerToken,
    /// What every node runs with (for nodes added later).
    spec: RegionSpec,
    /// What the corrupt-disk nemesis did to the region.
    pub(crate) corruptions: nemesis::CorruptionTally,
}

/// Raft timing for tests on a small, busy machine; snapshots, sealed segments (about 30 small events each)
/// and RocksDB's table files (memtables of 256 KiB), often enough to be exercised.
const TEST_CONFIG: &str = "[groups]\nsnapshot_every_entries = 50\nentries_kept_after_snapshot = 10\n\
                           [segments]\nsegment_bytes = 4096\n[store]\nwrite_buffer_bytes = 262144\n";

impl TestRegion {
    pub(crate) async fn start(n: u64, partitions: u32) -> TestRegion {
        Self::launch(n, partitions, &RegionOptions::default()).await
    }

    /// A region run as `options` say.
    pub(crate) async fn start_with_options(n: u64, partitions: u32, options: &RegionOptions) -> TestRegion {
        Self::launch(n, partitions, options).await
    }

    async fn launch(n: u64, partitions: u32, options: &RegionOptions) -> TestRegion {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("fjord.toml");
        std::fs::write(&config, format!("{TEST_CONFIG}{}", options.extra_config)).unwrap();
        let ids: Vec<u64> = (1..=n).collect();
        let network = options.own_hosts.then(|| Arc::new(hosts::Hosts::create(&ids, fjord_program())));
        let addresses: BTreeMap<u64, NodeAddresses> = match &network {
            Some(network) => ids
                .iter()
                .map(|id| {
                    let address = network.address(*id);
                    let public = format!("{address}:{}", hosts::NODE_PORT);
                    let (internal, postgres) = (hosts::NODE_INTERNAL_PORT, hosts::NODE_POSTGRES_PORT);
                    let (internal, postgres) = (format!("{address}:{internal}"), format!("{address}:{postgres}"));
                    (*id, NodeAddresses { public, internal, postgres })
                })
                .collect(),
            None => launcher::loopback_addresses(&ids),
        };
        let spec =
            RegionSpec { partitions, dir: dir.path().to_owned(), config: Some(config), region: "test".to_owned() };
        let token = spec.make_credentials(fjord_program(), &ids).unwrap();
        let (mut nodes, mut disks) = (Vec::new(), BTreeMap::new());
        for node in spec.nodes(&addresses) {
            if options.lazy_disks {
                let backing = dir.path().join(format!("disk-{}", node.id));
                disks.insert(node.id, lazyfs::LazyFs::mount(&backing, &node.data_dir).unwrap());
            }
            let mut node = TestNode::new(node, token.clone(), options.env.clone(), network.clone());
            node.spawn();
            nodes.push(node);
        }
        let corruptions = nemesis::CorruptionTally::default();
        let region = TestRegion { nodes, disks, network, dir, partitions, token, spec, corruptions };
        region.wait_for_leaders().await;
        region
    }

    /// Adds a node that is not in the initial membership (it starts empty and waits to be added).
    pub(crate) fn spawn_extra_node(&mut self, id: u64) -> &mut TestNode {
        self.make_node_certificate(id);
        let mut node = TestNode::new(self.spec.extra_node(id, free_addresses()), self.token.clone(), Vec::new(), None);
        node.spawn();
        self.nodes.push(node);
        self.nodes.last_mut().unwrap()
    }

    /// Power loss of every node at once: all are killed, every disk loses what was not fsynced, and all
    /// start again. Only for regions started on lazy filesystems.
    pub(crate) fn power_loss(&mut self) {
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

    /// Makes a certificate for node `id` with the region's CA (kept if there is one).
    pub(crate) fn make_node_certificate(&self, id: u64) {
        self.spec.make_credentials(fjord_program(), &[id]).unwrap();
    }

    /// The region's admin token, as its security dir holds it.
    pub(crate) fn admin_token(&self) -> String {
        std::fs::read_to_string(self.spec.security_dir().join("admin.token")).unwrap().trim().to_owned()
    }

    /// A token for `subject` with `grant` (`operations:stream-prefix`), issued by `fjord token` with the
    /// region's token key.
    pub(crate) fn issue_token(&self, subject: &str, grant: &str) -> String {
        let security = self.security_dir();
        let output = std::process::Command::new(fjord_program())
            .args(["token", "--subject", subject, "--grant", grant, "--dir"])
            .arg(&security)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// The region's security dir (made with `fjord certs`).
    pub(crate) fn security_dir(&self) -> std::path::PathBuf {
        self.spec.security_dir()
    }

    /// Every node, for a workload's clients to take turns on, with the region's admin token.
    pub(crate) fn workload_nodes(&self) -> workload::Nodes {
        workload::Nodes {
            addresses: self.nodes.iter().map(|node| node.address.clone()).collect(),
            token: self.token.clone(),
        }
    }

    pub(crate) fn node(&mut self, id: u64) -> &mut TestNode {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }

    /// The running nodes' ids and addresses.
    fn running(&self) -> Vec<(u64, &str)> {
        self.nodes.iter().filter(|n| n.is_running()).map(|n| (n.id, n.address.as_str())).collect()
    }

    /// Waits until every partition has a leader that a running node agrees on.
    pub(crate) async fn wait_for_leaders(&self) {
        if let Err(error) = launcher::wait_for_leaders(&self.running(), self.partitions, &self.token).await {
            let tails: Vec<String> = self
                .nodes
                .iter()
                .map(|node| {
                    let log = node.log();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    format!("== node {} (last lines, newest first)\n{}", node.id, tail.join("\n"))
                })
                .collect();
            panic!("{error}; see {}\n{}", self.dir.path().display(), tails.join("\n"));
        }
    }

    /// How far node `id` has got repairing, if it answers: over its partitions, the Raft index it has applied
    /// plus its snapshot install work (an install moves the applied index only when it ends).
    pub(crate) async fn repair_progress(&self, id: u64) -> Option<u64> {
        let node = self.nodes.iter().find(|n| n.id == id).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(2), async {
            node.cluster().await.status(v1::StatusRequest {}).await
        });
        let status = status.await.ok()?.ok()?.into_inner();
        Some(status.partitions.iter().map(|p| p.applied_index + p.snapshot_install_steps).sum())
    }

    /// Whether node `id` answers a status request.
    pub(crate) async fn node_answers(&self, id: u64) -> bool {
        let node = self.nodes.iter().find(|n| n.id == id).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(2), async {
            node.cluster().await.status(v1::StatusRequest {}).await
        });
        matches!(status.await, Ok(Ok(_)))
    }

    /// partition → leader, as the running nodes see it, when every partition has a leader that is running.
    pub(crate) async fn leaders(&self) -> Option<BTreeMap<u32, u64>> {
        launcher::leaders(&self.running(), self.partitions, &self.token).await
    }

    /// Reads a whole partition from one node's applied state.
    pub(crate) async fn local_partition(&self, id: u64, partition: u32) -> Vec<v1::RecordedEvent> {
        self.try_local_partition(id, partition).await.unwrap()
    }

    /// Reads a whole partition from one node's applied state, or says why it could not.
    pub(crate) async fn try_local_partition(
        &self,
        id: u64,
        partition: u32,
    ) -> Result<Vec<v1::RecordedEvent>, tonic::Status> {
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
    pub(crate) async fn assert_replicas_identical(&self) {
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
pub(crate) fn append(stream: &str, expected: Option<v1::expected_revision::Kind>, ids: &[u128]) -> v1::AppendRequest {
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
pub(crate) async fn read_stream(
    client: &mut StoreClient,
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
pub(crate) async fn stream_length(client: &mut StoreClient, stream: &str) -> Result<u64, tonic::Status> {
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
pub(crate) async fn stream_ids(client: &mut StoreClient, stream: &str) -> Vec<u128> {
    let events = read_stream(client, stream).await.unwrap();
    events.iter().map(|e| uuid::Uuid::from_slice(&e.id).unwrap().as_u128()).collect()
}

/// A lazily connecting channel to a node's public API that presents no token.
pub(crate) fn anonymous_channel(address: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{address}")).unwrap().connect_lazy()
}

/// The reason metadata of a status.
pub(crate) fn reason(status: &tonic::Status) -> String {
    status.metadata().get("fjord-reason").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}
