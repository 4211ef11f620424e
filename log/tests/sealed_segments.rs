//! Sealed segments: cut where the records say, the same bytes on every replica however the records were
//! batched when applied, catalogued durably, resumed after a restart, and chain checksums that any replica
//! can compute at any offset.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use fjord_log::AppendRequest;
use fjord_log::Durability;
use fjord_log::ExpectedRevision;
use fjord_log::LogStore;
use fjord_log::ProposedEvent;
use fjord_log::StoreOptions;
use fjord_log::sealed::SealPolicy;
use fjord_log::sealed::SegmentCatalog;
use fjord_log::segment::CHAIN_SEED;

fn options() -> StoreOptions {
    StoreOptions { partitions: 1, ..StoreOptions::default() }
}

/// The catalog of `store`, segments under `dir`, of a cluster it has learned.
fn learned_catalog(store: &LogStore, dir: &Path, policy: SealPolicy) -> SegmentCatalog {
    let catalog = SegmentCatalog::open(store, dir, "eu-north", policy).unwrap();
    catalog.adopt_cluster_id(uuid::Uuid::from_u128(42)).unwrap();
    catalog
}

fn policy() -> SealPolicy {
    SealPolicy { segment_bytes: 2_000, max_age_secs: 3_600 }
}

fn append(i: u64) -> AppendRequest {
    AppendRequest {
        stream: format!("order-{}", i % 7),
        expected: ExpectedRevision::Any,
        // The same request on every replica, as Raft delivers it: the same event id.
        events: vec![ProposedEvent {
            id: uuid::Uuid::from_u128(u128::from(i) + 1),
            ..ProposedEvent::json("Placed", format!("{{\"n\":{i}}}").into_bytes())
        }],
    }
}

/// Applies appends `0..count` to a new store in batches of `batch` (each batch one commit time).
fn replica(dir: &Path, count: u64, batch: u64) -> LogStore {
    let store = LogStore::open(dir, &options()).unwrap();
    let log = store.partition(0).unwrap();
    let mut i = 0;
    while i < count {
        let appends: Vec<_> = (i..count.min(i + batch)).map(append).collect();
        log.apply(&appends, 1_000_000, Durability::Buffered).unwrap();
        i += batch;
    }
    store
}

#[test]
fn replicas_seal_identical_segments_however_they_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (one, many) = (replica(&dir.path().join("a"), 300, 1), replica(&dir.path().join("b"), 300, 37));
    let catalog_one = learned_catalog(&one, &dir.path().join("a-seg"), policy());
    let catalog_many = learned_catalog(&many, &dir.path().join("b-seg"), policy());
    let sealed = catalog_one.seal_ready(one.partition(0).unwrap()).unwrap();
    assert!(sealed.len() >= 3, "300 events of ~100 bytes in 2,000-byte segments: {sealed:?}");
    assert_eq!(catalog_many.seal_ready(many.partition(0).unwrap()).unwrap(), sealed);
    for segment in &sealed {
        let (a, b) = (
            std::fs::read(catalog_one.path_of(segment)).unwrap(),
            std::fs::read(catalog_many.path_of(segment)).unwrap(),
        );
        assert_eq!(a, b, "segment {segment:?} differs between replicas");
    }
    // The chain at any offset agrees, and at a segment's end it is the segment's chain.
    for offset in [0, 1, 150, 299, 300] {
        assert_eq!(
            catalog_one.chain_at(one.partition(0).unwrap(), offset).unwrap(),
            catalog_many.chain_at(many.partition(0).unwrap(), offset).unwrap()
        );
    }
    assert_eq!(catalog_one.chain_at(one.partition(0).unwrap(), 0).unwrap(), CHAIN_SEED);
    let last = sealed.last().unwrap();
    assert_eq!(catalog_one.chain_at(one.partition(0).unwrap(), last.next_offset).unwrap(), last.chain_checksum);
    // Segments are contiguous from 0, and each file verifies against the chain before it.
    let mut chain = CHAIN_SEED;
    let mut next = 0;
    for segment in &sealed {
        assert_eq!(segment.base_offset, next);
        let reader = catalog_one.open_segment(segment).unwrap();
        let records: Vec<_> = reader.records(chain).collect::<Result<_, _>>().unwrap();
        assert_eq!(records.len() as u64, segment.record_count);
        assert_eq!(records.first().map(|r| r.offset.0), Some(segment.base_offset));
        chain = segment.chain_checksum;
        next = segment.next_offset;
    }
}

