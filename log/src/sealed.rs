//! Sealed segments stored once: a partition's applied prefix, cut into immutable segment files (the format of
//! log/FORMAT.md) that snapshots, edge catch-up and archives reuse without re-encoding.
//!
//! Where a segment ends is a function of the records alone ([`SealPolicy`]): a segment closes after the
//! record that brings it to `segment_bytes` of records, or before the first record committed `max_age`
//! after the segment's first record. So every replica seals the same segments, byte for byte, whatever the
//! Raft term or which node led, and a partition's chain checksum at any offset is the same everywhere
//! (see [`crate::segment::fold_chain`]).
//!
//! Files live in `<dir>/<partition>/<base>-<next>-<chain>.seg`; the catalog of each partition's segments is
//! in the store's `segments` column family. A segment is written to a temporary file, fsynced, renamed, its
//! directory fsynced, and only then catalogued, so the catalog never names a file that is not whole on disk.
//! The catalog entry gets no fsync of its own (it must not sync the WAL the write path shares, off that
//! path's schedule): it is durable with the next WAL sync, and a crash that loses it leaves an uncatalogued
//! file, removed at open and sealed again. Nothing sealed can be lost that the log does not still hold. Only committed (applied) records are
//! sealed, so a segment never changes meaning: after a power loss the applied offset may be behind the
//! sealed one until the Raft log re-applies the same records.
//!
//! RocksDB keeps the sealed prefix too: reads by stream, the stream index and the durable dedupe index
//! all live there, and nothing trims a partition yet (retention will). Segments are the unit that moves.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use rocksdb::DB;
use rocksdb::ReadOptions;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use serde::Deserialize;
use serde::Serialize;
use uuid::Uuid;

use crate::error::Error;
use crate::error::Result;
use crate::ids::Offset;
use crate::keys;
use crate::keys::cf;
use crate::partition::PartitionLog;
use crate::segment::CHAIN_SEED;
use crate::segment::SegmentEncoder;
use crate::segment::SegmentHeader;
use crate::segment::SegmentReader;
use crate::segment::fold_chain;
use crate::store::LogStore;
use crate::tail::TailChange;

/// Where sealed segments are cut. Part of a region's identity in practice: replicas with different policies
/// still agree on every chain checksum, but not on segment boundaries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SealPolicy {
    /// A segment closes after the record that brings its records to this many bytes.
    pub segment_bytes: u64,
    /// A segment closes before the first record committed this many seconds after its first record.
    pub max_age_secs: u64,
}

impl Default for SealPolicy {
    fn default() -> Self {
        SealPolicy { segment_bytes: 8 * 1024 * 1024, max_age_secs: 600 }
    }
}

/// One sealed segment, as the catalog records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSegment {
    /// The partition.
    pub partition: u32,
    /// The first offset covered.
    pub base_offset: u64,
    /// The offset after the covered range.
    pub next_offset: u64,
    /// Records in the segment.
    pub record_count: u64,
    /// The partition's chain checksum at `next_offset`.
    pub chain_checksum: u32,
    /// The file's length in bytes.
    pub file_bytes: u64,
}

impl SealedSegment {
    /// The segment's file name: base, next offset and chain checksum name its content.
    pub fn file_name(&self) -> String {
        format!("{:020}-{:020}-{:08x}.seg", self.base_offset, self.next_offset, self.chain_checksum)
    }

    fn catalog_value(&self) -> [u8; 28] {
        let mut value = [0u8; 28];
        value[..8].copy_from_slice(&self.next_offset.to_le_bytes());
        value[8..16].copy_from_slice(&self.record_count.to_le_bytes());
        value[16..20].copy_from_slice(&self.chain_checksum.to_le_bytes());
        value[20..].copy_from_slice(&self.file_bytes.to_le_bytes());
        value
    }

