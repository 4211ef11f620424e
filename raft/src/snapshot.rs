//! Snapshots of a partition group, built from the partition's sealed segments plus its open tail: a
//! snapshot never rewrites the sealed prefix, it refers to the segment files (see `fjord_log::sealed`).
//!
//! On the wire (and in a received file) a snapshot is `"FJSNAP02"` followed by frames
//! `kind (u8) ‖ length (u64 LE) ‖ segment`, each segment in the format of log/FORMAT.md, chained from the
//! seed in offset order: first the sealed segments (kind 1), byte for byte as the sender stores them, then
//! the tail (kind 2: one or more segments of the records after the last sealed one, up to the snapshot's
//! cut). The sender keeps a [`SnapshotManifest`] — the sealed segments and a file holding the tail frames —
//! and streams the concatenation from those files ([`SnapshotFile`]); nothing is copied to build it.
//! The receiver verifies every segment before it touches the partition, adopts the sealed segments as its
//! own, and restores the partition from the records.

use std::fs::File;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::SeekFrom;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::task::ready;

use fjord_log::Offset;
use fjord_log::PartitionLog;
use fjord_log::RecordedEvent;
use fjord_log::sealed::LogIdentity;
use fjord_log::sealed::SealedSegment;
use fjord_log::segment::CHAIN_SEED;
use fjord_log::segment::Segment;
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

/// First bytes of every snapshot.
const SNAPSHOT_MAGIC: &[u8; 8] = b"FJSNAP02";
/// A frame holding one of the sender's sealed segments.
const FRAME_SEALED: u8 = 1;
/// A frame holding part of the open tail.
pub(crate) const FRAME_TAIL: u8 = 2;
/// Bytes of a frame header: kind and length.
const FRAME_HEADER_BYTES: usize = 9;
/// Bytes of a tail frame's segment, at which it closes (after the record that reaches it), so no frame
/// built or verified in memory is large, however long the tail or large its events.
const TAIL_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// A frame longer than this is refused as corrupt rather than allocated.
const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// What a snapshot held by this node is made of: sealed segments of the catalog, then the tail frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// The sealed segments, in offset order, from offset 0.
    pub sealed: Vec<SealedSegment>,
    /// The file (in the group's snapshot directory) holding the tail frames.
    pub tail_file: String,
    /// The snapshot's cut: the offset after its last record.
    pub next_offset: u64,
}

/// The header of a frame of `kind` holding a segment of `len` bytes.
pub(crate) fn frame_header(kind: u8, len: u64) -> [u8; FRAME_HEADER_BYTES] {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0] = kind;
    header[1..].copy_from_slice(&len.to_le_bytes());
    header
}

/// Writes the tail frames of a snapshot — the records of `log` in `[base, next_offset)`, chained from
/// `previous_chain` — to a new file at `path`, and fsyncs it.
pub(crate) fn write_tail(
    log: &PartitionLog,
    identity: &LogIdentity,
    base: u64,
    previous_chain: u32,
    next_offset: u64,
    path: &Path,
) -> fjord_log::Result<()> {
    let io = |e: std::io::Error| fjord_log::Error::from(SegmentError::Encode(format!("{}: {e}", path.display())));
    let mut out = BufWriter::new(File::create(path).map_err(io)?);
    let (mut chain, mut from) = (previous_chain, base);
    let mut events = log.read_partition(Offset(base), next_offset - base);
    // At least one frame, even for an empty tail: the receiver learns the cut from its footer.
    loop {
        let header = SegmentHeader {
            cluster_id: identity.cluster_id,
            region: identity.region.clone(),
            partition: log.partition().0,
            base_offset: from,
        };
        let mut encoder = SegmentEncoder::new(Vec::new(), &header, chain)?;
        let mut end = next_offset;
        while encoder.bytes_so_far() < TAIL_SEGMENT_BYTES {
            let Some(event) = events.next() else { break };
            let event = event?;
            encoder.push(&event)?;
            end = event.offset.0 + 1;
        }
        let (bytes, summary) = encoder.finish(end)?;
        out.write_all(&frame_header(FRAME_TAIL, bytes.len() as u64)).map_err(io)?;
        out.write_all(&bytes).map_err(io)?;
        chain = summary.chain_checksum;
        from = end;
        if from >= next_offset {
            break;
        }
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}

/// A snapshot's bytes as openraft streams them: a received file being written, or a held snapshot read as
/// the concatenation of its parts.
#[derive(Debug)]
pub struct SnapshotFile {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Receiving { file: tokio::fs::File, path: PathBuf },
    Sending(PartsReader),
}

impl SnapshotFile {
    /// Creates an empty file to receive a snapshot into.
    pub(crate) fn create(path: PathBuf) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok(SnapshotFile { inner: Inner::Receiving { file: tokio::fs::File::from_std(file), path } })
    }

    /// Opens a held snapshot for reading: `sealed` are the sealed segments' files, `tail` the tail frames'.
    /// Every file is opened now, so the snapshot stays readable whatever happens to the names later.
    pub(crate) fn open(sealed: &[(PathBuf, u64)], tail: &Path) -> std::io::Result<Self> {
        let mut parts = vec![Part::Bytes(SNAPSHOT_MAGIC.to_vec())];
        for (path, len) in sealed {
            parts.push(Part::Bytes(frame_header(FRAME_SEALED, *len).to_vec()));
            parts.push(Part::file(path, *len)?);
        }
        let tail_len = std::fs::metadata(tail)?.len();
        parts.push(Part::file(tail, tail_len)?);
        Ok(SnapshotFile { inner: Inner::Sending(PartsReader::new(parts)) })
    }

    /// Where a received snapshot is being written (`None` for a held snapshot being read).
    pub fn received_path(&self) -> Option<&Path> {
        match &self.inner {
            Inner::Receiving { path, .. } => Some(path),
            Inner::Sending(_) => None,
        }
    }
}

