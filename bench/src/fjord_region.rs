//! A Fjord region of real `fjord server` processes on loopback, started by the bench for one measurement
//! (with the workspace's one launcher, [`fjord_bench::launcher`]) and killed when dropped. Writers reach it
//! as any client does: writer `w` keeps one connection to node `w mod n`, which forwards to the partition's
//! leader when it does not lead the writer's stream.

use std::process::Child;

use anyhow::Context;
use fjord_bench::launcher;
use fjord_bench::launcher::NodeChannel;
use fjord_bench::launcher::RegionSpec;
use fjord_proto::v1;
use fjord_proto::v1::cluster_client::ClusterClient;
use fjord_proto::v1::event_store_client::EventStoreClient;
use tempfile::TempDir;

use crate::target::TargetArgs;

/// A running region; its processes are killed and its data removed when dropped.
pub(crate) struct FjordRegion {
    children: Vec<Child>,
    channels: Vec<NodeChannel>,
    /// The nodes' public addresses and the admin token, for `fjord-client`.
    addresses: Vec<String>,
    token: String,
    /// The nodes' Postgres wire protocol addresses.
    postgres_addresses: Vec<String>,
    /// The nodes' data, removed when the region is dropped (after its processes are killed).
    _data: TempDir,
}

impl Drop for FjordRegion {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl FjordRegion {
    /// Starts the region `args` describe with `partitions` partitions, data in a fresh directory under
    /// `args.dir`, and waits until every partition has a leader.
    pub(crate) async fn start(args: &TargetArgs, partitions: u32) -> anyhow::Result<Self> {
        let data = tempfile::tempdir_in(&args.dir)?;
        let ids: Vec<u64> = (1..=args.nodes).collect();
        let spec = RegionSpec {
            partitions,
            dir: data.path().to_owned(),
            config: args.fjord_config.clone(),
            region: "bench".to_owned(),
        };
        let token = spec.make_credentials(&args.fjord, &ids)?;
        let nodes = spec.nodes(&launcher::loopback_addresses(&ids));
        let env = [("FJORD_LOG".to_owned(), "error".to_owned())];
        let addresses = nodes.iter().map(|node| node.address.clone()).collect();
        let postgres_addresses = nodes.iter().map(|node| node.postgres_address.clone()).collect();
        let admin_token = std::fs::read_to_string(spec.security_dir().join("admin.token"))?.trim().to_owned();
        let mut region = FjordRegion {
            children: Vec::new(),
            channels: Vec::new(),
            addresses,
            token: admin_token,
            postgres_addresses,
            _data: data,
        };
        for node in &nodes {
            let child = node
                .spawn(|| node.command(&args.fjord, &env))
                .with_context(|| format!("starting {}", args.fjord.display()))?;
            region.children.push(child);
            region.channels.push(launcher::channel(&node.address, &token).await);
        }
        let addresses: Vec<(u64, &str)> = nodes.iter().map(|node| (node.id, node.address.as_str())).collect();
        launcher::wait_for_leaders(&addresses, partitions, &token).await.context("the region elected no leaders")?;
        Ok(region)
    }

    /// Appends `events` to stream `bench-<writer>` through node `writer mod n`.
    pub(crate) async fn append(&self, writer: usize, events: &[Vec<u8>]) -> anyhow::Result<()> {
        let mut client = self.store(writer);
        let request = v1::AppendRequest {
            stream: format!("bench-{writer}"),
            expected: None,
            events: events
                .iter()
                .map(|data| v1::ProposedEvent {
                    id: uuid::Uuid::now_v7().as_bytes().to_vec(),
                    r#type: "Measured".to_owned(),
                    content_type: String::new(),
                    data: data.clone(),
                    metadata: Default::default(),
                })
                .collect(),
        };
        client.append(request).await?;
        Ok(())
    }

    /// A `fjord-client` of the region that tries node `first` first.
    pub(crate) fn client(&self, first: usize) -> anyhow::Result<fjord_client::Client> {
        let mut addresses = self.addresses.clone();
        let turn = first % addresses.len().max(1);
        addresses.rotate_left(turn);
        Ok(fjord_client::Client::new(addresses, Some(&self.token))?)
    }

    /// A raw `EventStore` client of node `node mod n`.
    pub(crate) fn store(&self, node: usize) -> EventStoreClient<NodeChannel> {
        EventStoreClient::new(self.channels[node % self.channels.len()].clone())
    }

    /// Node `node mod n`'s public address (gRPC, Flight SQL).
    pub(crate) fn address(&self, node: usize) -> &str {
        &self.addresses[node % self.addresses.len()]
    }

    /// Node `node mod n`'s Postgres wire protocol address.
    pub(crate) fn postgres_address(&self, node: usize) -> &str {
        &self.postgres_addresses[node % self.postgres_addresses.len()]
    }

    /// The region's admin token.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The server processes.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Each node's write-ahead-log syncs since it started.
    pub(crate) async fn wal_syncs(&self) -> anyhow::Result<Vec<u64>> {
        let mut syncs = Vec::new();
        for channel in &self.channels {
            syncs.push(ClusterClient::new(channel.clone()).status(v1::StatusRequest {}).await?.into_inner().wal_syncs);
        }
        Ok(syncs)
    }
}