    fn from_catalog(partition: u32, key: &[u8], value: &[u8]) -> Result<SealedSegment> {
        let corrupt = || Error::corrupt("segment catalog", format!("{} bytes under key {key:?}", value.len()));
        let base: [u8; 8] = key.get(4..12).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?;
        if value.len() != 28 {
            return Err(corrupt());
        }
        let u64_at = |at: usize| value[at..at + 8].try_into().map(u64::from_le_bytes).map_err(|_| corrupt());
        let chain: [u8; 4] = value[16..20].try_into().map_err(|_| corrupt())?;
        Ok(SealedSegment {
            partition,
            base_offset: u64::from_be_bytes(base),
            next_offset: u64_at(0)?,
            record_count: u64_at(8)?,
            chain_checksum: u32::from_le_bytes(chain),
            file_bytes: u64_at(20)?,
        })
    }
}

/// Who the segments belong to: written into every segment header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogIdentity {
    /// The cluster, generated when the region was created.
    pub cluster_id: Uuid,
    /// The home region of the partitions.
    pub region: String,
}

/// A node's sealed segments: the files and their catalog, per partition, and the cluster id their headers
/// carry (stored in the store's metadata once the node learns it; nothing is sealed before).
pub struct SegmentCatalog {
    db: Arc<DB>,
    dir: PathBuf,
    region: String,
    cluster_id: Mutex<Option<Uuid>>,
    policy: SealPolicy,
    /// Per partition: its segments in offset order, and the sealer's progress past the last one.
    partitions: Vec<PartitionSlot>,
}

/// One partition's segments. `work` is held while a segment is sealed or the catalog replaced (slow: file
/// writes and fsyncs); `state` only for a moment, so readers of the catalog never wait behind a seal.
struct PartitionSlot {
    work: Mutex<()>,
    state: Mutex<PartitionSegments>,
}

#[derive(Default)]
struct PartitionSegments {
    sealed: Vec<SealedSegment>,
    scan: Scan,
}

/// How far the sealer has looked past the last sealed segment without finding a cut.
#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    /// The next offset to look at.
    next: u64,
    /// Record bytes from the segment's base to `next`.
    bytes: u64,
    /// The commit time of the segment's first record.
    first_micros: Option<i64>,
}

