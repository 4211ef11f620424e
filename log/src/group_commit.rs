//! Group commit: many concurrent appenders, one fsync.
//!
//! [`Appender`] validates each append, routes it to its partition's writer thread and awaits the outcome.
//! A writer thread takes every append waiting in its queue (up to a bound), applies them as one batch with
//! one synced write, and answers each caller. No timer and no linger: while one fsync runs, the next batch
//! gathers, so batches grow exactly as fast as the disk falls behind. The writers are plain threads because
//! RocksDB's write and fsync block; nothing here blocks an async executor.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use serde::Deserialize;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::error::Result;
use crate::event::AppendOutcome;
use crate::event::AppendRequest;
use crate::limits::Limits;
use crate::partition::Durability;
use crate::partition::PartitionLog;
use crate::partitioner::partition_of;
use crate::store::LogStore;

/// Bounds on one group-committed batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupCommitConfig {
    /// Most appends in one batch.
    pub max_batch_appends: usize,
    /// Most event data bytes in one batch (a single larger append still goes alone).
    pub max_batch_bytes: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig { max_batch_appends: 4096, max_batch_bytes: 16 * 1024 * 1024 }
    }
}

/// Counters of the group-commit writers, across all partitions.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Synced writes issued (one fsync each).
    pub batches: AtomicU64,
    /// Appends that were written (not rejected, not deduplicated) by those batches.
    pub appends: AtomicU64,
}

impl CommitStats {
    /// Average appends served per synced write so far.
    pub fn appends_per_batch(&self) -> f64 {
        let batches = self.batches.load(Ordering::Relaxed);
        if batches == 0 { 0.0 } else { self.appends.load(Ordering::Relaxed) as f64 / batches as f64 }
    }
}

struct Job {
    request: AppendRequest,
    reply: oneshot::Sender<Result<AppendOutcome>>,
}

/// The durable append path of one node: validation, routing and group commit over a [`LogStore`].
pub struct Appender {
    limits: Limits,
    queues: Vec<mpsc::Sender<Job>>,
    writers: Vec<JoinHandle<()>>,
    stats: Arc<CommitStats>,
}

impl Appender {
    /// Starts one writer thread per partition of `store`.
    pub fn start(store: &LogStore, limits: Limits, config: GroupCommitConfig) -> Result<Self> {
        limits.check().map_err(Error::Config)?;
        let stats = Arc::new(CommitStats::default());
        let mut queues = Vec::new();
        let mut writers = Vec::new();
        for log in store.partitions() {
            let (sender, receiver) = mpsc::channel();
            let writer = Writer { log: log.clone(), receiver, config: config.clone(), stats: stats.clone() };
            let handle = std::thread::Builder::new()
                .name(format!("fjord-log-writer-{}", log.partition()))
                .spawn(move || writer.run())
                .map_err(|e| Error::Config(format!("cannot start a writer thread: {e}")))?;
            queues.push(sender);
            writers.push(handle);
        }
        Ok(Appender { limits, queues, writers, stats })
    }

    /// Validates and appends durably: resolves once the append is fsynced (or rejected, changing nothing).
    pub async fn append(&self, request: AppendRequest) -> Result<AppendOutcome> {
        self.limits.validate_append(&request)?;
        let partition = partition_of(&request.stream, u32::try_from(self.queues.len()).unwrap_or(u32::MAX));
        let (reply, outcome) = oneshot::channel();
        self.queues[partition as usize].send(Job { request, reply }).map_err(|_| Error::WriterStopped { partition })?;
        outcome.await.map_err(|_| Error::WriterStopped { partition })?
    }

    /// The limits appends are validated against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counters of the writers.
    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Stops accepting appends, lets the writers finish what is queued, and waits for them.
    /// Blocking: call it from a blocking context (`spawn_blocking`, or after the runtime's work is done).
    pub fn shutdown(self) {
        drop(self.queues);
        for writer in self.writers {
            if writer.join().is_err() {
                tracing::error!("a log writer thread panicked");
            }
        }
    }
}

struct Writer {
    log: Arc<PartitionLog>,
    receiver: mpsc::Receiver<Job>,
    config: GroupCommitConfig,
    stats: Arc<CommitStats>,
}