fn not_writable() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::Unsupported, "a held snapshot is read-only")
}

impl AsyncRead for SnapshotFile {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.inner {
            Inner::Receiving { file, .. } => Pin::new(file).poll_read(cx, buf),
            Inner::Sending(parts) => parts.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.inner {
            Inner::Receiving { file, .. } => Pin::new(file).poll_write(cx, buf),
            Inner::Sending(_) => Poll::Ready(Err(not_writable())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.inner {
            Inner::Receiving { file, .. } => Pin::new(file).poll_flush(cx),
            Inner::Sending(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.inner {
            Inner::Receiving { file, .. } => Pin::new(file).poll_shutdown(cx),
            Inner::Sending(_) => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        match &mut self.inner {
            Inner::Receiving { file, .. } => Pin::new(file).start_seek(position),
            Inner::Sending(parts) => parts.start_seek(position),
        }
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        match &mut self.inner {
            Inner::Receiving { file, .. } => Pin::new(file).poll_complete(cx),
            Inner::Sending(parts) => Poll::Ready(Ok(parts.position)),
        }
    }
}

/// One piece of a held snapshot's byte stream.
#[derive(Debug)]
enum Part {
    Bytes(Vec<u8>),
    File {
        file: tokio::fs::File,
        len: u64,
        /// Where the file's own cursor is, when known; a read elsewhere seeks first.
        cursor: Option<u64>,
        seeking: bool,
    },
}

impl Part {
    fn file(path: &Path, len: u64) -> std::io::Result<Part> {
        let file = tokio::fs::File::from_std(File::open(path)?);
        Ok(Part::File { file, len, cursor: Some(0), seeking: false })
    }

    fn len(&self) -> u64 {
        match self {
            Part::Bytes(bytes) => bytes.len() as u64,
            Part::File { len, .. } => *len,
        }
    }
}

/// Reads the concatenation of parts, seekable; file reads go through tokio (the blocking pool).
#[derive(Debug)]
struct PartsReader {
    parts: Vec<Part>,
    /// Where each part starts in the stream.
    starts: Vec<u64>,
    len: u64,
    position: u64,
}

impl PartsReader {
    fn new(parts: Vec<Part>) -> Self {
        let mut starts = Vec::with_capacity(parts.len());
        let mut len = 0;
        for part in &parts {
            starts.push(len);
            len += part.len();
        }
        PartsReader { parts, starts, len, position: 0 }
    }

    fn start_seek(&mut self, position: SeekFrom) -> std::io::Result<()> {
        let target = match position {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start of the snapshot")
        })?;
        Ok(())
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.position >= self.len || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let index = self.starts.partition_point(|&start| start <= self.position) - 1;
        let within = self.position - self.starts[index];
        let room = self.parts[index].len() - within;
        let want = usize::try_from(room).unwrap_or(usize::MAX).min(buf.remaining());
        match &mut self.parts[index] {
            Part::Bytes(bytes) => {
                let at = within as usize;
                buf.put_slice(&bytes[at..at + want]);
            }
            Part::File { file, cursor, seeking, .. } => {
                if *cursor != Some(within) {
                    if !*seeking {
                        Pin::new(&mut *file).start_seek(SeekFrom::Start(within))?;
                        *seeking = true;
                    }
                    let landed = ready!(Pin::new(&mut *file).poll_complete(cx));
                    *seeking = false;
                    *cursor = Some(landed?);
                    if *cursor != Some(within) {
                        return Poll::Ready(Err(std::io::Error::other("a snapshot file did not seek where asked")));
                    }
                }
                let mut scratch = vec![0u8; want];
                let mut read = ReadBuf::new(&mut scratch);
                ready!(Pin::new(&mut *file).poll_read(cx, &mut read))?;
                let n = read.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "a snapshot file is shorter than its catalogued length",
                    )));
                }
                buf.put_slice(&scratch[..n]);
                *cursor = Some(within + n as u64);
                self.position += n as u64;
                return Poll::Ready(Ok(()));
            }
        }
        self.position += want as u64;
        Poll::Ready(Ok(()))
    }
}

