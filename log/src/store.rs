//! [`LogStore`]: the node's one RocksDB, its column families and settings, and the [`PartitionLog`]s in it.
//!
//! Opening checks that the store on disk matches: format version and partition count are recorded at
//! creation and a mismatch is refused, because the partition count decides where every stream lives.

use std::path::Path;
use std::sync::Arc;

use rocksdb::BlockBasedOptions;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::DB;
use rocksdb::DBCompressionType;
use rocksdb::DBRecoveryMode;
use rocksdb::Options;
use serde::Deserialize;
use serde::Serialize;

use crate::error::Error;
use crate::error::Result;
use crate::keys;
use crate::keys::cf;
use crate::partition::PartitionLog;
use crate::tail::EpochCounter;

/// The store layout version this code reads and writes (log/FORMAT.md).
pub const STORE_FORMAT_VERSION: u32 = 2;

/// The smallest memtable a store takes (RocksDB's own floor).
pub const MIN_WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// How to open a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// Number of partitions; fixed when the store is created.
    pub partitions: u32,
    /// RocksDB block cache size in bytes.
    pub block_cache_bytes: usize,
    /// Bytes a column family's memtable takes before it is flushed to a table file.
    pub write_buffer_bytes: usize,
    /// Whether a node reads everything it stores once when it opens, checking every checksum, so damage
    /// is found before it votes (one sequential read of the data dir at each start).
    pub verify_on_open: bool,
    /// Bytes of each partition's last applied events kept in memory, from which caught-up subscribers
    /// read what each commit added (0: none; they read the store).
    pub recent_events_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            partitions: 4,
            block_cache_bytes: 256 * 1024 * 1024,
            write_buffer_bytes: 64 * 1024 * 1024,
            verify_on_open: true,
            recent_events_bytes: 4 * 1024 * 1024,
        }
    }
}

/// One node's durable log: a RocksDB database holding every partition.
pub struct LogStore {
    db: Arc<DB>,
    partitions: Vec<Arc<PartitionLog>>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("path", &self.db.path()).field("partitions", &self.partitions.len()).finish()
    }
}