impl SegmentCatalog {
    /// Opens the catalog of `store` for the partitions of `region`, with segment files under `dir`, and
    /// removes files a crash left uncatalogued. Catalogued files are checked by [`SegmentCatalog::verify`].
    pub fn open(store: &LogStore, dir: &Path, region: &str, policy: SealPolicy) -> Result<Self> {
        let db = store.db().clone();
        let cluster_id = match db.get_cf(cf(&db, keys::CF_META)?, keys::META_CLUSTER_ID)? {
            None => None,
            Some(bytes) => Some(Uuid::from_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::corrupt("cluster id", format!("{} bytes", bytes.len())))?,
            )),
        };
        let mut partitions = Vec::new();
        for partition in 0..store.partition_count() {
            let sealed = read_catalog(&db, partition)?;
            let partition_dir = dir.join(partition.to_string());
            std::fs::create_dir_all(&partition_dir).map_err(|e| io("creating", &partition_dir, e))?;
            remove_uncatalogued(&partition_dir, &sealed);
            let next = sealed.last().map_or(0, |s| s.next_offset);
            let state = Mutex::new(PartitionSegments { sealed, scan: Scan { next, ..Scan::default() } });
            partitions.push(PartitionSlot { work: Mutex::new(()), state });
        }
        Ok(SegmentCatalog {
            db,
            dir: dir.to_owned(),
            region: region.to_owned(),
            cluster_id: Mutex::new(cluster_id),
            policy,
            partitions,
        })
    }

    /// Reads every catalogued segment whole and checks it against its catalog entry: the file is there with
    /// its length, every batch passes its CRC, and the records fold from the previous segment's chain
    /// checksum to its own. Returns the bytes read; the first damaged segment is an error naming its file.
    /// Blocking: one read of every segment file.
    pub fn verify(&self) -> Result<u64> {
        let mut bytes = 0;
        for partition in 0..self.partitions.len() as u32 {
            let mut chain = CHAIN_SEED;
            for segment in self.sealed(partition)? {
                let path = self.path_of(&segment);
                let damaged =
                    |detail: String| Error::corrupt("sealed segment", format!("{}: {detail}", path.display()));
                let len = std::fs::metadata(&path).map_err(|e| damaged(e.to_string()))?.len();
                if len != segment.file_bytes {
                    return Err(damaged(format!("{len} bytes where the catalog says {}", segment.file_bytes)));
                }
                let reader = self.open_segment(&segment).map_err(|e| damaged(e.to_string()))?;
                let (header, summary) = (reader.header(), *reader.summary());
                if header.partition != partition || header.base_offset != segment.base_offset {
                    return Err(damaged(format!(
                        "its header says partition {} at {}",
                        header.partition, header.base_offset
                    )));
                }
                if summary.next_offset != segment.next_offset || summary.chain_checksum != segment.chain_checksum {
                    return Err(damaged(format!("its footer says {summary:?}")));
                }
                for record in reader.records(chain) {
                    record.map_err(|e| damaged(e.to_string()))?;
                }
                chain = segment.chain_checksum;
                bytes += len;
            }
        }
        Ok(bytes)
    }

    /// The cluster the store belongs to, once known.
    pub fn cluster_id(&self) -> Option<Uuid> {
        *self.cluster_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records (synced) that the store belongs to cluster `id`. Learning the same id again changes nothing;
    /// another id is refused: this data dir belongs to another cluster. Blocking.
    pub fn adopt_cluster_id(&self, id: Uuid) -> Result<()> {
        let mut cluster_id = self.cluster_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(known) = *cluster_id {
            return if known == id {
                Ok(())
            } else {
                Err(Error::Config(format!("this data dir belongs to cluster {known}; the region's cluster is {id}")))
            };
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, keys::CF_META)?, keys::META_CLUSTER_ID, id.as_bytes());
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        *cluster_id = Some(id);
        tracing::info!(cluster = %id, "cluster id recorded");
        Ok(())
    }

    /// Who the segments belong to, once the cluster id is known.
    pub fn identity(&self) -> Option<LogIdentity> {
        Some(LogIdentity { cluster_id: self.cluster_id()?, region: self.region.clone() })
    }

    /// The sealed segments of `partition`, in offset order.
    pub fn sealed(&self, partition: u32) -> Result<Vec<SealedSegment>> {
        Ok(self.slot(partition)?.state().sealed.clone())
    }

    /// Where `segment`'s file is.
    pub fn path_of(&self, segment: &SealedSegment) -> PathBuf {
        self.dir.join(segment.partition.to_string()).join(segment.file_name())
    }

    /// Opens a sealed segment for reading (header and footer verified).
    pub fn open_segment(&self, segment: &SealedSegment) -> Result<SegmentReader<std::io::BufReader<std::fs::File>>> {
        let path = self.path_of(segment);
        let file = std::fs::File::open(&path).map_err(|e| io("opening", &path, e))?;
        SegmentReader::open(std::io::BufReader::new(file))
    }

    /// The chain checksum of `log`'s partition at `offset` (every record below it folded), from the last
    /// sealed segment at or below `offset` and the records after it. `offset` must be applied here.
    pub fn chain_at(&self, log: &PartitionLog, offset: u64) -> Result<u32> {
        let applied = log.next_offset().0;
        if offset > applied {
            return Err(Error::Config(format!(
                "offset {offset} of partition {} is past its applied end {applied}",
                log.partition()
            )));
        }
        let partition = log.partition().0;
        let start = self.slot(partition)?.state().sealed.iter().rev().find(|s| s.next_offset <= offset).copied();
        let (mut chain, from) = start.map_or((CHAIN_SEED, 0), |s| (s.chain_checksum, s.next_offset));
        let mut next = from;
        scan_raw(&self.db, partition, from, offset, |_, record| {
            chain = fold_chain(chain, record);
            next += 1;
            Ok(true)
        })?;
        if next != offset {
            return Err(Error::corrupt("partition log", format!("offset {next} is missing below {offset}")));
        }
        Ok(chain)
    }

    /// Seals every segment of `log` that its applied records complete, and returns them. Blocking.
    #[tracing::instrument(level = "debug", skip_all, fields(partition = %log.partition()))]
    pub fn seal_ready(&self, log: &PartitionLog) -> Result<Vec<SealedSegment>> {
        let mut sealed = Vec::new();
        while let Some(segment) = self.seal_next(log)? {
            tracing::info!(
                partition = segment.partition,
                base_offset = segment.base_offset,
                next_offset = segment.next_offset,
                chain = %format_args!("{:08x}", segment.chain_checksum),
                "segment sealed"
            );
            sealed.push(segment);
        }
        Ok(sealed)
    }

    /// Seals the next segment if the applied records complete it. Holds the partition's work lock
    /// throughout, so a snapshot install cannot replace the catalog under it.
    fn seal_next(&self, log: &PartitionLog) -> Result<Option<SealedSegment>> {
        let Some(identity) = self.identity() else { return Ok(None) };
        let partition = log.partition().0;
        let applied = log.next_offset().0;
        let slot = self.slot(partition)?;
        let _work = lock(&slot.work);
        let (base, previous_chain, mut scan) = {
            let state = slot.state();
            let last = state.sealed.last();
            (last.map_or(0, |s| s.next_offset), last.map_or(CHAIN_SEED, |s| s.chain_checksum), state.scan)
        };
        if scan.next < base || scan.next > applied {
            // A rewind (power loss) or a new segment: look again from the segment's base.
            scan = Scan { next: base, ..Scan::default() };
        }
        let (segment_bytes, max_age) = (self.policy.segment_bytes.max(1), max_age_micros(&self.policy));
        let mut cut = None;
        scan_raw(&self.db, partition, scan.next, applied, |offset, record| {
            let committed = record_timestamp(record)?;
            let first = *scan.first_micros.get_or_insert(committed);
            if offset > base && committed.saturating_sub(first) >= max_age {
                cut = Some(offset);
                return Ok(false);
            }
            scan.bytes += record.len() as u64;
            scan.next = offset + 1;
            if scan.bytes >= segment_bytes {
                cut = Some(offset + 1);
                return Ok(false);
            }
            Ok(true)
        })?;
        let Some(next_offset) = cut else {
            slot.state().scan = scan;
            return Ok(None);
        };
        let segment = self.write_segment(log, &identity, base, next_offset, previous_chain)?;
        let mut state = slot.state();
        state.sealed.push(segment);
        state.scan = Scan { next: next_offset, ..Scan::default() };
        Ok(Some(segment))
    }

    /// Encodes `[base, next)` of `log` into its file and catalogues it (file synced first, catalog after).
    fn write_segment(
        &self,
        log: &PartitionLog,
        identity: &LogIdentity,
        base: u64,
        next: u64,
        previous_chain: u32,
    ) -> Result<SealedSegment> {
        let partition = log.partition().0;
        let partition_dir = self.dir.join(partition.to_string());
        let building = partition_dir.join(format!("building-{base:020}.seg"));
        let file = std::fs::File::create(&building).map_err(|e| io("creating", &building, e))?;
        let header = SegmentHeader {
            cluster_id: identity.cluster_id,
            region: identity.region.clone(),
            partition,
            base_offset: base,
        };
        let mut encoder = SegmentEncoder::new(std::io::BufWriter::new(file), &header, previous_chain)?;
        for event in log.read_partition(Offset(base), next - base) {
            encoder.push(&event?)?;
        }
        let (out, summary) = encoder.finish(next)?;
        let file = out.into_inner().map_err(|e| io("writing", &building, e.into_error()))?;
        file.sync_all().map_err(|e| io("syncing", &building, e))?;
        let file_bytes = file.metadata().map_err(|e| io("reading", &building, e))?.len();
        let segment = SealedSegment {
            partition,
            base_offset: base,
            next_offset: next,
            record_count: summary.record_count,
            chain_checksum: summary.chain_checksum,
            file_bytes,
        };
        let path = partition_dir.join(segment.file_name());
        std::fs::rename(&building, &path).map_err(|e| io("renaming", &building, e))?;
        sync_dir(&partition_dir)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, keys::CF_SEGMENTS)?, keys::event_key(partition, base), segment.catalog_value());
        // No sync: see the module's doc.
        self.db.write(batch)?;
        Ok(segment)
    }

    /// Stores a sealed segment received from a peer (a snapshot): `bytes` must be a whole, verified segment
    /// whose file the catalog will name `segment`. The file is written and synced, but not its name: call
    /// [`Self::sync_partition_dir`] once the segments are stored, before the catalog names them. It becomes
    /// part of the catalog only through [`CatalogReplacement::commit`]. Blocking.
    pub fn store_received(&self, segment: &SealedSegment, bytes: &[u8]) -> Result<()> {
        let partition_dir = self.dir.join(segment.partition.to_string());
        let path = partition_dir.join(segment.file_name());
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == segment.file_bytes) {
            return Ok(());
        }
        let receiving = partition_dir.join(format!("receiving-{}", segment.file_name()));
        std::fs::write(&receiving, bytes).map_err(|e| io("writing", &receiving, e))?;
        std::fs::File::open(&receiving).and_then(|f| f.sync_all()).map_err(|e| io("syncing", &receiving, e))?;
        std::fs::rename(&receiving, &path).map_err(|e| io("renaming", &receiving, e))
    }

    /// Makes the names of the segments [`Self::store_received`] stored in `partition` durable. Blocking.
    pub fn sync_partition_dir(&self, partition: u32) -> Result<()> {
        sync_dir(&self.dir.join(partition.to_string()))
    }

    /// Starts replacing the whole catalog of `partition` (a snapshot install): no segment is sealed in the
    /// partition until the replacement is committed or dropped.
    pub fn replace(&self, partition: u32, segments: Vec<SealedSegment>) -> Result<CatalogReplacement<'_>> {
        let catalog_cf = cf(&self.db, keys::CF_SEGMENTS)?;
        let slot = self.slot(partition)?;
        Ok(CatalogReplacement { catalog: self, catalog_cf, partition, segments, slot, _work: lock(&slot.work) })
    }

    fn slot(&self, partition: u32) -> Result<&PartitionSlot> {
        self.partitions.get(partition as usize).ok_or(Error::NoSuchPartition {
            partition,
            partitions: u32::try_from(self.partitions.len()).unwrap_or(u32::MAX),
        })
    }
}