/// One verified frame of a received snapshot.
pub(crate) struct Frame {
    /// Whether the sender had it sealed (else it is part of the tail).
    pub(crate) sealed: bool,
    /// The segment's bytes, as received.
    pub(crate) bytes: Vec<u8>,
    /// The segment, decoded and verified against the chain.
    pub(crate) segment: Segment,
}

/// The frames of a received snapshot, each verified (checksums, chain, partition, contiguity) as it is read.
pub(crate) struct SnapshotFrames {
    input: BufReader<File>,
    partition: u32,
    chain: u32,
    next_offset: u64,
    seen_tail: bool,
    failed: bool,
}

impl SnapshotFrames {
    /// Opens a received snapshot of `partition` and checks its magic.
    pub(crate) fn open(path: &Path, partition: u32) -> fjord_log::Result<Self> {
        let mut input = BufReader::new(File::open(path).map_err(|e| corrupt(format!("{}: {e}", path.display())))?);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).map_err(|_| corrupt("shorter than its magic".to_owned()))?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(corrupt("not a Fjord snapshot (version 2)".to_owned()));
        }
        Ok(SnapshotFrames { input, partition, chain: CHAIN_SEED, next_offset: 0, seen_tail: false, failed: false })
    }

    /// Opens the tail file of a snapshot this node holds (frames only, no magic), whose first record is
    /// `base` of `partition` and whose sealed segments end at chain checksum `chain`.
    fn open_tail(path: &Path, partition: u32, base: u64, chain: u32) -> fjord_log::Result<Self> {
        let input = BufReader::new(File::open(path).map_err(|e| corrupt(format!("{}: {e}", path.display())))?);
        Ok(SnapshotFrames { input, partition, chain, next_offset: base, seen_tail: false, failed: false })
    }

    /// Reads and verifies the next frame; `None` at a clean end of file.
    fn next_frame(&mut self) -> fjord_log::Result<Option<Frame>> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        match self.input.read(&mut header[..1]) {
            Ok(0) if self.seen_tail => return Ok(None),
            Ok(0) => return Err(corrupt("ends before its tail".to_owned())),
            Ok(_) => {}
            Err(e) => return Err(corrupt(e.to_string())),
        }
        self.input.read_exact(&mut header[1..]).map_err(|_| corrupt("frame header cut short".to_owned()))?;
        let (kind, mut length) = (header[0], [0u8; 8]);
        length.copy_from_slice(&header[1..]);
        let length = u64::from_le_bytes(length);
        let sealed = match kind {
            FRAME_SEALED if !self.seen_tail => true,
            FRAME_TAIL => false,
            other => return Err(corrupt(format!("a frame of kind {other} where none is allowed"))),
        };
        self.seen_tail |= !sealed;
        if length > MAX_SEGMENT_BYTES {
            return Err(corrupt(format!("a segment of {length} bytes")));
        }
        // Read as far as the bytes go, never allocated up front by the claimed length.
        let mut bytes = Vec::new();
        (&mut self.input).take(length).read_to_end(&mut bytes).map_err(|e| corrupt(e.to_string()))?;
        if bytes.len() as u64 != length {
            return Err(corrupt("segment cut short".to_owned()));
        }
        let segment = decode_segment(&bytes, self.chain)?;
        if segment.header.partition != self.partition || segment.header.base_offset != self.next_offset {
            return Err(corrupt(format!(
                "segment of partition {} at {} where partition {} at {} was due",
                segment.header.partition, segment.header.base_offset, self.partition, self.next_offset
            )));
        }
        self.chain = segment.summary.chain_checksum;
        self.next_offset = segment.summary.next_offset;
        Ok(Some(Frame { sealed, bytes, segment }))
    }
}

impl Iterator for SnapshotFrames {
    type Item = fjord_log::Result<Frame>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let frame = self.next_frame().transpose();
        self.failed = matches!(frame, Some(Err(_)));
        frame
    }
}

