//! Where a query's answer stands in the log: the offset each partition's scan stops before, taken when
//! the query starts, after waiting (bounded) for the offsets a client's consistency token names. Every
//! answer reports its cut, so a reader knows exactly how fresh it is.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::SystemTime;

use fjord_log::LogStore;

use crate::error::QueryError;

/// The offsets a query reads up to: per partition, the node's applied end when the query started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    offsets: Vec<(u32, u64)>,
    taken_at: SystemTime,
}

impl Cut {
    /// The node's applied end of every partition, now.
    pub fn now(store: &LogStore) -> Self {
        let offsets = store.partitions().iter().map(|log| (log.partition().0, log.applied_tail().next_offset.0));
        Cut { offsets: offsets.collect(), taken_at: SystemTime::now() }
    }

    /// This cut, lowered to `offsets` where they are lower: an answer read from views stands where they
    /// were folded up to.
    pub fn lowest(&self, offsets: &BTreeMap<u32, u64>) -> Cut {
        let lowered = self
            .offsets
            .iter()
            .map(|&(partition, end)| (partition, offsets.get(&partition).map_or(end, |&folded| folded.min(end))));
        Cut { offsets: lowered.collect(), taken_at: self.taken_at }
    }

    /// `(partition, offset the answer stops before)`, by partition.
    pub fn offsets(&self) -> &[(u32, u64)] {
        &self.offsets
    }

    /// When the cut was taken.
    pub fn taken_at(&self) -> SystemTime {
        self.taken_at
    }
}

/// Waits until this node has applied every partition's log up to the offset `wanted` names (a consistency
/// token: the offset after a client's write), for at most `timeout`.
pub async fn wait_until_applied(
    store: &LogStore,
    wanted: &BTreeMap<u32, u64>,
    timeout: Duration,
) -> Result<(), QueryError> {
    let waits = wanted.iter().map(|(&partition, &offset)| async move {
        let log = store.partition(partition).map_err(|_| QueryError::UnknownPartition { partition })?;
        let mut tail = log.watch_tail();
        // The sender lives as long as the log, which outlives this wait.
        let _ = tail.wait_for(|applied| applied.next_offset.0 >= offset).await;
        Ok::<(), QueryError>(())
    });
    let all = futures::future::try_join_all(waits);
    match tokio::time::timeout(timeout, all).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => {
            let behind = wanted
                .iter()
                .filter_map(|(&partition, &offset)| {
                    let applied = store.partition(partition).ok()?.applied_tail().next_offset.0;
                    (applied < offset).then(|| format!("partition {partition} at {applied} of {offset}"))
                })
                .collect::<Vec<_>>();
            Err(QueryError::NotFreshEnough { waited: timeout, behind: behind.join(", ") })
        }
    }
}
