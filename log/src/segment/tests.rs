//! Segment round-trips and corruption detection, as properties.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use uuid::Uuid;

use super::*;
use crate::error::Error;
use crate::event::RecordedEvent;
use crate::ids::Offset;
use crate::record::tests::arb_event;

fn header(base_offset: u64) -> SegmentHeader {
    SegmentHeader { cluster_id: Uuid::from_u128(0xF70D), region: "eu-north".to_owned(), partition: 3, base_offset }
}

/// Events with strictly increasing offsets from `base`, with gaps when `gaps` is set.
fn arb_run(base: u64) -> impl Strategy<Value = Vec<RecordedEvent>> {
    (vec(arb_event(), 0..40), vec(0u64..3, 40), any::<bool>()).prop_map(move |(mut events, steps, gaps)| {
        let mut offset = base;
        for (event, step) in events.iter_mut().zip(steps) {
            offset += if gaps { step } else { 0 };
            event.offset = Offset(offset);
            offset += 1;
        }
        events
    })
}

fn encode(events: &[RecordedEvent], base: u64, previous_chain: u32, batch_bytes: usize) -> (Vec<u8>, SegmentSummary) {
    let mut encoder = SegmentEncoder::with_batch_bytes(Vec::new(), &header(base), previous_chain, batch_bytes).unwrap();
    for event in events {
        encoder.push(event).unwrap();
    }
    let next = events.last().map_or(base, |e| e.offset.0 + 1) + 5;
    encoder.finish(next).unwrap()
}

proptest! {
    /// Fuzz target: a real segment with bytes overwritten, inserted and cut, or noise after a valid magic,
    /// decodes or fails cleanly (never panics), whole or batch by batch through the reader; what decodes
    /// holds the records that went in. More cases on demand: `PROPTEST_CASES=100000`.
    #[test]
    fn fuzz_damaged_segments_decode_or_fail_cleanly(
        events in arb_run(0),
        edits in vec(any::<crate::fuzzing::Edit>(), 0..6),
        batch_bytes in 1usize..2048,
    ) {
        let (mut bytes, _) = encode(&events, 0, 7, batch_bytes);
        crate::fuzzing::damage(&mut bytes, &edits);
        if let Ok(segment) = decode_segment(&bytes, 7) {
            prop_assert_eq!(segment.records, events.clone());
        }
        if let Ok(reader) = SegmentReader::open(std::io::Cursor::new(&bytes))
            && let Ok(records) = reader.records(7).collect::<crate::error::Result<Vec<_>>>()
        {
            prop_assert_eq!(records, events);
        }
    }

    #[test]
    fn round_trips(events in arb_run(1000), previous in any::<u32>(), batch_bytes in 1usize..4096) {
        let (bytes, summary) = encode(&events, 1000, previous, batch_bytes);
        let segment = decode_segment(&bytes, previous).unwrap();
        prop_assert_eq!(&segment.header, &header(1000));
        prop_assert_eq!(&segment.records, &events);
        prop_assert_eq!(segment.summary, summary);
        prop_assert_eq!(summary.record_count, events.len() as u64);
        for (stream, batches) in &segment.index.streams {
            for &ordinal in batches {
                let batch = segment.index.batches[ordinal as usize];
                prop_assert!(events.iter().any(|e| &e.stream == stream
                    && (batch.first_offset..=batch.last_offset).contains(&e.offset.0)));
            }
        }
    }

    #[test]
    fn any_flipped_byte_is_detected(
        events in arb_run(0), at in any::<prop::sample::Index>(), flip in 1u8..=255, batch_bytes in 1usize..2048,
    ) {
        let (mut bytes, _) = encode(&events, 0, CHAIN_SEED, batch_bytes);
        let at = at.index(bytes.len());
        bytes[at] ^= flip;
        prop_assert!(decode_segment(&bytes, CHAIN_SEED).is_err(), "flip at {} of {} went unnoticed", at, bytes.len());
    }

    #[test]
    fn any_truncation_is_detected(events in arb_run(0), cut in any::<prop::sample::Index>()) {
        let (bytes, _) = encode(&events, 0, CHAIN_SEED, 512);
        let cut = cut.index(bytes.len());
        prop_assert!(decode_segment(&bytes[..cut], CHAIN_SEED).is_err());
    }

    #[test]
    fn a_broken_chain_is_detected(events in arb_run(0), previous in any::<u32>(), other in any::<u32>()) {
        prop_assume!(previous != other);
        let (bytes, _) = encode(&events, 0, previous, 512);
        let decoded = decode_segment(&bytes, other);
        prop_assert!(matches!(decoded, Err(Error::Segment(SegmentError::ChainMismatch { .. }))), "{:?}", decoded);
    }
}