/// Reads a held snapshot's tail file whole and checks it: every frame a tail frame that passes its checksums,
/// chained on from the manifest's last sealed segment, ending at the manifest's cut. Returns its length.
pub(crate) fn verify_tail(manifest: &SnapshotManifest, path: &Path, partition: u32) -> fjord_log::Result<u64> {
    let last = manifest.sealed.last();
    let (base, chain) = (last.map_or(0, |s| s.next_offset), last.map_or(CHAIN_SEED, |s| s.chain_checksum));
    let mut frames = SnapshotFrames::open_tail(path, partition, base, chain)?;
    for frame in &mut frames {
        if frame?.sealed {
            return Err(corrupt(format!("{}: a sealed frame in a tail file", path.display())));
        }
    }
    if frames.next_offset != manifest.next_offset {
        return Err(corrupt(format!(
            "{}: ends at {} where the cut is {}",
            path.display(),
            frames.next_offset,
            manifest.next_offset
        )));
    }
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| corrupt(format!("{}: {e}", path.display())))
}

/// The records of a received snapshot, frame by frame, in offset order.
pub(crate) fn snapshot_records(frames: SnapshotFrames) -> impl Iterator<Item = fjord_log::Result<RecordedEvent>> {
    frames.flat_map(|frame| -> Box<dyn Iterator<Item = fjord_log::Result<RecordedEvent>>> {
        match frame {
            Ok(frame) => Box::new(frame.segment.records.into_iter().map(Ok)),
            Err(error) => Box::new(std::iter::once(Err(error))),
        }
    })
}

fn corrupt(detail: String) -> fjord_log::Error {
    fjord_log::Error::Corrupt { what: "snapshot", detail }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fjord_log::Revision;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;

    fn events(count: usize, data: &[u8]) -> Vec<RecordedEvent> {
        (0..count)
            .map(|n| RecordedEvent {
                id: Uuid::from_u128(n as u128 + 1),
                stream: format!("s-{}", n % 3),
                event_type: "T".to_owned(),
                content_type: String::new(),
                data: data.to_vec(),
                metadata: BTreeMap::new(),
                offset: Offset(n as u64),
                revision: Revision((n / 3) as u64),
                timestamp_micros: n as i64,
            })
            .collect()
    }

    /// A received snapshot of partition 0: the magic and one tail frame holding `events`.
    fn snapshot_bytes(events: &[RecordedEvent]) -> Vec<u8> {
        let header =
            SegmentHeader { cluster_id: Uuid::from_u128(7), region: "r".to_owned(), partition: 0, base_offset: 0 };
        let mut encoder = SegmentEncoder::with_batch_bytes(Vec::new(), &header, CHAIN_SEED, 64).unwrap();
        for event in events {
            encoder.push(event).unwrap();
        }
        let (segment, _) = encoder.finish(events.len() as u64).unwrap();
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bytes.extend_from_slice(&frame_header(FRAME_TAIL, segment.len() as u64));
        bytes.extend_from_slice(&segment);
        bytes
    }

    fn read_back(bytes: &[u8]) -> fjord_log::Result<Vec<RecordedEvent>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.snap");
        std::fs::write(&path, bytes).unwrap();
        snapshot_records(SnapshotFrames::open(&path, 0)?).collect()
    }

    #[test]
    fn a_frame_that_claims_more_bytes_than_it_has_is_refused_without_allocating_them() {
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bytes.extend_from_slice(&frame_header(FRAME_TAIL, MAX_SEGMENT_BYTES));
        bytes.extend_from_slice(b"short");
        let error = read_back(&bytes).unwrap_err();
        assert!(error.to_string().contains("cut short"), "{error}");
    }

    proptest! {
        /// Fuzz target: a received snapshot with bytes overwritten, inserted and cut reads back exactly what
        /// was sent or fails cleanly, never panics. More cases on demand: `PROPTEST_CASES=50000`.
        #[test]
        fn fuzz_damaged_snapshots_read_back_whole_or_fail_cleanly(
            count in 0usize..20,
            data in vec(any::<u8>(), 0..40),
            edits in vec(any::<fjord_log::fuzzing::Edit>(), 0..6),
        ) {
            let sent = events(count, &data);
            let mut bytes = snapshot_bytes(&sent);
            prop_assert_eq!(read_back(&bytes).unwrap(), sent.clone());
            fjord_log::fuzzing::damage(&mut bytes, &edits);
            if let Ok(received) = read_back(&bytes) {
                prop_assert_eq!(received, sent);
            }
        }
    }
}