impl PartitionSlot {
    fn state(&self) -> std::sync::MutexGuard<'_, PartitionSegments> {
        lock(&self.state)
    }
}

/// Locks `mutex`; the data it guards is replaced whole, so a panic elsewhere cannot leave it torn.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A catalog replacement in progress; see [`SegmentCatalog::replace`].
pub struct CatalogReplacement<'a> {
    catalog: &'a SegmentCatalog,
    catalog_cf: &'a rocksdb::ColumnFamily,
    partition: u32,
    segments: Vec<SealedSegment>,
    slot: &'a PartitionSlot,
    _work: std::sync::MutexGuard<'a, ()>,
}

impl CatalogReplacement<'_> {
    /// Adds to `batch` the writes that make the new segments (their files already stored) the partition's
    /// whole catalog. [`CatalogReplacement::commit`] must follow once the batch is written.
    pub fn add_to(&self, batch: &mut WriteBatch) {
        let (catalog, partition) = (self.catalog_cf, self.partition);
        batch.delete_range_cf(catalog, keys::event_key(partition, 0), keys::event_key(partition, u64::MAX));
        batch.delete_cf(catalog, keys::event_key(partition, u64::MAX));
        for segment in &self.segments {
            batch.put_cf(catalog, keys::event_key(partition, segment.base_offset), segment.catalog_value());
        }
    }

    /// Notes that the batch was written: the new segments are the catalog, and files no longer in it go.
    pub fn commit(mut self) {
        remove_uncatalogued(&self.catalog.dir.join(self.partition.to_string()), &self.segments);
        let next = self.segments.last().map_or(0, |s| s.next_offset);
        let segments = std::mem::take(&mut self.segments);
        *self.slot.state() = PartitionSegments { sealed: segments, scan: Scan { next, ..Scan::default() } };
    }
}

