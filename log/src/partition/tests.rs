//! The apply rules, one by one, and as properties over arbitrary interleavings of appends.

use std::collections::BTreeMap;
use std::collections::HashMap;

use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::event::ExpectedRevision;
use crate::event::ProposedEvent;
use crate::ids::Offset;
use crate::ids::PartitionId;
use crate::ids::Revision;
use crate::read::Direction;
use crate::store::LogStore;
use crate::store::StoreOptions;

fn store(partitions: u32) -> (tempfile::TempDir, LogStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), &StoreOptions { partitions, ..StoreOptions::default() }).unwrap();
    (dir, store)
}

fn event(n: u128) -> ProposedEvent {
    ProposedEvent {
        id: Uuid::from_u128(n),
        event_type: "Happened".to_owned(),
        content_type: String::new(),
        data: format!("{{\"n\":{n}}}").into_bytes(),
        metadata: BTreeMap::from([("trace".to_owned(), n.to_string())]),
    }
}

fn append(stream: &str, expected: ExpectedRevision, ids: &[u128]) -> AppendRequest {
    AppendRequest { stream: stream.to_owned(), expected, events: ids.iter().map(|&n| event(n)).collect() }
}

fn apply_one(log: &PartitionLog, request: AppendRequest) -> AppendResult {
    log.apply(&[request], 1_000, Durability::Sync).unwrap().pop().unwrap()
}

fn stream_events(log: &PartitionLog, stream: &str) -> Vec<RecordedEvent> {
    log.read_stream(stream, Revision(0), Direction::Forward, u64::MAX).collect::<Result<_>>().unwrap()
}

#[test]
fn assigns_dense_offsets_and_revisions() {
    let (_dir, store) = store(1);
    let log = store.partition(0).unwrap();
    let first = apply_one(log, append("order-1", ExpectedRevision::NoStream, &[1, 2])).unwrap();
    assert_eq!(
        first.positions,
        vec![
            EventPosition { offset: Offset(0), revision: Revision(0) },
            EventPosition { offset: Offset(1), revision: Revision(1) }
        ]
    );
    assert_eq!(first.revision, Revision(1));
    assert!(!first.deduplicated);
    let second = apply_one(log, append("order-2", ExpectedRevision::Any, &[3])).unwrap();
    assert_eq!(second.positions, vec![EventPosition { offset: Offset(2), revision: Revision(0) }]);
    let third = apply_one(log, append("order-1", ExpectedRevision::Exact(Revision(1)), &[4])).unwrap();
    assert_eq!(third.positions, vec![EventPosition { offset: Offset(3), revision: Revision(2) }]);
    assert_eq!(log.next_offset(), Offset(4));
    assert_eq!(
        log.stream_head("order-1").unwrap(),
        Some(StreamHead { partition: PartitionId(0), revision: Revision(2), last_offset: Offset(3) })
    );
    assert_eq!(log.stream_head("order-3").unwrap(), None);
    let events = stream_events(log, "order-1");
    assert_eq!(events.iter().map(|e| e.id.as_u128()).collect::<Vec<_>>(), vec![1, 2, 4]);
    assert_eq!(events[0].content_type, "application/json", "default content type is filled in");
    assert_eq!(events[0].metadata["trace"], "1");
}

#[test]
fn expected_revision_rules() {
    let (_dir, store) = store(1);
    let log = store.partition(0).unwrap();
    let wrong =
        |expected, current| Err(Rejection::WrongExpectedRevision { stream: "s-1".to_owned(), expected, current });
    assert_eq!(
        apply_one(log, append("s-1", ExpectedRevision::StreamExists, &[1])),
        wrong(ExpectedRevision::StreamExists, None)
    );
    assert_eq!(
        apply_one(log, append("s-1", ExpectedRevision::Exact(Revision(0)), &[1])),
        wrong(ExpectedRevision::Exact(Revision(0)), None)
    );
    assert!(apply_one(log, append("s-1", ExpectedRevision::NoStream, &[1])).is_ok());
    assert_eq!(
        apply_one(log, append("s-1", ExpectedRevision::NoStream, &[2])),
        wrong(ExpectedRevision::NoStream, Some(Revision(0)))
    );
    assert_eq!(
        apply_one(log, append("s-1", ExpectedRevision::Exact(Revision(5)), &[2])),
        wrong(ExpectedRevision::Exact(Revision(5)), Some(Revision(0)))
    );
    assert!(apply_one(log, append("s-1", ExpectedRevision::StreamExists, &[2])).is_ok());
    assert!(apply_one(log, append("s-1", ExpectedRevision::Exact(Revision(1)), &[3])).is_ok());
    assert!(apply_one(log, append("s-1", ExpectedRevision::Any, &[4])).is_ok());
    assert_eq!(log.next_offset(), Offset(4), "rejections wrote nothing");
    let message = wrong(ExpectedRevision::Exact(Revision(5)), Some(Revision(7))).unwrap_err().to_string();
    assert_eq!(message, "stream s-1 is at revision 7, expected revision 5");
}

