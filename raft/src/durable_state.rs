//! [`DurableMarks`]: what this node made durable, recorded apart from the database it guards, so that a
//! database that comes back shorter than it was (a corrupt WAL replayed to its first bad record, a lost
//! write) is caught when the node opens instead of silently forgetting a vote or acknowledged entries.
//!
//! The record is one small file, `<data dir>/durable-state` (layout in `log/FORMAT.md`, "Durable-state
//! record"): per group, the last vote saved and a high-water mark of the Raft log that was synced. Votes are
//! recorded (and the file fsynced) right after each vote is; log marks are raised in memory as WAL syncs
//! complete and written at most every [`LOG_MARK_INTERVAL`], off the path of any acknowledgement, so a mark
//! may trail the log by that much but never leads it. A truncation lowers the mark durably before the
//! entries go, so a legitimate truncation never reads as a loss.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

use crate::types::GroupId;
use crate::types::NodeId;

/// First bytes of the record.
const MAGIC: &[u8; 8] = b"FJDUR001";
/// The file's name in the data dir.
pub const FILE_NAME: &str = "durable-state";
/// How often, at most, raised log marks are written.
pub const LOG_MARK_INTERVAL: Duration = Duration::from_millis(200);

/// A vote as recorded: its term, the node voted for, and whether a leader of that term was seen (committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct RecordedVote {
    /// The vote's term.
    pub term: u64,
    /// Whether the vote is committed (a leader of the term is known).
    pub committed: bool,
    /// The node voted for.
    pub node: NodeId,
}

/// What one group made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GroupMark {
    /// The last vote saved.
    pub vote: Option<RecordedVote>,
    /// The highest Raft log index known synced (entries or purged up to it).
    pub log_index: Option<u64>,
}

/// The whole record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DurableState {
    /// Per group.
    pub groups: BTreeMap<GroupId, GroupMark>,
}

/// What the database holds for a group when it opens, to be held against the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundState {
    /// The vote the database holds.
    pub vote: Option<RecordedVote>,
    /// The database's last log index (the last entry's, or the last purged id's).
    pub log_index: Option<u64>,
}

/// A group whose database holds less than the record says it made durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "group {group}: the database holds vote {found_vote:?} and log up to {found_log:?}, but {recorded_vote:?} and log up to {recorded_log:?} were made durable"
)]
pub struct Damage {
    /// The group.
    pub group: GroupId,
    /// The vote found.
    pub found_vote: Option<RecordedVote>,
    /// The vote recorded.
    pub recorded_vote: Option<RecordedVote>,
    /// The log index found.
    pub found_log: Option<u64>,
    /// The log index recorded.
    pub recorded_log: Option<u64>,
}

impl DurableState {
    /// The groups whose database holds less than recorded: an older vote or a shorter log.
    pub fn damage(&self, found: &BTreeMap<GroupId, FoundState>) -> Vec<Damage> {
        let mut damaged = Vec::new();
        for (&group, mark) in &self.groups {
            let state = found.get(&group).copied().unwrap_or(FoundState { vote: None, log_index: None });
            if state.vote < mark.vote || state.log_index < mark.log_index {
                damaged.push(Damage {
                    group,
                    found_vote: state.vote,
                    recorded_vote: mark.vote,
                    found_log: state.log_index,
                    recorded_log: mark.log_index,
                });
            }
        }
        damaged
    }
}

/// The record of one node, kept in memory and written to its file.
pub struct DurableMarks {
    path: PathBuf,
    state: Mutex<Marks>,
}

struct Marks {
    state: DurableState,
    /// Raised in memory since the last write.
    dirty: bool,
    written_at: Instant,
}

