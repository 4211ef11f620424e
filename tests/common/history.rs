//! A Jepsen-style history of what clients did to a region, and the checker that judges it against what
//! every node holds afterwards.
//!
//! Clients record each append's invocation and outcome — ok (with the positions returned), failed
//! (definitely not written: the server refused it) or unknown (timeout, lost connection, unavailable) — and
//! each linearizable read's window and the stream revision it saw. After the run and a heal, the checker
//! reads every partition from every node and reports each violation of these invariants (each checked by a
//! function of its own, named for it, that [`History::check`] calls in turn):
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
pub(crate) enum Outcome {
    /// Acknowledged: the position of each event, in order.
    Ok(Vec<v1::EventPosition>),
    /// Refused by the server: nothing was written.
    Failed(String),
    /// No answer, or an answer that does not say (unavailable, timed out): it may or may not be written.
    Unknown(String),
}

impl Outcome {
    /// The outcome of an append call: a refusal is definite, a transport failure or unavailability is not.
    pub(crate) fn of(result: &Result<tonic::Response<v1::AppendResponse>, tonic::Status>) -> Outcome {
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
pub(crate) struct AppendOp {
    /// Which client.
    #[allow(dead_code, reason = "read only through `Debug`: the history dump says which client did what")]
    pub(crate) client: usize,
    /// The stream.
    pub(crate) stream: String,
    /// The events' ids, in order.
    pub(crate) ids: Vec<u128>,
    /// `Some(r)` for an append expecting the stream at exactly revision `r`.
    pub(crate) expected_exact: Option<u64>,
    /// When it was sent and when the outcome arrived.
    pub(crate) invoked: Instant,
    /// When the outcome arrived.
    pub(crate) completed: Instant,
    /// What became of it.
    pub(crate) outcome: Outcome,
}

/// One linearizable read of a stream's length.
#[derive(Debug, Clone)]
pub(crate) struct ReadOp {
    /// Which client.
    pub(crate) client: usize,
    /// The stream.
    pub(crate) stream: String,
    /// When it was sent.
    pub(crate) invoked: Instant,
    /// When the answer arrived.
    pub(crate) completed: Instant,
    /// How many events the stream had.
    pub(crate) events: u64,
}

/// Everything the clients did; shared by the client tasks.
#[derive(Default)]
pub(crate) struct History {
    appends: Mutex<Vec<AppendOp>>,
    reads: Mutex<Vec<ReadOp>>,
}

impl History {
    /// Records an append.
    pub(crate) fn append(&self, op: AppendOp) {
        self.appends.lock().unwrap().push(op);
    }

    /// Records a read.
    pub(crate) fn read(&self, op: ReadOp) {
        self.reads.lock().unwrap().push(op);
    }

    /// Writes every operation, one per line in invocation order, to `path` (kept with a failing run).
    pub(crate) fn dump(&self, path: &std::path::Path) -> std::io::Result<()> {
        let appends = self.appends.lock().unwrap();
        let reads = self.reads.lock().unwrap();
        let mut lines: Vec<(Instant, String)> = appends.iter().map(|op| (op.invoked, format!("{op:?}"))).collect();
        lines.extend(reads.iter().map(|op| (op.invoked, format!("{op:?}"))));
        lines.sort_by_key(|(at, _)| *at);
        let text: Vec<String> = lines.into_iter().map(|(_, line)| line).collect();
        std::fs::write(path, text.join("\n") + "\n")
    }

    /// Linearizable reads recorded.
    pub(crate) fn reads(&self) -> usize {
        self.reads.lock().unwrap().len()
    }

    /// Acknowledged, failed and unknown appends, in that order.
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let appends = self.appends.lock().unwrap();
        let count = |f: fn(&Outcome) -> bool| appends.iter().filter(|op| f(&op.outcome)).count();
        (
            count(|o| matches!(o, Outcome::Ok(_))),
            count(|o| matches!(o, Outcome::Failed(_))),
            count(|o| matches!(o, Outcome::Unknown(_))),
        )
    }

    /// Judges the history against `copies`: node id → that node's partitions, each read whole from its
    /// applied state after the run. Reports the violations of each invariant in turn (see the module doc),
    /// the first node's copy standing for what the region holds.
    pub(crate) fn check(&self, copies: &Copies) -> Vec<Violation> {
        let appends = self.appends.lock().unwrap().clone();
        let reads = self.reads.lock().unwrap().clone();
        let Some((_, reference)) = copies.iter().next() else { return Vec::new() };
        let stored = Stored::index(reference);
        let outcomes = outcomes_by_id(&appends);
        let mut violations = replicas_identical(copies, reference);
        violations.extend(stored_at_most_once(&stored));
        violations.extend(nothing_stored_that_nobody_appended(&stored, &outcomes));
        violations.extend(acknowledged_appends_kept(&stored, &outcomes));
        violations.extend(refused_appends_absent(&stored, &outcomes));
        violations.extend(acknowledged_positions_kept(&stored, &appends));
        violations.extend(revisions_contiguous(&stored));
        violations.extend(one_winner_per_exact_revision(&appends));
        violations.extend(linearizable_reads_never_behind(&appends, &reads));
        violations
    }
}

/// Node id → that node's partitions, each read whole.
pub(crate) type Copies = BTreeMap<u64, Vec<Vec<v1::RecordedEvent>>>;

/// One copy of the region's partitions, indexed: where each event id is stored, and each stream's events.
struct Stored<'a> {
    /// Event id → every stored event carrying it (more than one is a duplicate).
    by_id: BTreeMap<u128, Vec<&'a v1::RecordedEvent>>,
    /// Stream → its events, in offset order.
    by_stream: BTreeMap<&'a str, Vec<&'a v1::RecordedEvent>>,
}