#[test]
fn chains_link_consecutive_segments() {
    let mut events: Vec<RecordedEvent> = Vec::new();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for offset in 0..20u64 {
        let mut event = arb_event().new_tree(&mut runner).unwrap().current();
        event.offset = Offset(offset);
        events.push(event);
    }
    let (first, first_summary) = encode(&events[..10], 0, CHAIN_SEED, 256);
    let mut encoder = SegmentEncoder::new(Vec::new(), &header(15), first_summary.chain_checksum).unwrap();
    for event in &events[10..] {
        let mut event = event.clone();
        event.offset = Offset(event.offset.0 + 5);
        encoder.push(&event).unwrap();
    }
    let (second, _) = encoder.finish(25).unwrap();
    assert_eq!(decode_segment(&first, CHAIN_SEED).unwrap().summary, first_summary);
    assert!(decode_segment(&second, first_summary.chain_checksum).is_ok());
    assert!(decode_segment(&second, CHAIN_SEED).is_err());
}

#[test]
fn encoder_refuses_out_of_order_offsets_and_a_short_range() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut event = arb_event().new_tree(&mut runner).unwrap().current();
    let mut encoder = SegmentEncoder::new(Vec::new(), &header(10), CHAIN_SEED).unwrap();
    event.offset = Offset(9);
    assert!(encoder.push(&event).is_err(), "below base");
    event.offset = Offset(12);
    encoder.push(&event).unwrap();
    assert!(encoder.push(&event).is_err(), "repeated offset");
    assert!(encoder.finish(12).is_err(), "next offset must pass the last record");
}

#[test]
fn version_and_magic_are_checked() {
    let (mut bytes, _) = encode(&[], 0, CHAIN_SEED, 64);
    assert!(matches!(decode_segment(b"nope", CHAIN_SEED), Err(Error::Segment(SegmentError::BadMagic { .. }))));
    // A future version with a valid header checksum is refused by version, not by checksum.
    bytes[4] = 3;
    let header_len = 4 + 2 + 2 + 16 + 1 + "eu-north".len() + 4 + 8;
    let crc = crc32c::crc32c(&bytes[..header_len]);
    bytes[header_len..header_len + 4].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(decode_segment(&bytes, CHAIN_SEED), Err(Error::Segment(SegmentError::UnsupportedVersion(3)))));
}

proptest! {
    #[test]
    fn the_chain_depends_only_on_the_records(
        events in arb_run(0), cut in any::<prop::sample::Index>(), first_batch in 1usize..4096, second_batch in 1usize..4096,
    ) {
        prop_assume!(!events.is_empty());
        let (_, whole) = encode_exact(&events, 0, CHAIN_SEED, first_batch, &header(0));
        let cut = cut.index(events.len());
        let split = events[cut].offset.0;
        let (_, first) = encode_exact(&events[..cut], 0, CHAIN_SEED, second_batch, &header(0));
        let other_cluster = SegmentHeader { cluster_id: Uuid::from_u128(1), region: "elsewhere".to_owned(), ..header(split) };
        let (_, second) = encode_exact(&events[cut..], split, first.chain_checksum, first_batch, &other_cluster);
        prop_assert_eq!(second.chain_checksum, whole.chain_checksum);
    }
}

/// Encodes `events` as one segment ending right after the last event.
fn encode_exact(
    events: &[RecordedEvent],
    base: u64,
    previous_chain: u32,
    batch_bytes: usize,
    header: &SegmentHeader,
) -> (Vec<u8>, SegmentSummary) {
    let header = SegmentHeader { base_offset: base, ..header.clone() };
    let mut encoder = SegmentEncoder::with_batch_bytes(Vec::new(), &header, previous_chain, batch_bytes).unwrap();
    for event in events {
        encoder.push(event).unwrap();
    }
    encoder.finish(events.last().map_or(base, |e| e.offset.0 + 1)).unwrap()
}

#[test]
fn a_reader_reads_only_the_batches_of_one_stream() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let events: Vec<RecordedEvent> = (0..60u64)
        .map(|offset| {
            let mut event = arb_event().new_tree(&mut runner).unwrap().current();
            event.offset = Offset(offset);
            event.stream = if offset % 20 == 7 { "rare-1".to_owned() } else { format!("common-{}", offset % 3) };
            event
        })
        .collect();
    let (bytes, _) = encode(&events, 0, CHAIN_SEED, 512);
    let mut reader = SegmentReader::open(std::io::Cursor::new(&bytes)).unwrap();
    let batches = reader.batches_of_stream("rare-1").to_vec();
    assert!(batches.len() < reader.index().batches.len(), "the index must let a reader skip batches");
    let mut found = Vec::new();
    for ordinal in batches {
        found.extend(reader.read_batch(ordinal).unwrap().into_iter().filter(|e| e.stream == "rare-1"));
    }
    let expected: Vec<_> = events.iter().filter(|e| e.stream == "rare-1").cloned().collect();
    assert_eq!(found, expected);
    assert!(reader.batches_of_stream("absent-1").is_empty());
    // Reading every batch in order verifies the chain.
    let all: Vec<_> = reader.records(CHAIN_SEED).collect::<Result<_, _>>().unwrap();
    assert_eq!(all, events);
}
