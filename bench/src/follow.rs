//! The workloads that follow the log, through `fjord-client` as a service would:
//!
//! - `replay`: preload events (writers appending batches), then one subscriber from the beginning reads
//!   them all; events/s and MB/s. The peer is NATS JetStream's ordered consumer reading the same messages,
//!   preloaded the same way, in the same run.
//! - `live`: the region's closed-loop maximum first, then half of it offered open loop while 1 (then 100)
//!   subscribers follow from the end; the latency from an append's acknowledgement (as its writer saw it)
//!   to each subscriber's delivery. A delivery that beats the acknowledgement to the client counts as 0.
//! - `stalled`: closed-loop appends alone, then beside subscribers that never read (each opened from the
//!   beginning and never polled); the append rate of each, and how much the nodes' resident memory grew.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use fjord_client::EventData;
use fjord_client::Expected;
use fjord_client::Start;
use fjord_proto::v1;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::fjord_region::FjordRegion;
use crate::load::CpuSeconds;
use crate::load::Pace;
use crate::load::Window;
use crate::load::join_writers;
use crate::load::preload_progress;
use crate::load::writer_loop;
use crate::summary::Latency;
use crate::summary::histogram;
use crate::summary::record;
use crate::target::System;
use crate::target::Target;
use crate::target::TargetArgs;

/// Writers that preload, each appending batches of [`PRELOAD_BATCH`] events.
const PRELOAD_WRITERS: usize = 16;
const PRELOAD_BATCH: usize = 500;
/// How long a subscriber may take to deliver what was appended before the measurement fails.
const DRAIN: Duration = Duration::from_secs(30);

/// Flags of `fjord-bench replay`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Events to preload and replay.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 256)]
    event_size: usize,
    /// Partitions (Fjord only).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Print one JSON line per result to stdout (the readable line goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Flags of `fjord-bench live`.
#[derive(Debug, clap::Args)]
pub(crate) struct LiveArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Subscriber counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    subscribers: Vec<usize>,
    #[command(flatten)]
    load: ClosedLoopArgs,
}

/// Flags of `fjord-bench stalled`.
#[derive(Debug, clap::Args)]
pub(crate) struct StalledArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Subscribers that never read.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    #[command(flatten)]
    load: ClosedLoopArgs,
}

/// The appending side of `live` and `stalled`.
#[derive(Debug, clap::Args)]
struct ClosedLoopArgs {
    /// Closed-loop writers (live: they find the region's maximum, then half of it is offered).
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Seconds to measure each phase (live: the maximum, then each subscriber count).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 256)]
    event_size: usize,
    /// Partitions.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Print one JSON line per result to stdout (the readable line goes to stderr).
    #[arg(long)]
    json: bool,
}

impl ClosedLoopArgs {
    /// The closed-loop load these flags describe.
    fn load(&self) -> Load {
        Load { writers: self.writers, seconds: self.seconds, event_size: self.event_size }
    }
}

/// One `stalled` result.
#[derive(Debug, Serialize)]
struct StalledPoint {
    workload: &'static str,
    system: System,
    nodes: u64,
    partitions: u32,
    writers: usize,
    stalled_subscribers: usize,
    appends_per_sec_alone: f64,
    appends_per_sec_beside_stalled: f64,
    /// The nodes' resident memory together, when the stalled subscribers opened and when the appends beside
    /// them ended.
    servers_rss_mib_before: f64,
    servers_rss_mib_after: f64,
}

/// One `replay` result.
#[derive(Debug, Serialize)]
struct ReplayPoint {
    workload: &'static str,
    system: System,
    nodes: Option<u64>,
    partitions: Option<u32>,
    events: u64,
    event_size: usize,
    /// How long the servers took to settle after the preload, before the replay began.
    settled_secs: f64,
    seconds: f64,
    events_per_sec: f64,
    mb_per_sec: f64,
    cpu_seconds_per_million_events: CpuSeconds,
}

/// One `live` result.
#[derive(Debug, Serialize)]
struct LivePoint {
    workload: &'static str,
    system: System,
    nodes: u64,
    partitions: u32,
    subscribers: usize,
    event_size: usize,
    /// The closed-loop maximum measured first, and the rate offered (half of it).
    max_appends_per_sec: f64,
    offered_appends_per_sec: f64,
    seconds: f64,
    appended: u64,
    /// Deliveries (every subscriber gets every event).
    delivered: u64,
    /// Deliveries that reached their subscriber before the append's acknowledgement reached its writer.
    delivered_before_ack: u64,
    latency: Latency,
    cpu_seconds_per_million_deliveries: CpuSeconds,
}

