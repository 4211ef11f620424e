//! Durable appends to a region of real `fjord server` processes on loopback (1 or 3 nodes), through the
//! public gRPC API, closed loop: each writer keeps one append in flight, sent to the nodes in turn (a node
//! that does not lead the partition forwards, as it would for any client).

use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use fjord_proto::v1;
use fjord_proto::v1::cluster_client::ClusterClient;
use fjord_proto::v1::event_store_client::EventStoreClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::summary::Latency;
use crate::summary::closed_loop;
use crate::summary::histogram;
use crate::summary::sweep;

/// Flags of `fjord-bench region-append`.
#[derive(Debug, clap::Args)]
pub(crate) struct RegionAppendArgs {
    /// The `fjord` binary to run (build it with `cargo build --release --bin fjord`).
    #[arg(long)]
    fjord: PathBuf,
    /// Nodes in the region.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Concurrent writers to sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    writers: Vec<usize>,
    /// Partitions.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 256)]
    event_size: usize,
    /// Seconds to measure each writer count (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Directory for the nodes' data (a fresh temporary directory inside it per run).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Print one JSON line per writer count.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct RegionAppendResult {
    workload: &'static str,
    nodes: u64,
    writers: usize,
    partitions: u32,
    event_size: usize,
    seconds: f64,
    events_per_sec: f64,
    mb_per_sec: f64,
    appends_per_raft_entry: f64,
    latency: Latency,
}

pub(crate) fn run(args: &RegionAppendArgs) -> anyhow::Result<()> {
    sweep(
        &args.writers,
        args.json,
        |writers| measure(args, writers),
        |r| {
            let writers = r.writers;
            format!(
                "region-append: {} nodes, {writers:>3} writers, {} partitions, {} B events: {:>8.0} events/s, \
                 {:>5.1} MB/s, {:.1} appends/raft entry; {}",
                r.nodes,
                r.partitions,
                r.event_size,
                r.events_per_sec,
                r.mb_per_sec,
                r.appends_per_raft_entry,
                r.latency
            )
        },
    )
}

/// The region's processes; killed when dropped.
struct Region {
    children: Vec<Child>,
    addresses: Vec<String>,
}

impl Drop for Region {
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

fn start_region(args: &RegionAppendArgs, dir: &std::path::Path) -> anyhow::Result<Region> {
    let addresses = (0..args.nodes).map(|_| free_address()).collect::<anyhow::Result<Vec<_>>>()?;
    let peers = addresses.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
    let mut region = Region { children: Vec::new(), addresses: addresses.clone() };
    for (i, address) in addresses.iter().enumerate() {
        let child = Command::new(&args.fjord)
            .args(["server", "--node-id", &(i + 1).to_string(), "--listen", address, "--peers", &peers])
            .args(["--partitions", &args.partitions.to_string()])
            .arg("--data-dir")
            .arg(dir.join(format!("node-{}", i + 1)))
            .env("FJORD_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", args.fjord.display()))?;
        region.children.push(child);
    }
    Ok(region)
}

async fn connect(address: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{address}"))?.connect_lazy())
}

/// Sum over partitions of the Raft log index on the first node (entries written since the start).
async fn raft_entries(region: &Region) -> anyhow::Result<(u64, usize)> {
    let mut cluster = ClusterClient::new(connect(&region.addresses[0]).await?);
    let status = cluster.status(v1::StatusRequest {}).await?.into_inner();
    let leaders = status.partitions.iter().filter(|p| p.leader != 0).count();
    Ok((status.partitions.iter().map(|p| p.last_log_index).sum(), leaders))
}

async fn measure(args: &RegionAppendArgs, writers: usize) -> anyhow::Result<RegionAppendResult> {
    let dir = tempfile::tempdir_in(&args.dir)?;
    let region = start_region(args, dir.path())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((_, leaders)) = raft_entries(&region).await
            && leaders == args.partitions as usize
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the region elected no leaders in 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut channels = Vec::new();
    for address in &region.addresses {
        channels.push(connect(address).await?);
    }
    let payload = vec![b'x'; args.event_size];
    let (warm_up, measured) = (Duration::from_secs(1), Duration::from_secs(args.seconds));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let channels = channels.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("bench-{writer}");
            let mut turn = writer;
            closed_loop(start, warm_up, measured, || {
                let mut client = EventStoreClient::new(channels[turn % channels.len()].clone());
                turn += 1;
                let request = v1::AppendRequest {
                    stream: stream.clone(),
                    expected: None,
                    events: vec![v1::ProposedEvent {
                        id: uuid::Uuid::now_v7().as_bytes().to_vec(),
                        r#type: "Measured".to_owned(),
                        content_type: String::new(),
                        data: payload.clone(),
                        metadata: Default::default(),
                    }],
                };
                async move { Ok(client.append(request).await.map(|_| ())?) }
            })
            .await
        }));
    }
    tokio::time::sleep(warm_up).await;
    let entries_at_start = raft_entries(&region).await?.0;
    let mut latencies = histogram()?;
    let mut appends = 0;
    for task in tasks {
        let (count, histogram) = task.await??;
        appends += count;
        latencies.add(histogram)?;
    }
    let entries = raft_entries(&region).await?.0.saturating_sub(entries_at_start);
    let seconds = measured.as_secs_f64();
    let events_per_sec = appends as f64 / seconds;
    Ok(RegionAppendResult {
        workload: "region-append",
        nodes: args.nodes,
        writers,
        partitions: args.partitions,
        event_size: args.event_size,
        seconds,
        events_per_sec,
        mb_per_sec: events_per_sec * args.event_size as f64 / 1e6,
        appends_per_raft_entry: if entries == 0 { 0.0 } else { appends as f64 / entries as f64 },
        latency: Latency::of(&latencies),
    })
}