#[test]
fn a_retry_returns_the_original_positions_and_writes_nothing() {
    let (_dir, store) = store(1);
    let log = store.partition(0).unwrap();
    let original = apply_one(log, append("s-1", ExpectedRevision::NoStream, &[1, 2, 3])).unwrap();
    apply_one(log, append("s-1", ExpectedRevision::Any, &[4])).unwrap();
    // The retry carries a stale expectation; dedupe answers before the revision check.
    let retry = apply_one(log, append("s-1", ExpectedRevision::NoStream, &[1, 2, 3])).unwrap();
    assert!(retry.deduplicated);
    assert_eq!(retry.positions, original.positions);
    assert_eq!(retry.revision, original.revision);
    assert_eq!(retry.commit_time_micros, original.commit_time_micros);
    assert_eq!(log.next_offset(), Offset(4));
    // A retry of a suffix of the original is one run too.
    assert!(apply_one(log, append("s-1", ExpectedRevision::Any, &[2, 3])).unwrap().deduplicated);
}

#[test]
fn reused_ids_and_partial_retries_are_rejected() {
    let (_dir, store) = store(1);
    let log = store.partition(0).unwrap();
    apply_one(log, append("s-1", ExpectedRevision::Any, &[1, 2])).unwrap();
    let mut changed = append("s-1", ExpectedRevision::Any, &[1]);
    changed.events[0].data = b"{\"other\":true}".to_vec();
    assert_eq!(
        apply_one(log, changed),
        Err(Rejection::EventIdReused { stream: "s-1".to_owned(), id: Uuid::from_u128(1), revision: Revision(0) })
    );
    assert_eq!(
        apply_one(log, append("s-1", ExpectedRevision::Any, &[2, 9])),
        Err(Rejection::PartialRetry {
            stream: "s-1".to_owned(),
            known_id: Uuid::from_u128(2),
            new_id: Uuid::from_u128(9)
        })
    );
    assert_eq!(
        apply_one(log, append("s-1", ExpectedRevision::Any, &[2, 1])),
        Err(Rejection::RetryOutOfOrder { stream: "s-1".to_owned() })
    );
    // Dedupe is per stream: the same id in another stream is another event.
    assert!(!apply_one(log, append("s-2", ExpectedRevision::Any, &[1])).unwrap().deduplicated);
    assert_eq!(log.next_offset(), Offset(3));
}

#[test]
fn appends_in_one_batch_see_each_other() {
    let (_dir, store) = store(1);
    let log = store.partition(0).unwrap();
    let outcomes = log
        .apply(
            &[
                append("s-1", ExpectedRevision::NoStream, &[1]),
                append("s-1", ExpectedRevision::Exact(Revision(0)), &[2]),
                append("s-1", ExpectedRevision::Exact(Revision(0)), &[3]),
                append("s-1", ExpectedRevision::Any, &[1]),
            ],
            5,
            Durability::Sync,
        )
        .unwrap();
    assert!(outcomes[0].is_ok() && outcomes[1].is_ok());
    assert!(matches!(outcomes[2], Err(Rejection::WrongExpectedRevision { current: Some(Revision(1)), .. })));
    assert!(outcomes[3].as_ref().unwrap().deduplicated);
    assert_eq!(outcomes[3].as_ref().unwrap().positions, outcomes[0].as_ref().unwrap().positions);
    assert_eq!(log.next_offset(), Offset(2));
}

#[test]
fn refuses_streams_of_other_partitions() {
    let (_dir, store) = store(4);
    let stream = "order-42";
    let home = crate::partitioner::partition_of(stream, 4);
    let other = store.partition((home + 1) % 4).unwrap();
    assert_eq!(
        apply_one(other, append(stream, ExpectedRevision::Any, &[1])),
        Err(Rejection::WrongPartition {
            stream: stream.to_owned(),
            expected: PartitionId(home),
            actual: PartitionId((home + 1) % 4)
        })
    );
    assert!(apply_one(store.partition_for(stream), append(stream, ExpectedRevision::Any, &[1])).is_ok());
}