fn print(json: bool, result: &impl Serialize, line: &str) -> anyhow::Result<()> {
    if json {
        writeln!(std::io::stdout().lock(), "{}", serde_json::to_string(result)?)?;
        writeln!(std::io::stderr().lock(), "{line}")?;
    } else {
        writeln!(std::io::stdout().lock(), "{line}")?;
    }
    Ok(())
}

/// Runs `replay`.
pub(crate) fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let target = Arc::new(Target::open(&args.target, args.partitions).await?);
        preload(&target, args.events, args.event_size).await?;
        let pids = target.server_pids(&args.target);
        let settled_secs = settle(&pids).await;
        let (cpu_before, started) = (CpuSeconds::now(&pids), Instant::now());
        let bytes = match target.as_ref() {
            Target::Fjord(region) => replay_fjord(region, args.events).await?,
            Target::Nats(nats) => nats.replay(args.events).await?,
            _ => anyhow::bail!("replay runs against fjord and nats"),
        };
        let seconds = started.elapsed().as_secs_f64();
        let is_fjord = args.target.system == System::Fjord;
        let point = ReplayPoint {
            workload: "replay",
            system: args.target.system,
            nodes: is_fjord.then_some(args.target.nodes),
            partitions: is_fjord.then_some(args.partitions),
            events: args.events,
            event_size: args.event_size,
            settled_secs,
            seconds,
            events_per_sec: args.events as f64 / seconds,
            mb_per_sec: bytes as f64 / seconds / 1e6,
            cpu_seconds_per_million_events: CpuSeconds::now(&pids).per_million_since(&cpu_before, args.events),
        };
        let line = format!(
            "replay {:?}: {} events of {} B (settled {:.0} s after the preload) in {:.2} s: {:.0} events/s ({:.1} \
             MB/s); CPU-s per M events: servers {:.1}, client {:.1}",
            point.system,
            point.events,
            point.event_size,
            point.settled_secs,
            point.seconds,
            point.events_per_sec,
            point.mb_per_sec,
            point.cpu_seconds_per_million_events.servers,
            point.cpu_seconds_per_million_events.client
        );
        print(args.json, &point, &line)
    })
}

/// The servers' CPU over one second below which a preloaded system counts as settled.
const SETTLED_CPU_SHARE: f64 = 0.05;
/// The longest a replay waits for the servers to settle after the preload.
const SETTLE_AT_MOST: Duration = Duration::from_secs(120);

/// Waits until the servers have finished what the preload left them (flushes, compactions, sealing
/// segments, snapshots: work a replay should not be measured beside), that is until they use less than
/// [`SETTLED_CPU_SHARE`] of a core over a second, or [`SETTLE_AT_MOST`]; the seconds it waited.
pub(crate) async fn settle(pids: &[u32]) -> f64 {
    let started = Instant::now();
    let mut before = CpuSeconds::now(pids);
    while started.elapsed() < SETTLE_AT_MOST {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = CpuSeconds::now(pids);
        if now.servers - before.servers < SETTLED_CPU_SHARE {
            break;
        }
        before = now;
        eprintln!("waiting for the servers to settle after the preload ({:.0} s)", started.elapsed().as_secs_f64());
    }
    started.elapsed().as_secs_f64()
}

/// Appends `count` events of `size` bytes with [`PRELOAD_WRITERS`] writers, showing progress on stderr.
async fn preload(target: &Arc<Target>, count: u64, size: usize) -> anyhow::Result<()> {
    let batches = count.div_ceil(PRELOAD_BATCH as u64);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..PRELOAD_WRITERS {
        let (target, next) = (target.clone(), next.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let batch = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if batch >= batches {
                    return anyhow::Ok(());
                }
                let events = (count - batch * PRELOAD_BATCH as u64).min(PRELOAD_BATCH as u64) as usize;
                target.append(writer, &vec![vec![0x5Au8; size]; events]).await?;
            }
        }));
    }
    let appended = || next.load(std::sync::atomic::Ordering::Relaxed).min(batches) * PRELOAD_BATCH as u64;
    preload_progress(writers, count, appended).await
}

