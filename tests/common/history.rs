//! A Jepsen-style history of what clients did to a region, and the checker that judges it against what
//! every node holds afterwards.
//!
//! Clients record each append's invocation and outcome — ok (with the positions returned), failed
//! (definitely not written: the server refused it) or unknown (timeout, lost connection, unavailable) — and
//! each linearizable read's window and the stream revision it saw. After the run and a heal, the checker
//! reads every partition from every node and reports each violation of:
//! - replicas: every node holds byte-identical partitions;
//! - acknowledged appends: every event of an acknowledged append is present exactly once, at the position
//!   the acknowledgement gave;
//! - failed appends: absent; unknown appends: present at most once; nothing present that nobody appended;
//! - streams: revisions 0, 1, 2, … in offset order;
//! - `exact` expected revisions: at most one winner per stream and revision;
//! - linearizable reads: a read never sees less than an append acknowledged before it began, nor less than
//!   a read that completed before it began.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

use fjord_proto::v1;

/// What became of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged: the position of each event, in order.
    Ok(Vec<v1::EventPosition>),
    /// Refused by the server: nothing was written.
    Failed(String),
    /// No answer, or an answer that does not say (unavailable, timed out): it may or may not be written.
    Unknown(String),
}

impl Outcome {
    /// The outcome of an append call: a refusal is definite, a transport failure or unavailability is not.
    pub fn of(result: &Result<tonic::Response<v1::AppendResponse>, tonic::Status>) -> Outcome {
        match result {
            Ok(response) => Outcome::Ok(response.get_ref().positions.clone()),
            Err(status) => match status.code() {
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => {
                    Outcome::Failed(format!("{:?}: {}", status.code(), status.message()))
                }
                _ => Outcome::Unknown(format!("{:?}: {}", status.code(), status.message())),
            },
        }
    }
}

/// One append as a client saw it.
#[derive(Debug, Clone)]
pub struct AppendOp {
    /// Which client.
    pub client: usize,
    /// The stream.
    pub stream: String,
    /// The events' ids, in order.
    pub ids: Vec<u128>,
    /// `Some(r)` for an append expecting the stream at exactly revision `r`.
    pub expected_exact: Option<u64>,
    /// When it was sent and when the outcome arrived.
    pub invoked: Instant,
    /// When the outcome arrived.
    pub completed: Instant,
    /// What became of it.
    pub outcome: Outcome,
}

/// One linearizable read of a stream's length.
#[derive(Debug, Clone)]
pub struct ReadOp {
    /// Which client.
    pub client: usize,
    /// The stream.
    pub stream: String,
    /// When it was sent.
    pub invoked: Instant,
    /// When the answer arrived.
    pub completed: Instant,
    /// How many events the stream had.
    pub events: u64,
}

/// Everything the clients did; shared by the client tasks.
#[derive(Default)]
pub struct History {
    appends: Mutex<Vec<AppendOp>>,
    reads: Mutex<Vec<ReadOp>>,
}

impl History {
    /// Records an append.
    pub fn append(&self, op: AppendOp) {
        self.appends.lock().unwrap().push(op);
    }

    /// Records a read.
    pub fn read(&self, op: ReadOp) {
        self.reads.lock().unwrap().push(op);
    }

    /// Writes every operation, one per line in invocation order, to `path` (kept with a failing run).
    pub fn dump(&self, path: &std::path::Path) -> std::io::Result<()> {
        let appends = self.appends.lock().unwrap();
        let reads = self.reads.lock().unwrap();
        let mut lines: Vec<(Instant, String)> = appends.iter().map(|op| (op.invoked, format!("{op:?}"))).collect();
        lines.extend(reads.iter().map(|op| (op.invoked, format!("{op:?}"))));
        lines.sort_by_key(|(at, _)| *at);
        let text: Vec<String> = lines.into_iter().map(|(_, line)| line).collect();
        std::fs::write(path, text.join("\n") + "\n")
    }

    /// Linearizable reads recorded.
    pub fn reads(&self) -> usize {
        self.reads.lock().unwrap().len()
    }

    /// Acknowledged, failed and unknown appends, in that order.
    pub fn counts(&self) -> (usize, usize, usize) {
        let appends = self.appends.lock().unwrap();
        let count = |f: fn(&Outcome) -> bool| appends.iter().filter(|op| f(&op.outcome)).count();
        (
            count(|o| matches!(o, Outcome::Ok(_))),
            count(|o| matches!(o, Outcome::Failed(_))),
            count(|o| matches!(o, Outcome::Unknown(_))),
        )
    }

