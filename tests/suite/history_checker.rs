//! The history checker is only as good as what it catches: each test hands it a history and stored data
//! with one planted fault and expects exactly that violation, and a clean history to pass.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use fjord_proto::v1;

use crate::common::history::AppendOp;
use crate::common::history::History;
use crate::common::history::Outcome;
use crate::common::history::ReadOp;
use crate::common::history::Violation;

fn position(offset: u64, revision: u64) -> v1::EventPosition {
    v1::EventPosition { partition: 0, offset, revision }
}

fn event(id: u128, stream: &str, offset: u64, revision: u64) -> v1::RecordedEvent {
    v1::RecordedEvent {
        id: uuid::Uuid::from_u128(id).as_bytes().to_vec(),
        stream: stream.to_owned(),
        r#type: "Tested".to_owned(),
        position: Some(position(offset, revision)),
        ..Default::default()
    }
}

/// Three appends of one event each to stream "s" (ids 1, 2, 3), acknowledged at revisions 0, 1, 2.
fn acknowledged_history(start: Instant) -> History {
    let history = History::default();
    for i in 0..3u64 {
        let at = start + Duration::from_millis(10 * i);
        history.append(AppendOp {
            client: 0,
            stream: "s".to_owned(),
            ids: vec![u128::from(i) + 1],
            expected_exact: Some(i).filter(|r| *r > 0).map(|r| r - 1),
            invoked: at,
            completed: at + Duration::from_millis(5),
            outcome: Outcome::Ok(vec![position(i, i)]),
        });
    }
    history
}

fn stored(events: Vec<v1::RecordedEvent>) -> BTreeMap<u64, Vec<Vec<v1::RecordedEvent>>> {
    (1..=3).map(|node| (node, vec![events.clone()])).collect()
}

fn all_three() -> Vec<v1::RecordedEvent> {
    (0..3).map(|i| event(u128::from(i) + 1, "s", i, i)).collect()
}

#[test]
fn a_clean_history_passes() {
    let history = acknowledged_history(Instant::now());
    assert_eq!(history.check(&stored(all_three())), vec![]);
}

#[test]
fn a_lost_acknowledged_append_is_caught() {
    let history = acknowledged_history(Instant::now());
    let mut events = all_three();
    events.pop();
    let violations = history.check(&stored(events));
    assert_eq!(violations, vec![Violation::LostAcknowledged { id: 3, stream: "s".to_owned() }]);
}

#[test]
fn a_duplicate_is_caught() {
    let history = acknowledged_history(Instant::now());
    let mut events = all_three();
    events.push(event(3, "s", 3, 3));
    assert!(history.check(&stored(events)).contains(&Violation::Duplicated { id: 3, copies: 2 }));
}

#[test]
fn a_refused_append_that_was_written_is_caught() {
    let start = Instant::now();
    let history = acknowledged_history(start);
    history.append(AppendOp {
        client: 1,
        stream: "s".to_owned(),
        ids: vec![9],
        expected_exact: Some(0),
        invoked: start,
        completed: start + Duration::from_millis(1),
        outcome: Outcome::Failed("FailedPrecondition: wrong expected revision".to_owned()),
    });
    let mut events = all_three();
    events.push(event(9, "s", 3, 3));
    assert_eq!(history.check(&stored(events)), vec![Violation::FailedButPresent { id: 9, stream: "s".to_owned() }]);
}

#[test]
fn an_unknown_outcome_may_be_present_once_but_not_twice() {
    let start = Instant::now();
    let history = acknowledged_history(start);
    history.append(AppendOp {
        client: 1,
        stream: "s".to_owned(),
        ids: vec![7],
        expected_exact: None,
        invoked: start,
        completed: start + Duration::from_millis(1),
        outcome: Outcome::Unknown("Unavailable".to_owned()),
    });
    let mut events = all_three();
    assert_eq!(history.check(&stored(events.clone())), vec![], "absent is fine");
    events.push(event(7, "s", 3, 3));
    assert_eq!(history.check(&stored(events.clone())), vec![], "present once is fine");
    events.push(event(7, "s", 4, 4));
    assert!(history.check(&stored(events)).contains(&Violation::Duplicated { id: 7, copies: 2 }));
}

#[test]
fn diverging_replicas_and_moved_events_are_caught() {
    let history = acknowledged_history(Instant::now());
    let mut copies = stored(all_three());
    copies.get_mut(&2).unwrap()[0][1].data = b"flipped".to_vec();
    assert_eq!(history.check(&copies), vec![Violation::ReplicasDiffer { partition: 0, node: 2 }]);

    let swapped = vec![event(2, "s", 0, 0), event(1, "s", 1, 1), event(3, "s", 2, 2)];
    let violations = history.check(&stored(swapped));
    assert!(violations.iter().any(|v| matches!(v, Violation::MovedFromAcknowledged { id: 1, .. })), "{violations:?}");
}

#[test]
fn a_phantom_event_and_a_revision_gap_are_caught() {
    let history = acknowledged_history(Instant::now());
    let mut events = all_three();
    events.push(event(99, "s", 3, 4));
    let violations = history.check(&stored(events));
    assert!(violations.contains(&Violation::Phantom { id: 99, stream: "s".to_owned() }), "{violations:?}");
    assert!(violations.contains(&Violation::RevisionGap { stream: "s".to_owned(), expected: 3, found: 4 }));
}

#[test]
fn two_winners_of_one_exact_revision_are_caught() {
    let start = Instant::now();
    let history = acknowledged_history(start);
    // A second append also acknowledged as expecting revision 0 (the check the planted bug would skip).
    history.append(AppendOp {
        client: 1,
        stream: "s".to_owned(),
        ids: vec![4],
        expected_exact: Some(0),
        invoked: start,
        completed: start + Duration::from_millis(40),
        outcome: Outcome::Ok(vec![position(3, 3)]),
    });
    let mut events = all_three();
    events.push(event(4, "s", 3, 3));
    let violations = history.check(&stored(events));
    assert_eq!(violations, vec![Violation::TwoWinners { stream: "s".to_owned(), revision: 0, winners: 2 }]);
}

#[test]
fn a_read_that_goes_back_in_time_is_caught() {
    let start = Instant::now();
    let history = acknowledged_history(start);
    let read = |events, from_ms, to_ms| ReadOp {
        client: 2,
        stream: "s".to_owned(),
        invoked: start + Duration::from_millis(from_ms),
        completed: start + Duration::from_millis(to_ms),
        events,
    };
    // After all three acknowledgements (the last completed at 25 ms), a read must see 3 events.
    history.read(read(3, 30, 31));
    assert_eq!(history.check(&stored(all_three())), vec![]);
    history.read(read(2, 40, 41));
    let violations = history.check(&stored(all_three()));
    assert_eq!(violations, vec![Violation::StaleRead { stream: "s".to_owned(), client: 2, saw: 2, floor: 3 }]);
}