impl<'a> Stored<'a> {
    fn index(partitions: &'a [Vec<v1::RecordedEvent>]) -> Stored<'a> {
        let mut stored = Stored { by_id: BTreeMap::new(), by_stream: BTreeMap::new() };
        for events in partitions {
            for event in events {
                stored.by_id.entry(id_of(event)).or_default().push(event);
                stored.by_stream.entry(&event.stream).or_default().push(event);
            }
        }
        stored
    }

    /// How many times event `id` is stored.
    fn copies_of(&self, id: u128) -> usize {
        self.by_id.get(&id).map_or(0, Vec::len)
    }
}

/// Event id → every append that carried it (an append retried with the same ids is several operations).
fn outcomes_by_id(appends: &[AppendOp]) -> BTreeMap<u128, Vec<&AppendOp>> {
    let mut outcomes: BTreeMap<u128, Vec<&AppendOp>> = BTreeMap::new();
    for op in appends {
        for id in &op.ids {
            outcomes.entry(*id).or_default().push(op);
        }
    }
    outcomes
}

/// Replicas: every node holds byte-identical partitions (each compared with the first node's copy).
fn replicas_identical(copies: &Copies, reference: &[Vec<v1::RecordedEvent>]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (node, partitions) in copies {
        for (partition, events) in partitions.iter().enumerate() {
            if *events != reference[partition] {
                violations.push(Violation::ReplicasDiffer { partition, node: *node });
            }
        }
    }
    violations
}

/// No duplicates: every event is stored at most once — an acknowledged append however often it was
/// retried, and an append whose outcome is unknown once or not at all.
fn stored_at_most_once(stored: &Stored<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (id, events) in &stored.by_id {
        if events.len() > 1 {
            violations.push(Violation::Duplicated { id: *id, copies: events.len() });
        }
    }
    violations
}

/// No phantoms: nothing is stored that no client appended.
fn nothing_stored_that_nobody_appended(
    stored: &Stored<'_>,
    outcomes: &BTreeMap<u128, Vec<&AppendOp>>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (id, events) in &stored.by_id {
        if !outcomes.contains_key(id) {
            violations.push(Violation::Phantom { id: *id, stream: events[0].stream.clone() });
        }
    }
    violations
}

/// Durability: every event of an acknowledged append (by any of its retries) is stored.
fn acknowledged_appends_kept(stored: &Stored<'_>, outcomes: &BTreeMap<u128, Vec<&AppendOp>>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (id, ops) in outcomes {
        let acknowledged = ops.iter().any(|op| matches!(op.outcome, Outcome::Ok(_)));
        if acknowledged && stored.copies_of(*id) == 0 {
            violations.push(Violation::LostAcknowledged { id: *id, stream: ops[0].stream.clone() });
        }
    }
    violations
}