    /// Judges the history against `copies`: node id → that node's partitions, each read whole from its
    /// applied state after the run.
    pub fn check(&self, copies: &BTreeMap<u64, Vec<Vec<v1::RecordedEvent>>>) -> Vec<Violation> {
        let appends = self.appends.lock().unwrap().clone();
        let reads = self.reads.lock().unwrap().clone();
        let mut violations = Vec::new();
        let Some((_, reference)) = copies.iter().next() else { return violations };

        for (node, partitions) in copies {
            for (partition, events) in partitions.iter().enumerate() {
                if *events != reference[partition] {
                    violations.push(Violation::ReplicasDiffer { partition, node: *node });
                }
            }
        }

        // Where each id is, in the reference copy.
        let mut found: BTreeMap<u128, Vec<&v1::RecordedEvent>> = BTreeMap::new();
        let mut streams: BTreeMap<&str, Vec<&v1::RecordedEvent>> = BTreeMap::new();
        for events in reference {
            for event in events {
                found.entry(id_of(event)).or_default().push(event);
                streams.entry(&event.stream).or_default().push(event);
            }
        }

        // Every outcome each id had, across retries carrying it.
        let mut outcomes: BTreeMap<u128, Vec<&AppendOp>> = BTreeMap::new();
        for op in &appends {
            for id in &op.ids {
                outcomes.entry(*id).or_default().push(op);
            }
        }
        for (id, events) in &found {
            if events.len() > 1 {
                violations.push(Violation::Duplicated { id: *id, copies: events.len() });
            }
            if !outcomes.contains_key(id) {
                violations.push(Violation::Phantom { id: *id, stream: events[0].stream.clone() });
            }
        }
        for (id, ops) in &outcomes {
            let present = found.get(id).map_or(0, Vec::len);
            let acknowledged = ops.iter().any(|op| matches!(op.outcome, Outcome::Ok(_)));
            let definitely_failed = ops.iter().all(|op| matches!(op.outcome, Outcome::Failed(_)));
            if acknowledged && present == 0 {
                violations.push(Violation::LostAcknowledged { id: *id, stream: ops[0].stream.clone() });
            }
            if definitely_failed && present > 0 {
                violations.push(Violation::FailedButPresent { id: *id, stream: ops[0].stream.clone() });
            }
        }

        for op in &appends {
            let Outcome::Ok(positions) = &op.outcome else { continue };
            for (id, position) in op.ids.iter().zip(positions) {
                let Some(event) = found.get(id).and_then(|events| events.first()) else { continue };
                if event.position.as_ref() != Some(position) {
                    violations.push(Violation::MovedFromAcknowledged {
                        id: *id,
                        acknowledged: *position,
                        stored: event.position,
                    });
                }
            }
        }

        for (stream, events) in &streams {
            for (expected, event) in events.iter().enumerate() {
                let revision = event.position.as_ref().map_or(u64::MAX, |p| p.revision);
                if revision != expected as u64 {
                    violations.push(Violation::RevisionGap {
                        stream: stream.to_string(),
                        expected: expected as u64,
                        found: revision,
                    });
                    break;
                }
            }
        }

        let mut winners: BTreeMap<(&str, u64), Vec<&AppendOp>> = BTreeMap::new();
        for op in &appends {
            if let (Some(revision), Outcome::Ok(_)) = (op.expected_exact, &op.outcome) {
                winners.entry((&op.stream, revision)).or_default().push(op);
            }
        }
        for ((stream, revision), ops) in winners {
            let distinct: std::collections::BTreeSet<&Vec<u128>> = ops.iter().map(|op| &op.ids).collect();
            if distinct.len() > 1 {
                violations.push(Violation::TwoWinners { stream: stream.to_owned(), revision, winners: distinct.len() });
            }
        }

        // Linearizable reads: the floor a read must see is the highest acknowledged length, and the highest
        // read length, among operations on its stream that completed before the read began. Per stream,
        // both are running maxima over completion times, looked up by binary search (a soak has hundreds of
        // thousands of operations).
        let mut floors: BTreeMap<&str, Vec<(Instant, u64)>> = BTreeMap::new();
        for op in &appends {
            if let Outcome::Ok(positions) = &op.outcome
                && let Some(last) = positions.last()
            {
                floors.entry(&op.stream).or_default().push((op.completed, last.revision + 1));
            }
        }
        for read in &reads {
            floors.entry(&read.stream).or_default().push((read.completed, read.events));
        }
        for floor in floors.values_mut() {
            floor.sort_by_key(|(completed, _)| *completed);
            let mut highest = 0;
            for (_, length) in floor.iter_mut() {
                highest = highest.max(*length);
                *length = highest;
            }
        }
        for read in &reads {
            let floor = floors.get(read.stream.as_str()).map_or(0, |floor| {
                let before = floor.partition_point(|(completed, _)| *completed < read.invoked);
                if before == 0 { 0 } else { floor[before - 1].1 }
            });
            if read.events < floor {
                violations.push(Violation::StaleRead {
                    stream: read.stream.clone(),
                    client: read.client,
                    saw: read.events,
                    floor,
                });
            }
        }
        violations
    }
}

fn id_of(event: &v1::RecordedEvent) -> u128 {
    uuid::Uuid::from_slice(&event.id).map_or(0, |id| id.as_u128())
}

/// One way a history and the stored data disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A node's copy of a partition differs from the first node's.
    ReplicasDiffer { partition: usize, node: u64 },
    /// An acknowledged event is missing.
    LostAcknowledged { id: u128, stream: String },
    /// An event is stored more than once.
    Duplicated { id: u128, copies: usize },
    /// An event whose every append was refused is stored.
    FailedButPresent { id: u128, stream: String },
    /// An event nobody appended is stored.
    Phantom { id: u128, stream: String },
    /// An acknowledged event is stored somewhere other than the acknowledgement said.
    MovedFromAcknowledged { id: u128, acknowledged: v1::EventPosition, stored: Option<v1::EventPosition> },
    /// A stream's revisions skip or repeat.
    RevisionGap { stream: String, expected: u64, found: u64 },
    /// More than one distinct append won the same `exact` expected revision.
    TwoWinners { stream: String, revision: u64, winners: usize },
    /// A linearizable read saw less than what was acknowledged or read before it began.
    StaleRead { stream: String, client: usize, saw: u64, floor: u64 },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}