#[test]
fn commit_times_never_go_backwards() {
    let (_dir, store) = store(1);
    let log = store.partition(0).unwrap();
    log.apply(&[append("s-1", ExpectedRevision::Any, &[1])], 2_000, Durability::Sync).unwrap();
    let later = log.apply(&[append("s-1", ExpectedRevision::Any, &[2])], 1_000, Durability::Sync).unwrap();
    assert_eq!(later[0].as_ref().unwrap().commit_time_micros, 2_000);
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions { partitions: 2, ..StoreOptions::default() };
    {
        let store = LogStore::open(dir.path(), &options).unwrap();
        apply_one(store.partition_for("s-1"), append("s-1", ExpectedRevision::Any, &[1, 2])).unwrap();
    }
    let store = LogStore::open(dir.path(), &options).unwrap();
    let log = store.partition_for("s-1");
    assert_eq!(log.next_offset(), Offset(2));
    assert!(apply_one(log, append("s-1", ExpectedRevision::Any, &[1, 2])).unwrap().deduplicated);
    let next = apply_one(log, append("s-1", ExpectedRevision::Exact(Revision(1)), &[3])).unwrap();
    assert_eq!(next.positions[0], EventPosition { offset: Offset(2), revision: Revision(2) });
    assert_eq!(next.commit_time_micros, 1_000);
}

#[test]
fn reads_page_forward_backward_and_by_partition() {
    let (_dir, store) = store(1);
    let log = store.partition(0).unwrap();
    let n = 3 * crate::read::PAGE_SIZE as u128 + 7;
    for i in 0..n {
        let stream = if i % 3 == 0 { "a-1" } else { "b-1" };
        apply_one(log, append(stream, ExpectedRevision::Any, &[i + 1])).unwrap();
    }
    let all: Vec<_> = log.read_partition(Offset(0), u64::MAX).collect::<Result<_>>().unwrap();
    assert_eq!(all.len() as u128, n);
    assert!(all.iter().enumerate().all(|(i, e)| e.offset == Offset(i as u64)));
    let window: Vec<_> = log.read_partition(Offset(300), 10).map(|e| e.unwrap().offset.0).collect();
    assert_eq!(window, (300..310).collect::<Vec<_>>());
    assert_eq!(log.read_partition(Offset(n as u64), 10).count(), 0);

    let forward: Vec<_> =
        log.read_stream("b-1", Revision(5), Direction::Forward, u64::MAX).map(|e| e.unwrap().revision.0).collect();
    let b_count = all.iter().filter(|e| e.stream == "b-1").count() as u64;
    assert_eq!(forward, (5..b_count).collect::<Vec<_>>());
    let backward: Vec<_> =
        log.read_stream("b-1", Revision(u64::MAX), Direction::Backward, 300).map(|e| e.unwrap().revision.0).collect();
    assert_eq!(backward, (b_count - 300..b_count).rev().collect::<Vec<_>>());
    let from_middle: Vec<_> =
        log.read_stream("a-1", Revision(3), Direction::Backward, 10).map(|e| e.unwrap().revision.0).collect();
    assert_eq!(from_middle, vec![3, 2, 1, 0]);
    assert_eq!(log.read_stream("c-1", Revision(0), Direction::Forward, 10).count(), 0);
    assert_eq!(log.read_stream("a-1", Revision(0), Direction::Forward, 0).count(), 0);
}

#[test]
fn corrupt_records_are_refused_not_served() {
    let (_dir, store) = store(1);
    let log = store.partition(0).unwrap();
    apply_one(log, append("s-1", ExpectedRevision::Any, &[1])).unwrap();
    let events = cf(&log.db, keys::CF_EVENTS).unwrap();
    let key = keys::event_key(0, 0);
    let mut bytes = log.db.get_cf(events, key).unwrap().unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x40;
    log.db.put_cf(events, key, &bytes).unwrap();
    let err = log.read_partition(Offset(0), 10).next().unwrap().unwrap_err();
    assert_eq!(err.reason(), "DATA_CORRUPT");
    assert!(log.read_stream("s-1", Revision(0), Direction::Forward, 10).next().unwrap().is_err());
    assert!(log.event_at(Offset(0)).is_err());
}