impl LogStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: impl AsRef<Path>, options: &StoreOptions) -> Result<Self> {
        Self::open_with_families(path, options, &[])
    }

    /// Opens (or creates) the store with extra column families owned by a layer above (the Raft log and its
    /// metadata live in the node's one database, so one WAL fsync covers both). A write-ahead log corrupt
    /// anywhere but a torn tail fails the open ([`WalRecovery::StopAtCorruption`]).
    pub fn open_with_families(
        path: impl AsRef<Path>,
        options: &StoreOptions,
        extra_families: &[&'static str],
    ) -> Result<Self> {
        Self::open_recovering(path, options, extra_families, WalRecovery::StopAtCorruption)
    }

    /// Like [`LogStore::open_with_families`], replaying the write-ahead log as `recovery` says.
    pub fn open_recovering(
        path: impl AsRef<Path>,
        options: &StoreOptions,
        extra_families: &[&'static str],
        recovery: WalRecovery,
    ) -> Result<Self> {
        if let Some(clash) = extra_families.iter().find(|name| keys::ALL_CFS.contains(name)) {
            return Err(Error::Config(format!("column family {clash} belongs to the log store")));
        }
        if options.partitions == 0 {
            return Err(Error::Config("partitions must be at least 1".to_owned()));
        }
        if options.write_buffer_bytes < MIN_WRITE_BUFFER_BYTES {
            return Err(Error::Config(format!("write_buffer_bytes must be at least {MIN_WRITE_BUFFER_BYTES}")));
        }
        let path = path.as_ref();
        let db =
            Arc::new(DB::open_cf_descriptors(&db_options(recovery), path, column_families(options, extra_families))?);
        check_or_record_meta(&db, options.partitions)?;
        let (epochs, epoch) = EpochCounter::open(&db)?;
        let epochs = Arc::new(epochs);
        let partitions = (0..options.partitions)
            .map(|partition| {
                let recent = options.recent_events_bytes;
                PartitionLog::open(db.clone(), partition, options.partitions, epochs.clone(), epoch, recent)
                    .map(Arc::new)
            })
            .collect::<Result<Vec<_>>>()?;
        tracing::info!(path = %path.display(), partitions = options.partitions, %epoch, "log store open");
        Ok(LogStore { db, partitions })
    }

    /// Number of partitions.
    pub fn partition_count(&self) -> u32 {
        // The vector was built from a u32 range.
        u32::try_from(self.partitions.len()).unwrap_or(u32::MAX)
    }

    /// The log of one partition.
    pub fn partition(&self, partition: u32) -> Result<&Arc<PartitionLog>> {
        self.partitions
            .get(partition as usize)
            .ok_or(Error::NoSuchPartition { partition, partitions: self.partition_count() })
    }

    /// The log of the partition `stream` lives in.
    pub fn partition_for(&self, stream: &str) -> &Arc<PartitionLog> {
        let p = crate::partitioner::partition_of(stream, self.partition_count());
        &self.partitions[p as usize]
    }

    /// All partitions, in order.
    pub fn partitions(&self) -> &[Arc<PartitionLog>] {
        &self.partitions
    }

    /// The node's database, for layers that keep their own column families in it (see
    /// [`LogStore::open_with_families`]). Never write to the log's own column families through it.
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// Has RocksDB read every live table file whole and check every block's checksum (data, index, filter
    /// and meta blocks alike: its `VerifyChecksum`), so damage anywhere in the database's files is found now
    /// rather than by a later read or compaction. Damage is [`Error::Corrupt`]; any other failure of the
    /// read, [`Error::System`]. Blocking: one read of the whole database.
    pub fn verify_checksums(&self) -> Result<()> {
        use rocksdb::AsRawPtr;
        let mut message: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: the database outlives the call, and `message` is the C API's out-parameter for an error,
        // which it allocates; it is read and freed below and never used again.
        unsafe { librocksdb_sys::rocksdb_verify_checksum(self.db.as_raw_ptr(), &mut message) };
        if message.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null `message` is a NUL-terminated string the C API allocated for us to free.
        let detail = unsafe { std::ffi::CStr::from_ptr(message) }.to_string_lossy().into_owned();
        // SAFETY: as above; freed once.
        unsafe { librocksdb_sys::rocksdb_free(message.cast()) };
        if detail.starts_with("Corruption") {
            Err(Error::corrupt("database", detail))
        } else {
            Err(Error::System { what: "verifying the database's checksums", detail })
        }
    }

    /// Forces the write-ahead log to disk (for callers that wrote without sync).
    pub fn sync_wal(&self) -> Result<()> {
        Ok(self.db.flush_wal(true)?)
    }
}

/// How the write-ahead log is replayed when the store opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalRecovery {
    /// A torn tail (writes never synced) is dropped; a bad record before it fails the open.
    StopAtCorruption,
    /// Replay stops at the first bad record, wherever it is, and drops everything after it without a word:
    /// only for a caller that then checks what survived against what was made durable (a torn tail that
    /// RocksDB took for corruption), never alone.
    PointInTime,
}

fn db_options(recovery: WalRecovery) -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_paranoid_checks(true);
    // A crash can only tear the WAL's tail, which holds writes never synced, so never acknowledged: that much
    // is tolerated. A bad record anywhere before it is corruption and the open fails, where point-in-time
    // replay would stop there and silently drop every synced write after it (votes and acknowledged
    // entries among them).
    let mode = if recovery == WalRecovery::PointInTime
        || crate::planted::planted(crate::planted::PlantedBug::TrustPointInTimeReplay)
    {
        DBRecoveryMode::PointInTime
    } else {
        DBRecoveryMode::TolerateCorruptedTailRecords
    };
    options.set_wal_recovery_mode(mode);
    options.set_max_background_jobs(2);
    options.set_bytes_per_sync(1024 * 1024);
    options
}

