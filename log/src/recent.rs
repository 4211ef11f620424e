//! The events a partition applied last, kept in memory for the log's live followers. A caught-up
//! subscriber reads what the latest commits added from here instead of RocksDB: with a read of the store
//! per follower per commit, a hundred live subscribers spent most of the node's CPU on iterators. The ring
//! holds a contiguous run of offsets ending at the applied tail, is bounded in bytes, and is emptied
//! whenever the log is rewritten (a snapshot install), so it never holds what the store does not.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;

use crate::event::RecordedEvent;

/// The last applied events of one partition, up to a byte budget.
pub(crate) struct RecentEvents {
    budget: usize,
    ring: Mutex<Ring>,
}

/// Offsets `start .. start + events.len()`, in order.
#[derive(Default)]
struct Ring {
    start: u64,
    events: VecDeque<Arc<RecordedEvent>>,
    bytes: usize,
}

impl Ring {
    fn end(&self) -> u64 {
        self.start + self.events.len() as u64
    }
}

impl RecentEvents {
    /// An empty ring that keeps up to `budget` bytes of events (0: none).
    pub(crate) fn new(budget: usize) -> Self {
        RecentEvents { budget, ring: Mutex::new(Ring::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Every change leaves the ring whole before it can panic: a poisoned lock holds a valid ring.
        self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a commit's events (consecutive offsets, in order). A commit that does not follow the ring's
    /// last event starts the ring anew.
    pub(crate) fn push(&self, events: impl IntoIterator<Item = RecordedEvent>) {
        if self.budget == 0 {
            return;
        }
        let mut ring = self.lock();
        for event in events {
            if event.offset.0 != ring.end() {
                *ring = Ring { start: event.offset.0, ..Ring::default() };
            }
            ring.bytes += size_of(&event);
            ring.events.push_back(Arc::new(event));
            while ring.bytes > self.budget {
                let Some(oldest) = ring.events.pop_front() else { break };
                ring.bytes -= size_of(&oldest);
                ring.start += 1;
            }
        }
    }

    /// Forgets every event (the log was rewritten).
    pub(crate) fn clear(&self) {
        *self.lock() = Ring::default();
    }

    /// Events from offset `from` up to (not including) `end`, at most `max`, if the ring still holds
    /// `from`; `None` if it does not (read the store).
    pub(crate) fn read(&self, from: u64, end: u64, max: usize) -> Option<Vec<Arc<RecordedEvent>>> {
        let ring = self.lock();
        if from < ring.start || from >= ring.end() {
            return None;
        }
        let skip = usize::try_from(from - ring.start).ok()?;
        let wanted = usize::try_from(end.min(ring.end()).saturating_sub(from)).unwrap_or(usize::MAX).min(max);
        Some(ring.events.iter().skip(skip).take(wanted).cloned().collect())
    }
}

/// About what an event takes in memory.
fn size_of(event: &RecordedEvent) -> usize {
    let metadata: usize = event.metadata.iter().map(|(key, value)| key.len() + value.len() + 48).sum();
    std::mem::size_of::<RecordedEvent>()
        + event.stream.len()
        + event.event_type.len()
        + event.content_type.len()
        + event.data.len()
        + metadata
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Offset;
    use crate::ids::Revision;

    fn event(offset: u64, bytes: usize) -> RecordedEvent {
        RecordedEvent {
            id: uuid::Uuid::from_u128(u128::from(offset)),
            stream: "s".to_owned(),
            event_type: "T".to_owned(),
            content_type: String::new(),
            data: vec![0; bytes],
            metadata: Default::default(),
            offset: Offset(offset),
            revision: Revision(offset),
            timestamp_micros: 0,
        }
    }

    fn offsets(events: Option<Vec<Arc<RecordedEvent>>>) -> Option<Vec<u64>> {
        events.map(|events| events.iter().map(|event| event.offset.0).collect())
    }

    #[test]
    fn it_serves_a_contiguous_suffix_and_nothing_before_or_past_it() {
        let recent = RecentEvents::new(1 << 20);
        recent.push((10..15).map(|offset| event(offset, 10)));
        assert_eq!(offsets(recent.read(12, 100, 10)), Some(vec![12, 13, 14]));
        assert_eq!(offsets(recent.read(10, 12, 10)), Some(vec![10, 11]));
        assert_eq!(offsets(recent.read(10, 100, 1)), Some(vec![10]));
        assert_eq!(recent.read(9, 100, 10), None, "before the ring");
        assert_eq!(recent.read(15, 100, 10), None, "past the ring");
        // A commit that does not follow on starts the ring anew.
        recent.push([event(20, 10)]);
        assert_eq!(recent.read(14, 100, 10), None);
        assert_eq!(offsets(recent.read(20, 100, 10)), Some(vec![20]));
        recent.clear();
        assert_eq!(recent.read(20, 100, 10), None);
    }

    #[test]
    fn it_keeps_to_its_budget_by_dropping_the_oldest() {
        let one = size_of(&event(0, 1000));
        let recent = RecentEvents::new(3 * one);
        recent.push((0..10).map(|offset| event(offset, 1000)));
        assert_eq!(offsets(recent.read(7, 100, 10)), Some(vec![7, 8, 9]));
        assert_eq!(recent.read(6, 100, 10), None);
        let nothing = RecentEvents::new(0);
        nothing.push([event(0, 1)]);
        assert_eq!(nothing.read(0, 1, 1), None);
    }
}