/// One subscriber from the beginning of every partition, until `count` events came; their data bytes.
async fn replay_fjord(region: &FjordRegion, count: u64) -> anyhow::Result<u64> {
    let mut subscription = region.client(0)?.subscribe(v1::SubscriptionFilter::default(), Start::Beginning);
    let (mut received, mut bytes) = (0, 0);
    while received < count {
        let delivery = subscription.next().await?;
        received += delivery.events.len() as u64;
        bytes += delivery.events.iter().map(|event| event.data.len() as u64).sum::<u64>();
    }
    Ok(bytes)
}

/// Runs `live`.
pub(crate) fn live(args: &LiveArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.target.system == System::Fjord, "live runs against fjord");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let region = Arc::new(FjordRegion::start(&args.target, args.load.partitions).await?);
        let load = args.load.load();
        let (appends, _) = offer(&region, load, Pace::Closed, None).await?;
        let max = appends as f64 / args.load.seconds as f64;
        eprintln!("live: the region's closed-loop maximum with {} writers is {max:.0} appends/s", args.load.writers);
        for &subscribers in &args.subscribers {
            let point = live_point(&region, args, load, subscribers, max).await?;
            let line = format!(
                "live Fjord {} nodes {} partitions: {} subscribers at {:.0} appends/s (half of {:.0}): {} appended, {} \
                 deliveries ({} before the ack); ack to delivery {}; CPU-s per M deliveries: servers {:.1}, client {:.1}",
                point.nodes,
                point.partitions,
                point.subscribers,
                point.offered_appends_per_sec,
                point.max_appends_per_sec,
                point.appended,
                point.delivered,
                point.delivered_before_ack,
                point.latency,
                point.cpu_seconds_per_million_deliveries.servers,
                point.cpu_seconds_per_million_deliveries.client
            );
            print(args.load.json, &point, &line)?;
        }
        Ok(())
    })
}

/// Runs `stalled`.
pub(crate) fn stalled(args: &StalledArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.target.system == System::Fjord, "stalled runs against fjord");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let region = Arc::new(FjordRegion::start(&args.target, args.load.partitions).await?);
        let load = args.load.load();
        let (alone, _) = offer(&region, load, Pace::Closed, None).await?;
        // Opened and never polled: each holds what the node sent before HTTP/2 flow control stopped it.
        let mut stalled = Vec::new();
        for subscriber in 0..args.subscribers {
            let mut store = region.store(subscriber);
            let request = v1::SubscribeRequest {
                filter: Some(v1::SubscriptionFilter::default()),
                start: Some(v1::subscribe_request::Start::FromBeginning(v1::Empty {})),
                checkpoint_interval_ms: 0,
            };
            stalled.push(store.subscribe(request).await?.into_inner());
        }
        let rss_before = resident_mib(&region.pids());
        let (beside, _) = offer(&region, load, Pace::Closed, None).await?;
        let rss_after = resident_mib(&region.pids());
        drop(stalled);
        let seconds = args.load.seconds as f64;
        let point = StalledPoint {
            workload: "stalled",
            system: System::Fjord,
            nodes: args.target.nodes,
            partitions: args.load.partitions,
            writers: args.load.writers,
            stalled_subscribers: args.subscribers,
            appends_per_sec_alone: alone as f64 / seconds,
            appends_per_sec_beside_stalled: beside as f64 / seconds,
            servers_rss_mib_before: rss_before,
            servers_rss_mib_after: rss_after,
        };
        let line = format!(
            "stalled Fjord {} nodes: {} writers: {:.0} appends/s alone, {:.0} beside {} subscribers that never read \
             ({:.2}x); servers' resident memory {:.0} MiB -> {:.0} MiB",
            point.nodes,
            point.writers,
            point.appends_per_sec_alone,
            point.appends_per_sec_beside_stalled,
            point.stalled_subscribers,
            point.appends_per_sec_beside_stalled / point.appends_per_sec_alone.max(1.0),
            point.servers_rss_mib_before,
            point.servers_rss_mib_after
        );
        print(args.load.json, &point, &line)
    })
}

/// The resident memory of `pids` together, in MiB.
fn resident_mib(pids: &[u32]) -> f64 {
    let kib: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum();
    kib as f64 / 1024.0
}

/// When each appended event's acknowledgement reached its writer, by event id.
type Acknowledged = Arc<Mutex<HashMap<uuid::Uuid, Instant>>>;

/// Writers appending single events for a while.
#[derive(Debug, Clone, Copy)]
struct Load {
    writers: usize,
    seconds: u64,
    event_size: usize,
}