/// One step of a generated workload.
#[derive(Debug, Clone)]
struct Step {
    stream: usize,
    events: usize,
    expectation: u8,
    retry_of: Option<usize>,
}

fn arb_steps() -> impl Strategy<Value = (Vec<Step>, Vec<usize>)> {
    let step = (0usize..4, 1usize..4, 0u8..5, proptest::option::weighted(0.2, 0usize..64))
        .prop_map(|(stream, events, expectation, retry_of)| Step { stream, events, expectation, retry_of });
    (proptest::collection::vec(step, 1..60), proptest::collection::vec(1usize..6, 60))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any interleaving of appends to a few streams, cut into batches any way, keeps offsets dense,
    /// revisions dense per stream, and each stream's events in the order they were accepted; retries never
    /// write twice.
    #[test]
    fn any_interleaving_keeps_order_and_density((steps, cuts) in arb_steps()) {
        let (_dir, store) = store(1);
        let log = store.partition(0).unwrap();
        let streams = ["a-1", "b-1", "c-1", "d-1"];
        let mut model: HashMap<&str, Vec<Uuid>> = HashMap::new();
        let mut sent: Vec<AppendRequest> = Vec::new();
        let mut next_id = 1u128;
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        while at < steps.len() {
            let end = (at + cut.next().copied().unwrap_or(1)).min(steps.len());
            let mut batch = Vec::new();
            for step in &steps[at..end] {
                let request = match step.retry_of.filter(|&i| i < sent.len()) {
                    Some(i) => sent[i].clone(),
                    None => {
                        let stream = streams[step.stream];
                        let current = model.get(stream).map(|ids| ids.len() as u64);
                        let exact = |revision: u64| ExpectedRevision::Exact(Revision(revision));
                        let expected = match step.expectation {
                            0 => ExpectedRevision::Any,
                            1 => ExpectedRevision::NoStream,
                            2 => ExpectedRevision::StreamExists,
                            3 => exact(current.map_or(0, |n| n.saturating_sub(1))),
                            _ => exact(current.unwrap_or(0) + 3),
                        };
                        let ids: Vec<u128> = (next_id..next_id + step.events as u128).collect();
                        next_id += step.events as u128;
                        append(stream, expected, &ids)
                    }
                };
                batch.push(request);
            }
            let outcomes = log.apply(&batch, 1, Durability::Buffered).unwrap();
            for (request, outcome) in batch.iter().zip(outcomes) {
                let ids = model.entry(streams.iter().find(|s| **s == request.stream).unwrap()).or_default();
                let current = (!ids.is_empty()).then(|| Revision(ids.len() as u64 - 1));
                let is_retry = request.events.iter().all(|e| ids.contains(&e.id));
                match outcome {
                    Ok(outcome) if outcome.deduplicated => prop_assert!(is_retry),
                    Ok(outcome) => {
                        prop_assert!(!is_retry && request.expected.is_met_by(current));
                        prop_assert_eq!(outcome.positions[0].revision, Revision(ids.len() as u64));
                        ids.extend(request.events.iter().map(|e| e.id));
                        sent.push(request.clone());
                    }
                    Err(Rejection::WrongExpectedRevision { current: reported, .. }) => {
                        prop_assert!(!is_retry && !request.expected.is_met_by(current));
                        prop_assert_eq!(reported, current);
                    }
                    Err(other) => prop_assert!(false, "unexpected rejection {}", other),
                }
            }
            at = end;
        }
        let total: usize = model.values().map(Vec::len).sum();
        prop_assert_eq!(log.next_offset(), Offset(total as u64));
        let offsets: Vec<u64> = log.read_partition(Offset(0), u64::MAX).map(|e| e.unwrap().offset.0).collect();
        prop_assert_eq!(offsets, (0..total as u64).collect::<Vec<_>>());
        for (stream, ids) in &model {
            let events = stream_events(log, stream);
            prop_assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), ids.clone());
            prop_assert!(events.iter().enumerate().all(|(i, e)| e.revision == Revision(i as u64)));
            prop_assert!(events.windows(2).all(|w| w[0].offset < w[1].offset));
        }
    }
}

