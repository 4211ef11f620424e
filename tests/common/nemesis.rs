//! Faults on purpose, on a seeded schedule, and the verdict on a run: the region is healed, every node's
//! partitions are read whole, and the history checker judges them against what the clients saw.
//!
//! The nemeses (each cycle picks one, for a seeded while):
//! - SIGKILL of a partition's leader, restarted from its data afterwards;
//! - a paused leader (SIGSTOP and SIGCONT, or the container's freezer) — a node stalled by a GC pause or a
//!   hung disk;
//! - power loss of every node at once: all killed, every disk loses what was not fsynced (see
//!   [`super::lazyfs`]), all restarted;
//! - a follower's disk fills up (writes that grow a file fail with ENOSPC); afterwards the space is freed
//!   and the node restarted, as an operator would;
//! - a network partition that cuts one node off from the others (clients still reach it);
//! - a partition that splits the region 2|1 with a partition's leader alone on the minority side;
//! - a flaky link: a node's connections to its peers reset now and then;
//! - a corrupt disk: a node is killed, a byte of one of its stored files flipped or a 4 KiB page of it
//!   zeroed — its write-ahead log, a RocksDB table, a sealed segment or a snapshot's tail — and the node
//!   restarted. It must find the damage and be repaired from its leader before the next fault, except where
//!   the damage is provably harmless: a write-ahead log's unsynced tail is a torn tail by design.
//!
//! Power loss and full disks need a region on lazy filesystems, the network faults one on hosts of its own
//! (`RegionOptions`, [`super::hosts`]).

use std::collections::BTreeMap;
use std::time::Duration;

use super::TestRegion;
use super::history::History;
use super::history::Violation;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fault {
    KillLeader,
    PauseLeader,
    PowerLoss,
    FullDisk,
    IsolateNode,
    IsolateLeader,
    FlakyLink,
    CorruptStorage,
}

/// How a corrupt disk damages a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Damage {
    /// One bit pattern flipped in one byte (bit rot).
    FlipByte,
    /// A 4 KiB page zeroed (a lost or misdirected write).
    ZeroPage,
}

/// Which kind of a node's stored files a corrupt disk damages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum StoredFile {
    /// RocksDB's write-ahead log (`db/*.log`).
    WriteAheadLog,
    /// A RocksDB table file (`db/*.sst`).
    Table,
    /// A sealed segment (`segments/<partition>/*.seg`).
    Segment,
    /// A held snapshot's tail frames (`snapshots/<group>/*.tail`).
    SnapshotTail,
}

impl StoredFile {
    const ALL: [StoredFile; 4] =
        [StoredFile::WriteAheadLog, StoredFile::Table, StoredFile::Segment, StoredFile::SnapshotTail];

    /// The node's files of this kind under `data_dir`, in a stable order.
    pub(crate) fn files(self, data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let (dirs, extension) = match self {
            StoredFile::WriteAheadLog => (vec![data_dir.join("db")], "log"),
            StoredFile::Table => (vec![data_dir.join("db")], "sst"),
            StoredFile::Segment => (subdirs(&data_dir.join("segments")), "seg"),
            StoredFile::SnapshotTail => (subdirs(&data_dir.join("snapshots")), "tail"),
        };
        let mut files: Vec<_> = dirs
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == extension))
            .filter(|path| std::fs::metadata(path).is_ok_and(|m| m.len() > 0))
            .collect();
        files.sort();
        files
    }
}

fn subdirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).map_or_else(|_| Vec::new(), |entries| entries.flatten().map(|e| e.path()).collect())
}

/// What the corrupt-disk nemesis did, and what became of it.
#[derive(Debug, Default, Clone)]
pub(crate) struct CorruptionTally {
    /// Corruptions injected, by kind of file.
    pub(crate) injected: BTreeMap<StoredFile, u64>,
    /// Of those, found by the node (and repaired).
    pub(crate) detected: u64,
    /// Of those, in a write-ahead log and not found: in its unsynced tail (a torn tail), or in a log already
    /// flushed; harmless by design.
    pub(crate) torn_tails: u64,
    /// Of those, in a file the node removed unread when it opened: superseded, harmless.
    pub(crate) superseded: u64,
}

