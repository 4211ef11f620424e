//! A Fjord region of real `fjord server` processes on loopback, started by the bench for one measurement
//! and killed when dropped. Writers reach it as any client does: writer `w` keeps one connection to node
//! `w mod n`, which forwards to the partition's leader when it does not lead the writer's stream.

use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use fjord_proto::v1;
use fjord_proto::v1::cluster_client::ClusterClient;
use fjord_proto::v1::event_store_client::EventStoreClient;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::target::TargetArgs;

/// A running region; its processes are killed and its data removed when dropped.
pub(crate) struct FjordRegion {
    children: Vec<Child>,
    channels: Vec<Channel>,
    data: TempDir,
}

impl Drop for FjordRegion {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_address() -> anyhow::Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

impl FjordRegion {
    /// Starts the region `args` describe with `partitions` partitions, data in a fresh directory under
    /// `args.dir`, and waits until every partition has a leader.
    pub(crate) async fn start(args: &TargetArgs, partitions: u32) -> anyhow::Result<Self> {
        let (fjord, nodes) = (&args.fjord, args.nodes);
        let data = tempfile::tempdir_in(&args.dir)?;
        let addresses = (0..nodes).map(|_| free_address()).collect::<anyhow::Result<Vec<_>>>()?;
        let peers = addresses.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
        let mut region = FjordRegion { children: Vec::new(), channels: Vec::new(), data };
        for (i, address) in addresses.iter().enumerate() {
            let mut command = Command::new(fjord);
            if let Some(config) = &args.fjord_config {
                command.arg("--config").arg(config);
            }
            let child = command
                .args(["server", "--node-id", &(i + 1).to_string(), "--listen", address, "--peers", &peers])
                .args(["--partitions", &partitions.to_string()])
                .arg("--data-dir")
                .arg(region.data.path().join(format!("node-{}", i + 1)))
                .env("FJORD_LOG", "error")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(region.data.path().join(format!("node-{}.log", i + 1)))?)
                .spawn()
                .with_context(|| format!("starting {}", fjord.display()))?;
            region.children.push(child);
            region.channels.push(Channel::from_shared(format!("http://{address}"))?.connect_lazy());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while region.leaders().await.unwrap_or(0) < partitions as usize {
            anyhow::ensure!(Instant::now() < deadline, "the region elected no leaders in 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(region)
    }

    async fn leaders(&self) -> anyhow::Result<usize> {
        let status = ClusterClient::new(self.channels[0].clone()).status(v1::StatusRequest {}).await?.into_inner();
        Ok(status.partitions.iter().filter(|p| p.leader != 0).count())
    }

    /// Appends `events` to stream `bench-<writer>` through node `writer mod n`.
    pub(crate) async fn append(&self, writer: usize, events: &[Vec<u8>]) -> anyhow::Result<()> {
        let mut client = EventStoreClient::new(self.channels[writer % self.channels.len()].clone());
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