/// Seals `log`'s segments as its applied tail grows, until the partition's watch closes. Sealing runs on the
/// blocking pool, off the append path; a failure is logged and retried on the next commit. A stored record
/// that fails its checksum ([`Error::is_checksum_failure`]) is also handed to `on_damage`, on the blocking
/// pool (it may write a file).
pub async fn run_sealer<D>(catalog: Arc<SegmentCatalog>, log: Arc<PartitionLog>, on_damage: D)
where
    D: Fn(&Error) + Clone + Send + 'static,
{
    let mut tail = log.watch_tail();
    let mut seen = *tail.borrow_and_update();
    loop {
        let (catalog, sealing, on_damage) = (catalog.clone(), log.clone(), on_damage.clone());
        let sealed = tokio::task::spawn_blocking(move || {
            let sealed = catalog.seal_ready(&sealing);
            if let Err(error) = &sealed
                && error.is_checksum_failure()
            {
                on_damage(error);
            }
            sealed
        });
        match sealed.await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(partition = %log.partition(), %error, "sealing a segment failed"),
            Err(error) => tracing::error!(partition = %log.partition(), %error, "the sealer panicked"),
        }
        if tail.changed().await.is_err() {
            return;
        }
        let now = *tail.borrow_and_update();
        if let TailChange::NewEpoch { rewound: true } = now.change_since(seen) {
            tracing::info!(partition = %log.partition(), next_offset = %now.next_offset, "applied tail rewound");
        }
        seen = now;
    }
}