#[test]
fn the_catalog_survives_a_restart_and_sealing_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (db, segments) = (dir.path().join("db"), dir.path().join("segments"));
    let store = replica(&db, 100, 10);
    let catalog = learned_catalog(&store, &segments, policy());
    let first = catalog.seal_ready(store.partition(0).unwrap()).unwrap();
    assert!(!first.is_empty());
    // A file a crash left behind, never catalogued, goes at the next open.
    let stray = segments.join("0").join("building-00000000000000000099.seg");
    std::fs::write(&stray, b"half a segment").unwrap();
    drop((catalog, store));

    let store = LogStore::open(&db, &options()).unwrap();
    let catalog = learned_catalog(&store, &segments, policy());
    assert_eq!(catalog.sealed(0).unwrap(), first);
    assert!(!stray.exists());
    let log = store.partition(0).unwrap();
    log.apply(&(100..400).map(append).collect::<Vec<_>>(), 2_000_000, Durability::Sync).unwrap();
    let more = catalog.seal_ready(log).unwrap();
    assert_eq!(more.first().unwrap().base_offset, first.last().unwrap().next_offset);

    // A catalogued file that lost bytes, or has one flipped, fails verification, which names it.
    assert!(catalog.verify().unwrap() > 0);
    let victim = catalog.path_of(&more[0]);
    drop((catalog, store));
    let bytes = std::fs::read(&victim).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x5A;
    for damaged in [&bytes[..bytes.len() - 1], &flipped[..]] {
        std::fs::write(&victim, damaged).unwrap();
        let store = LogStore::open(&db, &options()).unwrap();
        let refused = SegmentCatalog::open(&store, &segments, "eu-north", policy()).unwrap().verify().err().unwrap();
        assert_eq!(refused.reason(), "DATA_CORRUPT");
        assert!(refused.to_string().contains(&victim.display().to_string()), "{refused}");
    }
}

#[test]
fn an_old_first_record_closes_a_segment_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path().join("db"), &options()).unwrap();
    let log = store.partition(0).unwrap();
    let policy = SealPolicy { segment_bytes: u64::MAX, max_age_secs: 60 };
    let catalog = learned_catalog(&store, &dir.path().join("segments"), policy);
    log.apply(&[append(0), append(1)], 1_000_000, Durability::Sync).unwrap();
    assert!(catalog.seal_ready(log).unwrap().is_empty(), "nothing is old enough yet");
    // Committed 61 s after the first record: the segment before it closes.
    log.apply(&[append(2)], 62_000_000, Durability::Sync).unwrap();
    let sealed = catalog.seal_ready(log).unwrap();
    assert_eq!(sealed.iter().map(|s| (s.base_offset, s.next_offset)).collect::<Vec<_>>(), vec![(0, 2)]);
}

#[test]
fn nothing_is_sealed_before_the_cluster_is_known_and_another_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = replica(&dir.path().join("db"), 100, 10);
    let segments = dir.path().join("segments");
    let catalog = SegmentCatalog::open(&store, &segments, "eu-north", policy()).unwrap();
    assert_eq!(catalog.cluster_id(), None);
    assert!(catalog.seal_ready(store.partition(0).unwrap()).unwrap().is_empty());
    let ours = uuid::Uuid::from_u128(42);
    catalog.adopt_cluster_id(ours).unwrap();
    catalog.adopt_cluster_id(ours).unwrap();
    let theirs = catalog.adopt_cluster_id(uuid::Uuid::from_u128(43)).unwrap_err();
    assert_eq!(theirs.reason(), "CONFIG");
    drop(catalog);
    let reopened = SegmentCatalog::open(&store, &segments, "eu-north", policy()).unwrap();
    assert_eq!(reopened.cluster_id(), Some(ours), "the cluster id is stored");
    let sealed = reopened.seal_ready(store.partition(0).unwrap()).unwrap();
    assert!(!sealed.is_empty());
    assert_eq!(reopened.open_segment(&sealed[0]).unwrap().header().cluster_id, ours);
}
