//! Leaders killed with SIGKILL and restarted, or paused with SIGSTOP and resumed, while clients append and
//! read, judged by the history checker
//! (`common::history`): every acknowledged append present exactly once at its acknowledged position,
//! refused appends absent, unknown outcomes at most once (clients retry with the same event ids),
//! revisions gap-free, linearizable reads never behind what was acknowledged or read before them, and every
//! replica byte-identical.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use common::TestRegion;
use common::append;
use common::channel;
use common::history::AppendOp;
use common::history::History;
use common::history::Outcome;
use common::history::ReadOp;
use common::read_stream;
use fjord_proto::v1::event_store_client::EventStoreClient;

const WRITERS: usize = 4;
/// Fault cycles in CI; `FJORD_FAULT_CYCLES` sets another count (a soak), `FJORD_FAULT_SEED` the schedule.
const FAULT_CYCLES: u64 = 6;

/// The nemesis schedule: each cycle picks a partition's leader and SIGKILLs it (restarting it later) or
/// pauses it with SIGSTOP (resuming it later), for a seeded while. xorshift64*: reproducible, no crate.
struct Schedule(u64);

impl Schedule {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % below
    }
}

fn from_env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
/// How long a client waits for any answer before counting the outcome unknown.
const PATIENCE: Duration = Duration::from_secs(10);

/// Appends pairs of events to its own stream until told to stop; each append is retried with the same
/// ids, moving between nodes, until it is acknowledged. Every attempt goes into the history.
async fn writer(client: usize, addresses: Vec<String>, history: Arc<History>, stop: Arc<AtomicBool>) {
    let stream = format!("writer-{client}");
    let (mut attempt, mut seq) = (0usize, 0u128);
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let ids = vec![((client as u128) << 64) | (seq << 1), ((client as u128) << 64) | (seq << 1) | 1];
        loop {
            let mut store = EventStoreClient::new(channel(&addresses[attempt % addresses.len()]).await);
            let invoked = Instant::now();
            let outcome = match tokio::time::timeout(PATIENCE, store.append(append(&stream, None, &ids))).await {
                Ok(result) => Outcome::of(&result),
                Err(_) => Outcome::Unknown("no answer in time".to_owned()),
            };
            let acknowledged = matches!(outcome, Outcome::Ok(_));
            let op = AppendOp {
                client,
                stream: stream.clone(),
                ids: ids.clone(),
                expected_exact: None,
                invoked,
                completed: Instant::now(),
                outcome,
            };
            history.append(op);
            if acknowledged {
                break;
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Reads the writers' streams linearizably through the nodes in turn, recording what each read saw.
async fn reader(addresses: Vec<String>, history: Arc<History>, stop: Arc<AtomicBool>) {
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        let stream = format!("writer-{}", turn % WRITERS);
        let mut store = EventStoreClient::new(channel(&addresses[turn % addresses.len()]).await);
        let invoked = Instant::now();
        if let Ok(Ok(events)) = tokio::time::timeout(PATIENCE, read_stream(&mut store, &stream)).await {
            let op =
                ReadOp { client: WRITERS, stream, invoked, completed: Instant::now(), events: events.len() as u64 };
            history.read(op);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_paused_leaders_break_no_promise_the_history_checker_knows() {
    let mut region = TestRegion::start(3, 2).await;
    let addresses: Vec<String> = region.nodes.iter().map(|n| n.address.clone()).collect();
    let (history, stop) = (Arc::new(History::default()), Arc::new(AtomicBool::new(false)));
    let mut clients: Vec<_> = (0..WRITERS)
        .map(|client| tokio::spawn(writer(client, addresses.clone(), history.clone(), stop.clone())))
        .collect();
    clients.push(tokio::spawn(reader(addresses.clone(), history.clone(), stop.clone())));

    let (cycles, seed) = (from_env("FJORD_FAULT_CYCLES", FAULT_CYCLES), from_env("FJORD_FAULT_SEED", 1));
    let mut schedule = Schedule(seed.max(1));
    let (mut kills, mut pauses) = (0, 0);
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(200 + schedule.next(600))).await;
        let leaders = loop {
            region.wait_for_leaders().await;
            if let Some(leaders) = region.leaders().await {
                break leaders;
            }
        };
        let victim = leaders[&(schedule.next(u64::from(region.partitions)) as u32)];
        let outage = Duration::from_millis(300 + schedule.next(1200));
        if schedule.next(2) == 0 {
            kills += 1;
            region.node(victim).kill();
            tokio::time::sleep(outage).await;
            region.node(victim).restart();
        } else {
            pauses += 1;
            region.node(victim).signal_pause(true);
            tokio::time::sleep(outage).await;
            region.node(victim).signal_pause(false);
        }
        region.wait_for_leaders().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    region.assert_replicas_identical().await;
    let mut copies = BTreeMap::new();
    for node in &region.nodes {
        let mut partitions = Vec::new();
        for partition in 0..region.partitions {
            partitions.push(region.local_partition(node.id, partition).await);
        }
        copies.insert(node.id, partitions);
    }
    let (acknowledged, failed, unknown) = history.counts();
    let violations = history.check(&copies);
    let summary = format!(
        "faults: {cycles} cycles (seed {seed}): {kills} SIGKILL + restart, {pauses} SIGSTOP + SIGCONT of a leader; \
         appends: {acknowledged} acknowledged, {failed} failed, {unknown} unknown; {} linearizable reads; \
         {} violations",
        history.reads(),
        violations.len()
    );
    println!("{summary}");
    assert!(acknowledged > 0, "the writers acknowledged nothing");
    if !violations.is_empty() {
        // Keep the failing history with the nodes' data and logs, to replay and debug it.
        let kept = std::env::temp_dir().join(format!("fjord-failed-history-{}", std::process::id()));
        let copied = std::process::Command::new("cp").arg("-a").arg(region.dir.path()).arg(&kept).status();
        history.dump(&kept.join("history.txt")).ok();
        panic!(
            "{summary}; history, data and logs kept in {} ({copied:?}):\n{}",
            kept.display(),
            violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
        );
    }
}