fn max_age_micros(policy: &SealPolicy) -> i64 {
    i64::try_from(policy.max_age_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX).max(1)
}

/// A record's commit time, from its fixed-position field (log/FORMAT.md, "Record").
fn record_timestamp(record: &[u8]) -> Result<i64> {
    let bytes: [u8; 8] = record
        .get(17..25)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::corrupt("record", format!("{} bytes", record.len())))?;
    Ok(i64::from_le_bytes(bytes))
}

/// Calls `visit` with each stored record of `[from, to)` in offset order, until it returns `false`. Offsets
/// must be dense: a missing one is corruption. Records are CRC-checked by their reader, not here.
fn scan_raw(
    db: &DB,
    partition: u32,
    from: u64,
    to: u64,
    mut visit: impl FnMut(u64, &[u8]) -> Result<bool>,
) -> Result<()> {
    if from >= to {
        return Ok(());
    }
    let events = cf(db, keys::CF_EVENTS)?;
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(keys::event_key(partition, to).to_vec());
    let mut iter = db.raw_iterator_cf_opt(events, options);
    iter.seek(keys::event_key(partition, from));
    let mut expected = from;
    while iter.valid() {
        let (Some(key), Some(value)) = (iter.key(), iter.value()) else { break };
        let offset = keys::offset_of_event_key(key).ok_or_else(|| Error::corrupt("event key", format!("{key:?}")))?;
        if offset != expected {
            return Err(Error::corrupt("partition log", format!("offset {expected} is missing")));
        }
        crate::record::verify_record_crc(value)?;
        if !visit(offset, value)? {
            return Ok(());
        }
        expected += 1;
        iter.next();
    }
    iter.status()?;
    Ok(())
}

fn read_catalog(db: &DB, partition: u32) -> Result<Vec<SealedSegment>> {
    let catalog = cf(db, keys::CF_SEGMENTS)?;
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(keys::event_key(partition, u64::MAX).to_vec());
    let mut iter = db.raw_iterator_cf_opt(catalog, options);
    iter.seek(keys::event_key(partition, 0));
    let mut sealed: Vec<SealedSegment> = Vec::new();
    while iter.valid() {
        let (Some(key), Some(value)) = (iter.key(), iter.value()) else { break };
        let segment = SealedSegment::from_catalog(partition, key, value)?;
        let due = sealed.last().map_or(0, |s| s.next_offset);
        if segment.base_offset != due || segment.next_offset < segment.base_offset {
            return Err(Error::corrupt("segment catalog", format!("{segment:?} where base {due} was due")));
        }
        sealed.push(segment);
        iter.next();
    }
    iter.status()?;
    Ok(sealed)
}

/// Removes segment files of a partition's directory that `keep` does not name (and leftovers of writes).
fn remove_uncatalogued(dir: &Path, keep: &[SealedSegment]) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let names: std::collections::HashSet<String> = keep.iter().map(SealedSegment::file_name).collect();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".seg")
            && !names.contains(&name)
            && let Err(error) = std::fs::remove_file(entry.path())
        {
            tracing::warn!(%error, file = %name, "could not remove an uncatalogued segment file");
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing", dir, e))
}

fn io(what: &'static str, path: &Path, error: std::io::Error) -> Error {
    Error::System { what, detail: format!("{}: {error}", path.display()) }
}