fn column_families(options: &StoreOptions, extra_families: &[&'static str]) -> Vec<ColumnFamilyDescriptor> {
    let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes);
    keys::ALL_CFS
        .iter()
        .chain(extra_families)
        .map(|&name| {
            let mut block = BlockBasedOptions::default();
            block.set_block_cache(&cache);
            // Point lookups (dedupe, stream heads) mostly miss: whole-key bloom filters skip the disk.
            if name == keys::CF_EVENT_IDS || name == keys::CF_STREAMS {
                block.set_bloom_filter(10.0, false);
            }
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&block);
            cf.set_write_buffer_size(options.write_buffer_bytes);
            cf.set_compression_type(DBCompressionType::Lz4);
            cf.set_bottommost_compression_type(DBCompressionType::Zstd);
            ColumnFamilyDescriptor::new(name, cf)
        })
        .collect()
}

fn check_or_record_meta(db: &DB, partitions: u32) -> Result<()> {
    let meta = cf(db, keys::CF_META)?;
    match db.get_cf(meta, keys::META_FORMAT_VERSION)? {
        None => {
            let mut batch = rocksdb::WriteBatch::default();
            batch.put_cf(meta, keys::META_FORMAT_VERSION, STORE_FORMAT_VERSION.to_le_bytes());
            batch.put_cf(meta, keys::META_PARTITIONS, partitions.to_le_bytes());
            let mut write = rocksdb::WriteOptions::default();
            write.set_sync(true);
            db.write_opt(batch, &write)?;
            Ok(())
        }
        Some(version) => {
            let version = decode_u32(&version, "format version")?;
            if version != STORE_FORMAT_VERSION {
                return Err(Error::Config(format!(
                    "store format version {version} is not supported (this build reads {STORE_FORMAT_VERSION})"
                )));
            }
            let stored = db
                .get_cf(meta, keys::META_PARTITIONS)?
                .ok_or_else(|| Error::corrupt("store metadata", "partition count missing"))?;
            let stored = decode_u32(&stored, "partition count")?;
            if stored != partitions {
                return Err(Error::Config(format!(
                    "the store was created with {stored} partitions; it cannot be opened with {partitions}"
                )));
            }
            Ok(())
        }
    }
}

fn decode_u32(bytes: &[u8], what: &'static str) -> Result<u32> {
    let array: [u8; 4] = bytes.try_into().map_err(|_| Error::corrupt(what, format!("{} bytes", bytes.len())))?;
    Ok(u32::from_le_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_different_partition_count() {
        let dir = tempfile::tempdir().unwrap();
        drop(LogStore::open(dir.path(), &StoreOptions { partitions: 4, ..StoreOptions::default() }).unwrap());
        let err = LogStore::open(dir.path(), &StoreOptions { partitions: 8, ..StoreOptions::default() }).err().unwrap();
        assert!(matches!(err, Error::Config(ref m) if m.contains("created with 4 partitions")), "{err}");
        assert_eq!(err.reason(), "CONFIG");
        let store = LogStore::open(dir.path(), &StoreOptions { partitions: 4, ..StoreOptions::default() }).unwrap();
        assert_eq!(store.partition_count(), 4);
    }

    #[test]
    fn refuses_zero_partitions_and_unknown_partitions() {
        let dir = tempfile::tempdir().unwrap();
        assert!(LogStore::open(dir.path(), &StoreOptions { partitions: 0, ..StoreOptions::default() }).is_err());
        let store = LogStore::open(dir.path(), &StoreOptions::default()).unwrap();
        assert!(matches!(store.partition(4), Err(Error::NoSuchPartition { partition: 4, partitions: 4 })));
    }
}
