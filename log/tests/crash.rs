//! Crash safety: a child process appends through the group-commit path and reports each acknowledged
//! append; the parent kills it with SIGKILL mid-stream, reopens the store, and checks that every acknowledged
//! append is there and that no batch is partly visible. Several rounds run on the same store.
//!
//! SIGKILL keeps the kernel's page cache, so this proves atomicity and ack-after-write, not power-loss
//! durability (that needs a filesystem that drops unsynced pages; see the fault-harness issue).

#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;

use fjord_log::AppendRequest;
use fjord_log::Appender;
use fjord_log::Direction;
use fjord_log::ExpectedRevision;
use fjord_log::GroupCommitConfig;
use fjord_log::Limits;
use fjord_log::LogStore;
use fjord_log::Offset;
use fjord_log::ProposedEvent;
use fjord_log::Revision;
use fjord_log::StoreOptions;
use uuid::Uuid;

const CHILD_DIR: &str = "FJORD_CRASH_CHILD_DIR";
const CHILD_ROUND: &str = "FJORD_CRASH_CHILD_ROUND";
const WRITERS: u64 = 8;
const EVENTS_PER_APPEND: u64 = 3;
const ROUNDS: u64 = 5;
const ACKS_BEFORE_KILL: usize = 400;

fn options() -> StoreOptions {
    StoreOptions { partitions: 4, ..StoreOptions::default() }
}

/// Event ids encode (round, writer, sequence, index in the append), so a reader can tell appends apart.
fn event_id(round: u64, writer: u64, seq: u64, index: u64) -> Uuid {
    Uuid::from_u128(
        (u128::from(round) << 96) | (u128::from(writer) << 64) | (u128::from(seq) << 8) | u128::from(index) | 1 << 127,
    )
}

/// The child's side: appends forever (until killed) and prints `ACK stream id…` after each durable append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by `crash_keeps_every_acknowledged_append` as a child process"]
async fn crash_child() {
    let (Ok(dir), Ok(round)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_ROUND)) else { return };
    let round: u64 = round.parse().unwrap();
    let store = LogStore::open(&dir, &options()).unwrap();
    let appender = Arc::new(Appender::start(&store, Limits::default(), GroupCommitConfig::default()).unwrap());
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (appender, stdout) = (appender.clone(), stdout.clone());
            tokio::spawn(async move {
                let stream = format!("crash-{writer}");
                for seq in 0.. {
                    let events = (0..EVENTS_PER_APPEND)
                        .map(|i| {
                            let mut event = ProposedEvent::json("Wrote", format!("{{\"seq\":{seq}}}").into_bytes());
                            event.id = event_id(round, writer, seq, i);
                            event
                        })
                        .collect::<Vec<_>>();
                    let ids = events.iter().map(|e| e.id.to_string()).collect::<Vec<_>>().join(",");
                    let request = AppendRequest { stream: stream.clone(), expected: ExpectedRevision::Any, events };
                    appender.append(request).await.unwrap();
                    let mut out = stdout.lock().unwrap();
                    writeln!(out, "ACK {stream} {ids}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[test]
fn crash_keeps_every_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<(String, Vec<Uuid>)> = Vec::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acks = 0;
        while acks < ACKS_BEFORE_KILL {
            let line = lines.next().expect("child ended before it was killed").unwrap();
            let Some(rest) = line.strip_prefix("ACK ") else { continue };
            let (stream, ids) = rest.split_once(' ').unwrap();
            acknowledged.push((stream.to_owned(), ids.split(',').map(|id| id.parse().unwrap()).collect()));
            acks += 1;
        }
        // SIGKILL while the writers are mid-flight.
        kill_hard(child.id());
        child.wait().unwrap();
        // Acks printed between the last read and the kill are acknowledged too.
        for line in lines.map_while(Result::ok) {
            if let Some((stream, ids)) = line.strip_prefix("ACK ").and_then(|rest| rest.split_once(' ')) {
                acknowledged.push((stream.to_owned(), ids.split(',').map(|id| id.parse().unwrap()).collect()));
            }
        }
        verify(dir.path(), &acknowledged);
    }
}

fn kill_hard(pid: u32) {
    let status = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

fn verify(dir: &std::path::Path, acknowledged: &[(String, Vec<Uuid>)]) {
    let store = LogStore::open(dir, &options()).unwrap();
    for partition in store.partitions() {
        let offsets: Vec<u64> = partition.read_partition(Offset(0), u64::MAX).map(|e| e.unwrap().offset.0).collect();
        assert_eq!(offsets, (0..partition.next_offset().0).collect::<Vec<_>>(), "offsets are dense");
    }
    let mut stored = std::collections::HashMap::new();
    for writer in 0..WRITERS {
        let stream = format!("crash-{writer}");
        let events: Vec<_> = store
            .partition_for(&stream)
            .read_stream(&stream, Revision(0), Direction::Forward, u64::MAX)
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(events.len() as u64 % EVENTS_PER_APPEND, 0, "{stream}: a partial append is visible");
        for (revision, chunk) in events.chunks(EVENTS_PER_APPEND as usize).enumerate() {
            let append_of = |id: Uuid| id.as_u128() >> 8;
            assert!(
                chunk.iter().enumerate().all(|(i, e)| append_of(e.id) == append_of(chunk[0].id)
                    && (e.id.as_u128() & 0xff) as usize == i
                    && e.revision.0 == revision as u64 * EVENTS_PER_APPEND + i as u64),
                "{stream}: the append at revision {} is torn",
                revision as u64 * EVENTS_PER_APPEND
            );
        }
        stored.insert(stream, events.into_iter().map(|e| e.id).collect::<Vec<_>>());
    }
    for (stream, ids) in acknowledged {
        let present = &stored[stream];
        let at = present.iter().position(|id| *id == ids[0]);
        let found = at.map(|at| &present[at..(at + ids.len()).min(present.len())]);
        assert_eq!(found, Some(ids.as_slice()), "{stream}: acknowledged append {ids:?} is missing");
    }
}