/// `load` at `pace`, each writer to a stream of its own (ids noted in `acknowledged` once acknowledged);
/// appends counted after a one-second warm-up.
async fn offer(
    region: &Arc<FjordRegion>,
    load: Load,
    pace: Pace,
    acknowledged: Option<Acknowledged>,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let window = Window::starting_now(Duration::from_secs(1), Duration::from_secs(load.seconds));
    let (mut tasks, writers) = (Vec::new(), load.writers);
    for writer in 0..writers {
        let (client, acknowledged, size) = (region.client(writer)?, acknowledged.clone(), load.event_size);
        tasks.push(tokio::spawn(async move {
            writer_loop(window, pace, writer, writers, || {
                let (client, acknowledged) = (client.clone(), acknowledged.clone());
                async move {
                    let id = uuid::Uuid::now_v7();
                    let mut event = EventData::json("Measured", &vec![b'1'; size]);
                    event.id = Some(id);
                    client.append(&format!("live-{writer}"), Expected::Any, vec![event]).await?;
                    if let Some(acknowledged) = acknowledged {
                        acknowledged
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(id, Instant::now());
                    }
                    Ok(())
                }
            })
            .await
        }));
    }
    join_writers(tasks).await
}

/// Half the maximum offered while `subscribers` follow from the end: every subscriber must deliver every
/// event appended meanwhile.
async fn live_point(
    region: &Arc<FjordRegion>,
    args: &LiveArgs,
    load: Load,
    subscribers: usize,
    max: f64,
) -> anyhow::Result<LivePoint> {
    let acknowledged: Acknowledged = Arc::default();
    // The number of events appended, once the writers are done: each subscriber stops once it has them all.
    let (total, appended) = tokio::sync::watch::channel(None::<u64>);
    let (ready, mut all_ready) = tokio::sync::mpsc::channel(subscribers.max(1));
    let mut tasks = Vec::new();
    for subscriber in 0..subscribers {
        let (client, acknowledged, mut appended, ready) =
            (region.client(subscriber)?, acknowledged.clone(), appended.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            let filter = v1::SubscriptionFilter { stream_prefix: "live-".into(), ..Default::default() };
            let mut subscription = client.subscribe(filter, Start::End);
            subscription.next().await?;
            let _ = ready.send(()).await;
            let (mut latencies, mut delivered, mut before_ack) = (histogram()?, 0u64, 0u64);
            loop {
                if appended.borrow().is_some_and(|total| delivered >= total) {
                    return anyhow::Ok((latencies, delivered, before_ack));
                }
                let delivery = tokio::select! {
                    delivery = subscription.next() => delivery?,
                    changed = appended.changed() => { changed?; continue }
                };
                let now = Instant::now();
                let acked = acknowledged.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for event in &delivery.events {
                    let id = uuid::Uuid::from_slice(&event.id).context("an event id")?;
                    match acked.get(&id) {
                        Some(at) => record(&mut latencies, now.saturating_duration_since(*at)),
                        None => {
                            before_ack += 1;
                            record(&mut latencies, Duration::ZERO);
                        }
                    }
                    delivered += 1;
                }
            }
        }));
    }
    for _ in 0..subscribers {
        all_ready.recv().await.context("a subscriber failed to start")?;
    }
    let pids = region.pids();
    let cpu_before = CpuSeconds::now(&pids);
    let offered = max / 2.0;
    offer(region, load, Pace::Open { per_second: offered }, Some(acknowledged.clone())).await?;
    let appended = acknowledged.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len() as u64;
    total.send_replace(Some(appended));
    let (mut latencies, mut delivered, mut before_ack) = (histogram()?, 0, 0);
    for task in tasks {
        let (histogram, count, early) =
            tokio::time::timeout(DRAIN, task).await.context("a subscriber did not deliver every event")???;
        latencies.add(histogram)?;
        delivered += count;
        before_ack += early;
    }
    Ok(LivePoint {
        workload: "live",
        system: System::Fjord,
        nodes: args.target.nodes,
        partitions: args.load.partitions,
        subscribers,
        event_size: args.load.event_size,
        max_appends_per_sec: max,
        offered_appends_per_sec: offered,
        seconds: args.load.seconds as f64,
        appended,
        delivered,
        delivered_before_ack: before_ack,
        latency: Latency::of(&latencies),
        cpu_seconds_per_million_deliveries: CpuSeconds::now(&pids).per_million_since(&cpu_before, delivered),
    })
}
