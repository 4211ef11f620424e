//! Where queries run: a tokio runtime of their own, whose threads (the workers that run DataFusion's
//! operators and the pool that reads the log for scans) the OS schedules as idle work (`SCHED_IDLE`): a
//! heavy query takes the CPU that appends and Raft leave over, and any of the node's threads that wakes up
//! takes the CPU back at once. Without it, sixteen heavy queries on a two-core node stretched appends' p99
//! from 4 ms to 3 s; at nice 10 to 27 ms, at nice 19 to 16 ms (bench/run-query, 1M events). (InfluxDB IOx
//! runs DataFusion on a dedicated executor for the same reason.)

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::execute_stream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use crate::error::QueryError;

/// Blocking threads (the scans' log reads) per worker thread.
const SCAN_THREADS_PER_WORKER: usize = 2;
/// Record batches a running query holds ready ahead of its reader.
const BATCHES_AHEAD: usize = 2;

/// The queries' runtime.
pub(crate) struct QueryExecutor {
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for QueryExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryExecutor").finish_non_exhaustive()
    }
}

impl QueryExecutor {
    /// A runtime of `workers` threads, with `workers` times [`SCAN_THREADS_PER_WORKER`] for scans.
    pub(crate) fn new(workers: usize) -> Result<Self, QueryError> {
        let workers = workers.max(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .max_blocking_threads(workers * SCAN_THREADS_PER_WORKER)
            .thread_name("fjord-query")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .map_err(|error| QueryError::Internal(format!("starting the query runtime: {error}")))?;
        Ok(QueryExecutor { runtime: Some(runtime) })
    }

    /// Where other work that should run below the node's own runs (views' folds).
    pub(crate) fn handle(&self) -> tokio::runtime::Handle {
        match &self.runtime {
            Some(runtime) => runtime.handle().clone(),
            // Only while dropping, when nothing asks.
            None => tokio::runtime::Handle::current(),
        }
    }

    /// Runs `plan` on the query runtime; its batches arrive through the returned stream, a few ahead of
    /// the reader at most. Dropping the stream stops the plan.
    pub(crate) fn execute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream, QueryError> {
        let runtime = self.runtime.as_ref().ok_or_else(|| QueryError::Internal("the node is stopping".to_owned()))?;
        let schema = plan.schema();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch, DataFusionError>>(BATCHES_AHEAD);
        let running = runtime.spawn(async move {
            let mut batches = match execute_stream(plan, context) {
                Ok(batches) => batches,
                Err(error) => {
                    let _ = tx.send(Err(error)).await;
                    return;
                }
            };
            while let Some(batch) = batches.next().await {
                // The reader is gone: the query is over.
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
        });
        let stopper = StopOnDrop(running);
        let batches = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |batch| {
            // Keeps the plan running exactly as long as its stream is read.
            let _ = &stopper;
            batch
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

impl Drop for QueryExecutor {
    fn drop(&mut self) {
        // A runtime may not be dropped (blocking) inside another's task; queries still running are stopped.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Stops a running plan when its stream is dropped.
struct StopOnDrop(tokio::task::JoinHandle<()>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Makes the calling thread idle work for the scheduler (`SCHED_IDLE`): it runs on CPU no other thread
/// wants, and a thread of the node's that wakes up preempts it.
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call, which only reads it; pid 0 names the calling thread.
    // Where it is not allowed, queries run at the node's priority: slower appends beside heavy queries,
    // nothing worse.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
}