impl Fault {
    /// Every fault; those needing lazy filesystems only where the region has them.
    pub(crate) fn all(region: &TestRegion) -> Vec<Fault> {
        let mut faults = vec![Fault::KillLeader, Fault::PauseLeader, Fault::CorruptStorage];
        if !region.disks.is_empty() {
            faults.extend([Fault::PowerLoss, Fault::FullDisk]);
        }
        if region.network.is_some() {
            faults.extend([Fault::IsolateNode, Fault::IsolateLeader, Fault::FlakyLink]);
        }
        faults
    }
}

/// A reproducible schedule: xorshift64* from a seed, no crate.
pub(crate) struct Schedule(u64);

impl Schedule {
    pub(crate) fn new(seed: u64) -> Schedule {
        Schedule(seed.max(1))
    }

    /// A number in `0..below`.
    pub(crate) fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % below
    }

    /// A while between `min_ms` and `min_ms + spread_ms`.
    pub(crate) fn pause(&mut self, min_ms: u64, spread_ms: u64) -> Duration {
        Duration::from_millis(min_ms + self.next(spread_ms))
    }
}

/// Partition → leader, once every partition has a running one.
pub(crate) async fn leaders(region: &TestRegion) -> BTreeMap<u32, u64> {
    loop {
        region.wait_for_leaders().await;
        if let Some(leaders) = region.leaders().await {
            return leaders;
        }
    }
}

/// Injects one `fault` and heals it, waiting for every partition to have a leader again.
pub(crate) async fn inject(region: &mut TestRegion, fault: Fault, schedule: &mut Schedule) {
    let leaders = leaders(region).await;
    let partition = schedule.next(u64::from(region.partitions)) as u32;
    let leader = leaders[&partition];
    let outage = schedule.pause(300, 1200);
    match fault {
        Fault::KillLeader => {
            blocking(|| region.node(leader).kill());
            tokio::time::sleep(outage).await;
            blocking(|| region.node(leader).restart());
        }
        Fault::PauseLeader => {
            blocking(|| region.node(leader).signal_pause(true));
            tokio::time::sleep(outage).await;
            blocking(|| region.node(leader).signal_pause(false));
        }
        Fault::PowerLoss => {
            blocking(|| region.power_loss());
        }
        Fault::FullDisk => {
            let followers: Vec<u64> = region.nodes.iter().map(|n| n.id).filter(|id| *id != leader).collect();
            let follower = followers[schedule.next(followers.len() as u64) as usize];
            region.disks[&follower].set_full(true);
            tokio::time::sleep(outage).await;
            region.disks[&follower].set_full(false);
            blocking(|| {
                region.node(follower).kill();
                region.node(follower).restart();
            });
        }
        Fault::CorruptStorage => corrupt_a_node(region, schedule, outage).await,
        Fault::IsolateNode | Fault::IsolateLeader | Fault::FlakyLink => {
            let network = region.network.clone().expect("network faults need a region on hosts of its own");
            let id = match fault {
                Fault::IsolateLeader => leader,
                _ => region.nodes[schedule.next(region.nodes.len() as u64) as usize].id,
            };
            blocking(|| if fault == Fault::FlakyLink { network.make_flaky(id, 20) } else { network.isolate(id) });
            // Long enough, at times, for the majority side to elect a leader of its own.
            tokio::time::sleep(outage + schedule.pause(0, 1500)).await;
            blocking(|| network.heal());
        }
    }
    region.wait_for_leaders().await;
}