/// Refusals are final: an event whose every append the server refused is not stored.
fn refused_appends_absent(stored: &Stored<'_>, outcomes: &BTreeMap<u128, Vec<&AppendOp>>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (id, ops) in outcomes {
        let definitely_failed = ops.iter().all(|op| matches!(op.outcome, Outcome::Failed(_)));
        if definitely_failed && stored.copies_of(*id) > 0 {
            violations.push(Violation::FailedButPresent { id: *id, stream: ops[0].stream.clone() });
        }
    }
    violations
}

/// Acknowledgements are true: every acknowledged event that is stored is stored at the position its
/// acknowledgement gave.
fn acknowledged_positions_kept(stored: &Stored<'_>, appends: &[AppendOp]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for op in appends {
        let Outcome::Ok(positions) = &op.outcome else { continue };
        for (id, position) in op.ids.iter().zip(positions) {
            let Some(event) = stored.by_id.get(id).and_then(|events| events.first()) else { continue };
            if event.position.as_ref() != Some(position) {
                violations.push(Violation::MovedFromAcknowledged {
                    id: *id,
                    acknowledged: *position,
                    stored: event.position,
                });
            }
        }
    }
    violations
}

/// Streams: each stream's revisions are 0, 1, 2, … in offset order (the first gap or repeat is reported).
fn revisions_contiguous(stored: &Stored<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (stream, events) in &stored.by_stream {
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
    violations
}

/// Optimistic concurrency: at most one distinct append is acknowledged per stream and `exact` expected
/// revision.
fn one_winner_per_exact_revision(appends: &[AppendOp]) -> Vec<Violation> {
    let mut winners: BTreeMap<(&str, u64), Vec<&AppendOp>> = BTreeMap::new();
    for op in appends {
        if let (Some(revision), Outcome::Ok(_)) = (op.expected_exact, &op.outcome) {
            winners.entry((&op.stream, revision)).or_default().push(op);
        }
    }
    let mut violations = Vec::new();
    for ((stream, revision), ops) in winners {
        let distinct: std::collections::BTreeSet<&Vec<u128>> = ops.iter().map(|op| &op.ids).collect();
        if distinct.len() > 1 {
            violations.push(Violation::TwoWinners { stream: stream.to_owned(), revision, winners: distinct.len() });
        }
    }
    violations
}

/// Linearizable reads: a read never sees less of its stream than an append acknowledged before the read
/// began, nor less than a read that completed before it began.
///
/// The floor a read must see is the highest acknowledged length, and the highest read length, among
/// operations on its stream that completed before the read began. Per stream, both are running maxima over
/// completion times, looked up by binary search (a soak has hundreds of thousands of operations).
fn linearizable_reads_never_behind(appends: &[AppendOp], reads: &[ReadOp]) -> Vec<Violation> {
    let mut floors: BTreeMap<&str, Vec<(Instant, u64)>> = BTreeMap::new();
    for op in appends {
        if let Outcome::Ok(positions) = &op.outcome
            && let Some(last) = positions.last()
        {
            floors.entry(&op.stream).or_default().push((op.completed, last.revision + 1));
        }
    }
    for read in reads {
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
    let mut violations = Vec::new();
    for read in reads {
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

fn id_of(event: &v1::RecordedEvent) -> u128 {
    uuid::Uuid::from_slice(&event.id).map_or(0, |id| id.as_u128())
}

/// One way a history and the stored data disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
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