impl Writer {
    fn run(self) {
        while let Ok(first) = self.receiver.recv() {
            let mut bytes = data_bytes(&first.request);
            let mut jobs = vec![first];
            while jobs.len() < self.config.max_batch_appends && bytes < self.config.max_batch_bytes {
                match self.receiver.try_recv() {
                    Ok(job) => {
                        bytes += data_bytes(&job.request);
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.commit(jobs);
        }
    }

    fn commit(&self, jobs: Vec<Job>) {
        let (requests, replies): (Vec<_>, Vec<_>) = jobs.into_iter().map(|job| (job.request, job.reply)).unzip();
        match self.log.apply(&requests, now_micros(), Durability::Sync) {
            Ok(outcomes) => {
                let written = outcomes.iter().filter(|o| matches!(o, Ok(a) if !a.deduplicated)).count();
                if written > 0 {
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats.appends.fetch_add(written as u64, Ordering::Relaxed);
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // A caller that stopped waiting is no error of ours: its append is durable all the same.
                    let _ = reply.send(outcome.map_err(Error::Rejected));
                }
            }
            Err(error) => {
                tracing::error!(%error, partition = %self.log.partition(), "append batch failed; nothing written");
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

fn data_bytes(request: &AppendRequest) -> usize {
    request.events.iter().map(|e| e.data.len()).sum()
}

/// Now, in microseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::ExpectedRevision;
    use crate::event::ProposedEvent;
    use crate::ids::Revision;
    use crate::read::Direction;
    use crate::store::StoreOptions;

    fn start(partitions: u32) -> (tempfile::TempDir, Arc<LogStore>, Arc<Appender>) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(LogStore::open(dir.path(), &StoreOptions { partitions, ..StoreOptions::default() }).unwrap());
        let appender = Arc::new(Appender::start(&store, Limits::default(), GroupCommitConfig::default()).unwrap());
        (dir, store, appender)
    }

    fn request(stream: &str, expected: ExpectedRevision) -> AppendRequest {
        AppendRequest {
            stream: stream.to_owned(),
            expected,
            events: vec![ProposedEvent::json("Ticked", b"{}".to_vec())],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_all_land_densely() {
        let (_dir, store, appender) = start(4);
        let mut tasks = Vec::new();
        for writer in 0..32 {
            let appender = appender.clone();
            tasks.push(tokio::spawn(async move {
                let stream = format!("w-{writer}");
                for revision in 0..20u64 {
                    let expected = if revision == 0 {
                        ExpectedRevision::NoStream
                    } else {
                        ExpectedRevision::Exact(Revision(revision - 1))
                    };
                    let outcome = appender.append(request(&stream, expected)).await.unwrap();
                    assert_eq!(outcome.revision, Revision(revision));
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let total: u64 = store.partitions().iter().map(|p| p.next_offset().0).sum();
        assert_eq!(total, 32 * 20);
        assert_eq!(appender.stats().appends.load(Ordering::Relaxed), 32 * 20);
        assert!(appender.stats().batches.load(Ordering::Relaxed) <= 32 * 20);
        for writer in 0..32 {
            let stream = format!("w-{writer}");
            let revisions: Vec<u64> = store
                .partition_for(&stream)
                .read_stream(&stream, Revision(0), Direction::Forward, u64::MAX)
                .map(|e| e.unwrap().revision.0)
                .collect();
            assert_eq!(revisions, (0..20).collect::<Vec<_>>());
        }
    }

    #[tokio::test]
    async fn invalid_and_rejected_appends_change_nothing() {
        let (_dir, store, appender) = start(2);
        let invalid = appender.append(request("has space", ExpectedRevision::Any)).await.unwrap_err();
        assert!(matches!(invalid, Error::Invalid(crate::InvalidInput::StreamNameNotPrintable { .. })));
        assert_eq!(invalid.reason(), "INVALID_ARGUMENT");
        let rejected = appender.append(request("s-1", ExpectedRevision::Exact(Revision(3)))).await.unwrap_err();
        assert_eq!(rejected.reason(), "WRONG_EXPECTED_REVISION");
        assert_eq!(store.partitions().iter().map(|p| p.next_offset().0).sum::<u64>(), 0);
        assert_eq!(appender.stats().batches.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn limits_that_make_no_sense_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), &StoreOptions::default()).unwrap();
        let limits = Limits { max_stream_name_bytes: 300, ..Limits::default() };
        assert!(matches!(Appender::start(&store, limits, GroupCommitConfig::default()), Err(Error::Config(_))));
    }
}