#[test]
fn an_empty_append_in_a_batch_is_rejected_not_a_crash() {
    // Validation refuses empty appends before any entry is proposed; a forged or corrupt entry carrying one
    // must not panic apply (which would fail the same way on every restart).
    let (_dir, store) = store(1);
    let log = store.partition(0).unwrap();
    let empty = AppendRequest { stream: "s-1".to_owned(), expected: ExpectedRevision::Any, events: Vec::new() };
    let outcomes = log.apply(&[empty, append("s-1", ExpectedRevision::Any, &[1])], 1_000, Durability::Sync).unwrap();
    assert_eq!(outcomes[0], Err(Rejection::EmptyAppend { stream: "s-1".to_owned() }));
    assert!(outcomes[1].is_ok());
    assert_eq!(log.next_offset(), Offset(1), "the empty append wrote nothing");
}

#[test]
fn restore_rebuilds_a_partition_from_its_records() {
    let (_dir, source) = store(1);
    let log = source.partition(0).unwrap();
    for i in 0..50u128 {
        let stream = ["a-1", "b-1", "c-1"][(i % 3) as usize];
        apply_one(log, append(stream, ExpectedRevision::Any, &[2 * i + 1, 2 * i + 2])).unwrap();
    }
    let (_other, target) = store(1);
    let copy = target.partition(0).unwrap();
    apply_one(copy, append("stale-1", ExpectedRevision::Any, &[999])).unwrap();
    let meta = target.db().cf_handle("default").unwrap();
    copy.restore(log.read_partition(Offset(0), u64::MAX), |batch| batch.put_cf(meta, b"restored", b"yes")).unwrap();

    let original: Vec<_> = log.read_partition(Offset(0), u64::MAX).map(Result::unwrap).collect();
    let restored: Vec<_> = copy.read_partition(Offset(0), u64::MAX).map(Result::unwrap).collect();
    assert_eq!(restored, original);
    assert_eq!(copy.next_offset(), Offset(100));
    assert_eq!(copy.stream_head("stale-1").unwrap(), None, "the old contents are gone");
    for stream in ["a-1", "b-1", "c-1"] {
        assert_eq!(copy.stream_head(stream).unwrap(), log.stream_head(stream).unwrap());
        assert_eq!(stream_events(copy, stream), stream_events(log, stream));
    }
    assert_eq!(target.db().get_cf(meta, b"restored").unwrap().as_deref(), Some(&b"yes"[..]));
    // Dedupe and revisions continue from the restored state.
    assert!(apply_one(copy, append("a-1", ExpectedRevision::Any, &[1, 2])).unwrap().deduplicated);
    let next = apply_one(copy, append("a-1", ExpectedRevision::Exact(Revision(33)), &[5000])).unwrap();
    assert_eq!(next.positions[0], EventPosition { offset: Offset(100), revision: Revision(34) });
}

#[test]
fn restore_refuses_a_log_with_holes() {
    let (_dir, source) = store(1);
    let log = source.partition(0).unwrap();
    apply_one(log, append("a-1", ExpectedRevision::Any, &[1, 2, 3])).unwrap();
    let (_other, target) = store(1);
    let with_hole =
        log.read_partition(Offset(0), u64::MAX).filter(|e| e.as_ref().map_or(true, |e| e.offset != Offset(1)));
    let err = target.partition(0).unwrap().restore(with_hole, |_| {}).unwrap_err();
    assert_eq!(err.reason(), "DATA_CORRUPT");
}

#[test]
fn a_prepared_batch_carries_the_callers_writes_atomically() {
    let (_dir, store) = store(1);
    let log = store.partition(0).unwrap();
    let meta = store.db().cf_handle("default").unwrap();
    let mut prepared = log.prepare(&[append("a-1", ExpectedRevision::Exact(Revision(4)), &[1])], 10).unwrap();
    assert!(prepared.outcomes()[0].is_err());
    prepared.put_cf(meta, b"applied", b"7");
    prepared.commit(Durability::Sync).unwrap();
    assert_eq!(store.db().get_cf(meta, b"applied").unwrap().as_deref(), Some(&b"7"[..]));
    assert_eq!(log.next_offset(), Offset(0));
    let dropped = log.prepare(&[append("a-1", ExpectedRevision::Any, &[1])], 10).unwrap();
    drop(dropped);
    assert_eq!(log.next_offset(), Offset(0), "a prepared batch that is dropped writes nothing");
    assert_eq!(log.at_consistent_cut(Ok).unwrap(), 0);
}