impl DurableMarks {
    /// Reads the record in `data_dir` (an empty one if there is none yet). A record that fails its
    /// checksum is an error: what it guards can no longer be checked.
    pub fn open(data_dir: &Path) -> std::io::Result<DurableMarks> {
        let path = data_dir.join(FILE_NAME);
        let state = match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes).map_err(|detail| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {detail}", path.display()))
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => DurableState::default(),
            Err(error) => return Err(error),
        };
        let marks = Marks { state, dirty: false, written_at: Instant::now() };
        Ok(DurableMarks { path, state: Mutex::new(marks) })
    }

    /// The record as it stands.
    pub fn state(&self) -> DurableState {
        self.lock().state.clone()
    }

    /// Records `vote` for `group` and writes the record now (after the vote itself was synced).
    pub fn record_vote(&self, group: GroupId, vote: RecordedVote) -> std::io::Result<()> {
        let mut marks = self.lock();
        marks.state.groups.entry(group).or_default().vote = Some(vote);
        self.write(&mut marks)
    }

    /// Lowers `group`'s log mark to `index` and writes the record now: before a truncation, so the entries
    /// it removes are never counted as lost.
    pub fn lower_log(&self, group: GroupId, index: Option<u64>) -> std::io::Result<()> {
        let mut marks = self.lock();
        let Some(mark) = marks.state.groups.get_mut(&group) else { return Ok(()) };
        if mark.log_index > index {
            mark.log_index = index;
            return self.write(&mut marks);
        }
        Ok(())
    }

    /// Raises each group's log mark to its index (entries synced up to it), in memory: written by
    /// [`DurableMarks::write_if_due`].
    pub fn raise_logs(&self, synced_up_to: impl IntoIterator<Item = (GroupId, u64)>) {
        let mut marks = self.lock();
        for (group, index) in synced_up_to {
            let mark = &mut marks.state.groups.entry(group).or_default().log_index;
            if *mark < Some(index) {
                *mark = Some(index);
                marks.dirty = true;
            }
        }
    }

    /// Writes raised log marks if some are waiting and [`LOG_MARK_INTERVAL`] has passed since the last write.
    pub fn write_if_due(&self) -> std::io::Result<()> {
        let mut marks = self.lock();
        if marks.dirty && marks.written_at.elapsed() >= LOG_MARK_INTERVAL {
            return self.write(&mut marks);
        }
        Ok(())
    }

    /// Sets `group`'s marks to what its repaired database holds, and writes the record.
    pub fn repaired(&self, group: GroupId, found: FoundState) -> std::io::Result<()> {
        let mut marks = self.lock();
        marks.state.groups.insert(group, GroupMark { vote: found.vote, log_index: found.log_index });
        self.write(&mut marks)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the record to a new file, fsyncs it, renames it over the old one and fsyncs the directory.
    fn write(&self, marks: &mut Marks) -> std::io::Result<()> {
        let bytes = encode(&marks.state)?;
        let temporary = self.path.with_extension("new");
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        marks.dirty = false;
        marks.written_at = Instant::now();
        Ok(())
    }
}

fn encode(state: &DurableState) -> std::io::Result<Vec<u8>> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend(postcard::to_allocvec(state).map_err(std::io::Error::other)?);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    Ok(bytes)
}

fn decode(bytes: &[u8]) -> Result<DurableState, String> {
    let body_len = bytes.len().checked_sub(4).filter(|len| *len >= MAGIC.len()).ok_or("too short")?;
    let (body, crc) = bytes.split_at(body_len);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != stored {
        return Err("checksum mismatch".to_owned());
    }
    if &body[..MAGIC.len()] != MAGIC {
        return Err("not a durable-state record (version 1)".to_owned());
    }
    postcard::from_bytes(&body[MAGIC.len()..]).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_record_survives_reopening_and_a_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let marks = DurableMarks::open(dir.path()).unwrap();
        marks.record_vote(0, RecordedVote { term: 3, committed: true, node: 2 }).unwrap();
        marks.raise_logs([(0, 30), (0, 40)]);
        std::thread::sleep(LOG_MARK_INTERVAL);
        marks.write_if_due().unwrap();
        marks.lower_log(1, Some(5)).unwrap();
        let reopened = DurableMarks::open(dir.path()).unwrap().state();
        assert_eq!(reopened, marks.state());
        assert_eq!(reopened.groups[&0].log_index, Some(40));

        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(DurableMarks::open(dir.path()).is_err());
    }

    #[test]
    fn less_than_recorded_is_damage_and_more_is_not() {
        let mut state = DurableState::default();
        let vote = RecordedVote { term: 4, committed: true, node: 1 };
        state.groups.insert(0, GroupMark { vote: Some(vote), log_index: Some(100) });
        let found = |vote, log_index| BTreeMap::from([(0, FoundState { vote, log_index })]);
        assert!(state.damage(&found(Some(vote), Some(100))).is_empty());
        assert!(state.damage(&found(Some(RecordedVote { term: 5, ..vote }), Some(180))).is_empty());
        assert_eq!(state.damage(&found(Some(vote), Some(99))).len(), 1, "a shorter log");
        assert_eq!(state.damage(&found(Some(RecordedVote { term: 3, ..vote }), Some(100))).len(), 1, "an older vote");
        assert_eq!(state.damage(&found(None, None)).len(), 1, "nothing at all");
    }
}