/// Kills a node, damages one of its stored files, restarts it after `outage`, and waits until it has found
/// the damage and been repaired (or, for a write-ahead log, found nothing: a torn tail). Damage anywhere but
/// a write-ahead log that the node does not find fails the run.
async fn corrupt_a_node(region: &mut TestRegion, schedule: &mut Schedule, outage: Duration) {
    let victim = region.nodes[schedule.next(region.nodes.len() as u64) as usize].id;
    let damage = if schedule.next(2) == 0 { Damage::FlipByte } else { Damage::ZeroPage };
    let (kind_pick, file_pick, fraction) = (schedule.next(1 << 20), schedule.next(1 << 20), schedule.next(1000));
    let (damaged_before, repaired_before) = damage_counts(&region.node(victim).log());
    let target = blocking(|| {
        region.node(victim).kill();
        let data_dir = region.node(victim).data_dir().to_owned();
        let kinds: Vec<(StoredFile, Vec<std::path::PathBuf>)> = StoredFile::ALL
            .into_iter()
            .map(|kind| (kind, kind.files(&data_dir)))
            .filter(|(_, files)| !files.is_empty())
            .collect();
        let (kind, files) = kinds.get(kind_pick as usize % kinds.len().max(1))?;
        let file = &files[file_pick as usize % files.len()];
        let len = std::fs::metadata(file).map_or(0, |m| m.len());
        corrupt(file, len * fraction / 1000, damage).unwrap();
        Some((*kind, file.clone()))
    });
    tokio::time::sleep(outage).await;
    blocking(|| region.node(victim).restart());
    let Some((kind, file)) = target else { return };
    *region.corruptions.injected.entry(kind).or_default() += 1;
    // Found damage is repaired before the next fault; damage must be found but in a write-ahead log. A
    // repair copies the whole partition back, so it takes as long as the run has made it: the run fails
    // only if the node makes no progress (its applied index, or a snapshot install's work) for a minute.
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut applied, mut looked) = (0, tokio::time::Instant::now());
    let mut quiet_until = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        if looked.elapsed() >= Duration::from_secs(2) {
            looked = tokio::time::Instant::now();
            if let Some(now) = region.repair_progress(victim).await
                && now > applied
            {
                (applied, deadline) = (now, tokio::time::Instant::now() + Duration::from_secs(60));
            }
        }
        let (damaged, repaired) = damage_counts(&region.node(victim).log());
        if damaged > damaged_before && repaired >= repaired_before + region.partitions as usize {
            region.corruptions.detected += 1;
            break;
        }
        if damaged == damaged_before && tokio::time::Instant::now() > quiet_until {
            // Nothing found by now and the node answers: it has opened (and would have said so).
            if region.node_answers(victim).await {
                if kind == StoredFile::WriteAheadLog {
                    // Its unsynced tail (a torn tail, dropped by design), or a log already flushed.
                    region.corruptions.torn_tails += 1;
                } else {
                    // Never read, so harmless, only if the node removed the file at open: superseded (a
                    // compacted table, an uncatalogued segment, a replaced snapshot's tail).
                    assert!(
                        !file.exists(),
                        "node {victim} did not find {damage:?} at {fraction}/1000 of {}",
                        file.display()
                    );
                    region.corruptions.superseded += 1;
                }
                break;
            }
            quiet_until = tokio::time::Instant::now() + Duration::from_secs(1);
        }
        if tokio::time::Instant::now() >= deadline {
            let logs: Vec<String> =
                region.nodes.iter().map(|node| format!("== node {}\n{}", node.id, tail(&node.log(), 60))).collect();
            panic!(
                "node {victim} found damage and its repair made no progress for 60 s; the nodes' logs end:\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The largest write-ahead log file of the node whose data dir is `data_dir`, if it has one.
pub(crate) fn largest_wal(data_dir: &std::path::Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(data_dir.join("db"))
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .max_by_key(|path| std::fs::metadata(path).map_or(0, |m| m.len()))
}

/// Damages `file` at byte `at` (clamped to the file), and syncs it.
pub(crate) fn corrupt(file: &std::path::Path, at: u64, damage: Damage) -> std::io::Result<()> {
    use std::io::Read;
    use std::io::Seek;
    use std::io::Write;
    let mut handle = std::fs::OpenOptions::new().read(true).write(true).open(file)?;
    let len = handle.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let at = at.min(len - 1);
    match damage {
        Damage::FlipByte => {
            let mut byte = [0u8];
            handle.seek(std::io::SeekFrom::Start(at))?;
            handle.read_exact(&mut byte)?;
            handle.seek(std::io::SeekFrom::Start(at))?;
            handle.write_all(&[byte[0] ^ 0x5A])?;
        }
        Damage::ZeroPage => {
            let page = at / 4096 * 4096;
            handle.seek(std::io::SeekFrom::Start(page))?;
            handle.write_all(&vec![0u8; (len - page).min(4096) as usize])?;
        }
    }
    handle.sync_all()
}

/// How many times a node's log says it found its durable state damaged, and how many of its groups were
/// repaired since.
pub(crate) fn damage_counts(log: &str) -> (usize, usize) {
    (log.matches("durable state is damaged").count(), log.matches("repaired from the leader").count())
}

/// Runs `work` — processes started, killed or signalled, `docker` or `nft` run — off the async workers, so
/// the clients on them go on meanwhile (the runtime has two).
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// What a run did and what the checker found.
pub(crate) struct Verdict {
    pub(crate) summary: String,
    pub(crate) violations: Vec<Violation>,
}

impl Verdict {
    /// Panics with the violations (and where the failing run was kept) unless there are none.
    pub(crate) fn assert_clean(&self) {
        assert!(self.violations.is_empty(), "{}:\n{}", self.summary, self.violations_text());
    }

    pub(crate) fn violations_text(&self) -> String {
        self.violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    }
}

/// Reads every node's partitions once the running nodes agree (or 30 s have passed), judges `history`
/// against them, and keeps a failing run's history, data and logs for replay.
pub(crate) async fn judge(region: &TestRegion, history: &History, faults: &BTreeMap<Fault, u64>, seed: u64) -> Verdict {
    let mut copies = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        copies.clear();
        let mut unanswered = Vec::new();
        for node in region.nodes.iter().filter(|n| n.is_running()) {
            let mut partitions = Vec::new();
            for partition in 0..region.partitions {
                match region.try_local_partition(node.id, partition).await {
                    Ok(events) => partitions.push(events),
                    Err(status) => unanswered.push(format!("node {} partition {partition}: {status}", node.id)),
                }
            }
            copies.insert(node.id, partitions);
        }
        let agree = unanswered.is_empty() && copies.values().collect::<Vec<_>>().windows(2).all(|w| w[0] == w[1]);
        if agree {
            break;
        }
        // A node still starting up may not answer yet; one that never does is a failure of its own.
        if tokio::time::Instant::now() > deadline {
            assert!(unanswered.is_empty(), "nodes did not answer reads: {unanswered:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let violations = history.check(&copies);
    let (acknowledged, failed, unknown) = history.counts();
    let cycles: u64 = faults.values().sum();
    let injected = faults.iter().map(|(fault, n)| format!("{n} {fault:?}")).collect::<Vec<_>>().join(", ");
    let dropped: u64 = region.disks.values().map(|disk| disk.stats().bytes_dropped).sum();
    let hosts = region.network.as_ref().map_or("processes on loopback", |hosts| hosts.kind());
    let (detected, repaired) = region
        .nodes
        .iter()
        .map(|node| damage_counts(&node.log()))
        .fold((0, 0), |(d, r), (node_d, node_r)| (d + node_d, r + node_r));
    let tally = &region.corruptions;
    let corrupted = tally.injected.iter().map(|(kind, n)| format!("{n} {kind:?}")).collect::<Vec<_>>().join(", ");
    let mut summary = format!(
        "faults: {cycles} cycles (seed {seed}) on {hosts}: {injected}; unsynced bytes lost to power losses: {dropped}; \
         corruptions injected: [{corrupted}], found and repaired {}, harmless: {} torn write-ahead log tails and {} \
         in superseded files; \
         damaged storage found {detected} times, groups repaired {repaired}; \
         appends: {acknowledged} acknowledged, {failed} failed, {unknown} unknown; {} linearizable reads; \
         {} violations",
        tally.detected,
        tally.torn_tails,
        tally.superseded,
        history.reads(),
        violations.len()
    );
    if !violations.is_empty() {
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let kept = std::env::temp_dir().join(format!("fjord-failed-history-{}-{run}-seed-{seed}", std::process::id()));
        let copied = std::process::Command::new("cp").arg("-a").arg(region.dir.path()).arg(&kept).status();
        history.dump(&kept.join("history.txt")).ok();
        summary.push_str(&format!("; history, data and logs kept in {} ({copied:?})", kept.display()));
    }
    Verdict { summary, violations }
}
