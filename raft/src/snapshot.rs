//! Snapshots of a partition group: a file of chained segments, never one in-memory blob.
//!
//! A snapshot file is `"FJSNAP01"` followed by frames `length (u64 LE) ‖ segment`, where each segment is
//! in the format of log/FORMAT.md and chains onto the one before it (the first onto the seed). Building
//! writes the partition's records up to a consistent cut; installing decodes and verifies every segment
//! while it restores the partition, so a corrupt or truncated snapshot is refused, never installed.
//! openraft ships the file in chunks; [`SnapshotFile`] is the handle it reads and writes.

use std::fs::File;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use fjord_log::PartitionLog;
use fjord_log::RecordedEvent;
use fjord_log::segment::CHAIN_SEED;
use fjord_log::segment::SegmentEncoder;
use fjord_log::segment::SegmentError;
use fjord_log::segment::SegmentHeader;
use fjord_log::segment::decode_segment;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::io::AsyncSeek;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use uuid::Uuid;

/// First bytes of every snapshot file.
const SNAPSHOT_MAGIC: &[u8; 8] = b"FJSNAP01";
/// Records per segment in a snapshot.
const RECORDS_PER_SEGMENT: u64 = 16 * 1024;
/// A frame longer than this is refused as corrupt rather than allocated.
const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// Who owns the partitions being snapshotted, written into every segment header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionIdentity {
    /// The cluster.
    pub cluster_id: Uuid,
    /// The region's name.
    pub region: String,
}

/// A snapshot's bytes on disk, as openraft streams them: a file and where it lives.
#[derive(Debug)]
pub struct SnapshotFile {
    file: tokio::fs::File,
    path: PathBuf,
}

impl SnapshotFile {
    /// Opens an existing snapshot file for reading.
    pub(crate) fn open(path: PathBuf) -> std::io::Result<Self> {
        Ok(SnapshotFile { file: tokio::fs::File::from_std(File::open(&path)?), path })
    }

    /// Creates an empty file to receive a snapshot into.
    pub(crate) fn create(path: PathBuf) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok(SnapshotFile { file: tokio::fs::File::from_std(file), path })
    }

    /// Where the bytes are.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: std::io::SeekFrom) -> std::io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}

/// Writes the records of `log` in `[0, next_offset)` to a new snapshot file at `path` and fsyncs it.
/// `epoch` goes into every segment header (the term of the snapshot's last log id).
pub(crate) fn write_snapshot(
    log: &PartitionLog,
    identity: &RegionIdentity,
    epoch: u64,
    next_offset: u64,
    path: &Path,
) -> fjord_log::Result<()> {
    let io = |e: std::io::Error| fjord_log::Error::from(SegmentError::Encode(format!("{}: {e}", path.display())));
    let file = File::create(path).map_err(io)?;
    let mut out = BufWriter::new(file);
    out.write_all(SNAPSHOT_MAGIC).map_err(io)?;
    let mut chain = CHAIN_SEED;
    let mut base = 0;
    while base < next_offset {
        let end = next_offset.min(base + RECORDS_PER_SEGMENT);
        let header = SegmentHeader {
            cluster_id: identity.cluster_id,
            region: identity.region.clone(),
            partition: log.partition(),
            epoch,
            base_offset: base,
        };
        let mut encoder = SegmentEncoder::new(Vec::new(), &header, chain)?;
        for event in log.read_partition(base, end - base) {
            encoder.push(&event?)?;
        }
        let (bytes, summary) = encoder.finish(end)?;
        out.write_all(&(bytes.len() as u64).to_le_bytes()).map_err(io)?;
        out.write_all(&bytes).map_err(io)?;
        chain = summary.chain_checksum;
        base = end;
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}

/// The records of a snapshot file, verified segment by segment as they are read.
pub(crate) struct SnapshotRecords {
    input: BufReader<File>,
    partition: u32,
    chain: u32,
    next_offset: u64,
    current: std::vec::IntoIter<RecordedEvent>,
    failed: bool,
}

impl SnapshotRecords {
    /// Opens a snapshot file of `partition` and checks its magic.
    pub(crate) fn open(path: &Path, partition: u32) -> fjord_log::Result<Self> {
        let mut input = BufReader::new(File::open(path).map_err(|e| corrupt(format!("{}: {e}", path.display())))?);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).map_err(|_| corrupt("shorter than its magic".to_owned()))?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(corrupt("not a Fjord snapshot file".to_owned()));
        }
        Ok(SnapshotRecords {
            input,
            partition,
            chain: CHAIN_SEED,
            next_offset: 0,
            current: Vec::new().into_iter(),
            failed: false,
        })
    }

    /// Reads and verifies the next segment; `None` at a clean end of file.
    fn next_segment(&mut self) -> fjord_log::Result<Option<Vec<RecordedEvent>>> {
        let mut length = [0u8; 8];
        match self.input.read(&mut length[..1]) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(corrupt(e.to_string())),
        }
        self.input.read_exact(&mut length[1..]).map_err(|_| corrupt("frame length cut short".to_owned()))?;
        let length = u64::from_le_bytes(length);
        if length > MAX_SEGMENT_BYTES {
            return Err(corrupt(format!("a segment of {length} bytes")));
        }
        let mut bytes = vec![0u8; length as usize];
        self.input.read_exact(&mut bytes).map_err(|_| corrupt("segment cut short".to_owned()))?;
        let segment = decode_segment(&bytes, self.chain)?;
        if segment.header.partition != self.partition || segment.header.base_offset != self.next_offset {
            return Err(corrupt(format!(
                "segment of partition {} at {} where partition {} at {} was due",
                segment.header.partition, segment.header.base_offset, self.partition, self.next_offset
            )));
        }
        self.chain = segment.summary.chain_checksum;
        self.next_offset = segment.summary.next_offset;
        Ok(Some(segment.records))
    }
}

impl Iterator for SnapshotRecords {
    type Item = fjord_log::Result<RecordedEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(record) = self.current.next() {
                return Some(Ok(record));
            }
            match self.next_segment() {
                Ok(Some(records)) => self.current = records.into_iter(),
                Ok(None) => return None,
                Err(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            }
        }
    }
}

fn corrupt(detail: String) -> fjord_log::Error {
    fjord_log::Error::Corrupt { what: "snapshot", detail }
}
