//! The node's SQL engine: one DataFusion setup shared by every query, and for each query its own catalog
//! (so a token's scope never leaks into another query), its own memory pool, a time limit, a place among
//! the node's concurrent queries, and a [`Cut`] that says how fresh its answer is. Queries are planned where
//! they arrive and run on the queries' own runtime, below the node's other work (`executor`).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::CatalogProvider;
use datafusion::catalog::CatalogProviderList;
use datafusion::catalog::SchemaProvider;
use datafusion::catalog::memory::MemoryCatalogProvider;
use datafusion::catalog::memory::MemoryCatalogProviderList;
use datafusion::catalog::memory::MemorySchemaProvider;
use datafusion::common::ScalarValue;
use datafusion::common::config::Dialect;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::SessionState;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::DiskManagerBuilder;
use datafusion::execution::disk_manager::DiskManagerMode;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::memory_pool::TrackConsumersPool;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionConfig;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast;
use fjord_log::LogStore;
use futures::Stream;
use futures::StreamExt;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;

use crate::cut::Cut;
use crate::cut::wait_until_applied;
use crate::error::QueryError;
use crate::events::EventsTable;
use crate::executor::QueryExecutor;
use crate::scope::StreamScope;
use crate::system;
use crate::system::RegionView;

/// The catalog every table lives in (`fjord.public.events`).
pub const CATALOG: &str = "fjord";
/// The schema every table lives in.
pub const SCHEMA: &str = "public";

/// How much a query may take. Each limit fails the query with a clear error; the node keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryLimits {
    /// The longest query text, bytes.
    pub max_query_bytes: usize,
    /// Memory one query's sorts, aggregates and joins may hold, bytes; past it they spill to disk where
    /// DataFusion can, and fail where it cannot.
    pub memory_bytes: usize,
    /// Disk one node's spilled query state may take, bytes (0: queries never spill).
    pub spill_bytes: u64,
    /// How long one query may run, planning and streaming its answer together, ms.
    pub timeout_ms: u64,
    /// Queries one node runs at once; one more is refused (`TOO_MANY_QUERIES`).
    pub max_concurrent: usize,
    /// How long a query that carries a consistency token waits for this node to apply it, ms.
    pub freshness_wait_ms: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_query_bytes: 64 * 1024,
            memory_bytes: 256 * 1024 * 1024,
            spill_bytes: 4 * 1024 * 1024 * 1024,
            timeout_ms: 60_000,
            max_concurrent: 32,
            freshness_wait_ms: 5_000,
        }
    }
}

/// What a query asks.
#[derive(Debug, Clone)]
pub struct QueryRequest {
    /// One SQL statement that reads; `$1`, `$2`… stand for `params`.
    pub sql: String,
    /// The streams the caller may see.
    pub scope: StreamScope,
    /// Offsets (per partition: the offset after the caller's last write) this node must have applied
    /// before the query starts: read-your-writes on any node.
    pub wait_for: BTreeMap<u32, u64>,
    /// The values of the statement's parameters, in order (each cast to the type the statement gives its
    /// parameter, where it gives one).
    pub params: Vec<ScalarValue>,
}

impl QueryRequest {
    /// A statement without parameters that waits for nothing.
    pub fn new(sql: impl Into<String>, scope: StreamScope) -> Self {
        QueryRequest { sql: sql.into(), scope, wait_for: BTreeMap::new(), params: Vec::new() }
    }
}

/// A statement planned but not run: what its parameters and its answer look like (a prepared statement's
/// description, a Flight SQL `FlightInfo`'s schema).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Each parameter's type (`$1` first), where the statement decides it.
    pub parameter_types: Vec<Option<DataType>>,
    /// The answer's schema, exactly as running the statement streams it.
    pub schema: SchemaRef,
}

/// The SQL engine of one node.
pub struct QueryEngine {
    store: Arc<LogStore>,
    region: Arc<dyn RegionView>,
    limits: QueryLimits,
    running: Arc<Semaphore>,
    base: SessionState,
    executor: QueryExecutor,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl QueryEngine {
    /// The engine over `store`'s log, with `region` for the system tables.
    pub fn new(store: Arc<LogStore>, region: Arc<dyn RegionView>, limits: QueryLimits) -> Result<Self, QueryError> {
        let cores = std::thread::available_parallelism().map_or(2, NonZeroUsize::get);
        let mut config = SessionConfig::new()
            .with_target_partitions(cores)
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, SCHEMA);
        // Postgres's dialect: `->>` on JSON, and what psql and drivers send.
        config.options_mut().sql_parser.dialect = Dialect::PostgreSQL;
        let disk = match limits.spill_bytes {
            0 => DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            bytes => DiskManagerBuilder::default().with_max_temp_directory_size(bytes),
        };
        let runtime = RuntimeEnvBuilder::new()
            .with_disk_manager_builder(disk)
            .build_arc()
            .map_err(|error| QueryError::Internal(error.to_string()))?;
        let mut base =
            SessionStateBuilder::new().with_config(config).with_runtime_env(runtime).with_default_features().build();
        datafusion_functions_json::register_all(&mut base).map_err(|error| QueryError::Internal(error.to_string()))?;
        let running = Arc::new(Semaphore::new(limits.max_concurrent));
        let executor = QueryExecutor::new(cores)?;
        Ok(QueryEngine { store, region, limits, running, base, executor })
    }

    /// The limits queries run under.
    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// Plans `request` and starts it: the answer streams from the returned [`QueryResult`].
    pub async fn query(&self, request: QueryRequest) -> Result<QueryResult, QueryError> {
        let bytes = request.sql.len();
        if bytes > self.limits.max_query_bytes {
            return Err(QueryError::TooLong { bytes, limit: self.limits.max_query_bytes });
        }
        let permit =
            self.running.clone().try_acquire_owned().map_err(|_| QueryError::Busy(self.limits.max_concurrent))?;
        let timeout = Duration::from_millis(self.limits.timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        if !request.wait_for.is_empty() {
            let wait = Duration::from_millis(self.limits.freshness_wait_ms);
            wait_until_applied(&self.store, &request.wait_for, wait).await?;
        }
        let cut = Arc::new(Cut::now(&self.store));
        let context = self.context(&request.scope, &cut)?;
        let memory = self.limits.memory_bytes;
        let start = async {
            let plan = plan(&context, &request.sql).await?;
            let plan = bind(plan, request.params)?;
            let failed = |e| QueryError::from_datafusion(e, memory);
            let frame = context.execute_logical_plan(plan).await.map_err(failed)?;
            let task = Arc::new(frame.task_ctx());
            let physical = frame.create_physical_plan().await.map_err(failed)?;
            // Planned here; run where queries run, below the node's own work.
            self.executor.execute(physical, task)
        };
        let batches = match tokio::time::timeout_at(deadline, start).await {
            Err(_) => return Err(QueryError::Timeout(timeout)),
            Ok(started) => started?,
        };
        let stream = QueryStream {
            batches,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            timeout,
            memory,
            done: false,
            _slot: QuerySlot::hold(permit, deadline),
        };
        Ok(QueryResult { cut: Cut::clone(&cut), stream })
    }

    /// Plans `sql` (one statement that reads, with `$1`… for parameters) for a caller who sees `scope`,
    /// without running it: its parameters' types and its answer's schema.
    /// Planning counts among the node's running queries and has the query's time limit.
    pub async fn prepare(&self, sql: &str, scope: &StreamScope) -> Result<Prepared, QueryError> {
        if sql.len() > self.limits.max_query_bytes {
            return Err(QueryError::TooLong { bytes: sql.len(), limit: self.limits.max_query_bytes });
        }
        let _permit =
            self.running.clone().try_acquire_owned().map_err(|_| QueryError::Busy(self.limits.max_concurrent))?;
        let timeout = Duration::from_millis(self.limits.timeout_ms);
        tokio::time::timeout(timeout, self.plan_only(sql, scope)).await.map_err(|_| QueryError::Timeout(timeout))?
    }

    /// [`Self::prepare`]'s planning.
    async fn plan_only(&self, sql: &str, scope: &StreamScope) -> Result<Prepared, QueryError> {
        let context = self.context(scope, &Arc::new(Cut::now(&self.store)))?;
        let plan = plan(&context, sql).await?;
        let types = plan.get_parameter_types().map_err(|e| QueryError::from_datafusion(e, 0))?;
        let mut parameter_types = vec![None; types.len()];
        for (name, data_type) in types {
            // DataFusion names positional parameters `$1`, `$2`…
            let index = name.trim_start_matches('$').parse::<usize>().ok().and_then(|n| n.checked_sub(1));
            match index.and_then(|index| parameter_types.get_mut(index)) {
                Some(slot) => *slot = data_type,
                None => return Err(QueryError::BadParameter(format!("parameter {name}: use $1, $2, … in order"))),
            }
        }
        // The schema the running query streams: the physical plan's, which can differ from the logical
        // plan's in nullability (a client like ADBC refuses an answer that differs from what was advertised).
        let physical = context.state().create_physical_plan(&plan).await.map_err(|e| QueryError::from_datafusion(e, 0));
        let schema = match physical {
            Ok(physical) => physical.schema(),
            // A plan with parameters may not compile before they are bound: its logical schema.
            Err(_) => Arc::new(plan.schema().as_arrow().clone()),
        };
        Ok(Prepared { parameter_types, schema })
    }

    /// The tables a caller who sees `scope` can query, by name, with their schemas.
    pub async fn tables(&self, scope: &StreamScope) -> Result<Vec<(String, SchemaRef)>, QueryError> {
        let context = self.context(scope, &Arc::new(Cut::now(&self.store)))?;
        let internal = |why: String| QueryError::Internal(why);
        let catalog = context.catalog(CATALOG).ok_or_else(|| internal(format!("no catalog {CATALOG}")))?;
        let schema = catalog.schema(SCHEMA).ok_or_else(|| internal(format!("no schema {SCHEMA}")))?;
        let mut tables = Vec::new();
        for name in schema.table_names() {
            if let Some(table) = schema.table(&name).await.map_err(|e| QueryError::from_datafusion(e, 0))? {
                tables.push((name, table.schema()));
            }
        }
        tables.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(tables)
    }

    /// A session of one query: the shared setup with a catalog of its own (the tables see its scope and
    /// cut) and a memory pool of its own.
    fn context(&self, scope: &StreamScope, cut: &Arc<Cut>) -> Result<SessionContext, QueryError> {
        let internal = |error: DataFusionError| QueryError::Internal(error.to_string());
        let tables = Arc::new(MemorySchemaProvider::new());
        let events = EventsTable::new(self.store.clone(), scope.clone(), cut.clone());
        tables.register_table("events".to_owned(), Arc::new(events)).map_err(internal)?;
        tables
            .register_table("fjord_partitions".to_owned(), system::partitions_table(self.region.clone()))
            .map_err(internal)?;
        tables
            .register_table("fjord_members".to_owned(), system::members_table(self.region.clone()))
            .map_err(internal)?;
        tables
            .register_table("fjord_streams".to_owned(), system::streams_table(self.store.clone(), scope.clone()))
            .map_err(internal)?;
        let catalog = Arc::new(MemoryCatalogProvider::new());
        catalog.register_schema(SCHEMA, tables).map_err(internal)?;
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        catalogs.register_catalog(CATALOG.to_owned(), catalog);
        let mut runtime = RuntimeEnv::clone(self.base.runtime_env());
        let pool = GreedyMemoryPool::new(self.limits.memory_bytes);
        runtime.memory_pool = Arc::new(TrackConsumersPool::new(pool, NonZeroUsize::MIN.saturating_add(2)));
        let state = SessionStateBuilder::new_from_existing(self.base.clone())
            .with_catalog_list(catalogs)
            .with_runtime_env(Arc::new(runtime))
            .build();
        Ok(SessionContext::new_with_state(state))
    }
}

/// The logical plan of `sql`, which must be one statement that reads.
async fn plan(context: &SessionContext, sql: &str) -> Result<LogicalPlan, QueryError> {
    let statement =
        context.state().sql_to_statement(sql, &Dialect::PostgreSQL).map_err(|e| QueryError::from_datafusion(e, 0))?;
    if let Some(refused) = refused_statement(&statement) {
        return Err(QueryError::NotAllowed(refused));
    }
    context.state().statement_to_plan(statement).await.map_err(|e| QueryError::from_datafusion(e, 0))
}

/// `plan` with its parameters replaced by `params`, each cast to the type the plan gives its parameter.
fn bind(plan: LogicalPlan, params: Vec<ScalarValue>) -> Result<LogicalPlan, QueryError> {
    let types = plan.get_parameter_types().map_err(|e| QueryError::from_datafusion(e, 0))?;
    if types.len() != params.len() {
        return Err(QueryError::BadParameter(format!(
            "the statement has {} parameters and {} values were bound",
            types.len(),
            params.len()
        )));
    }
    if params.is_empty() {
        return Ok(plan);
    }
    let params = params
        .into_iter()
        .enumerate()
        .map(|(index, value)| match types.get(&format!("${}", index + 1)).cloned().flatten() {
            Some(wanted) if wanted != value.data_type() => value.cast_to(&wanted).map_err(|_| {
                QueryError::BadParameter(format!("parameter ${}: {value} is not a value of type {wanted}", index + 1))
            }),
            _ => Ok(value),
        })
        .collect::<Result<Vec<_>, _>>()?;
    plan.with_param_values(params).map_err(|e| QueryError::BadParameter(e.find_root().message().into_owned()))
}

/// What a statement that does not only read is called (`INSERT`, `CREATE TABLE`…), or `None` for a query.
fn refused_statement(statement: &Statement) -> Option<String> {
    match statement {
        Statement::Statement(inner) if matches!(**inner, ast::Statement::Query(_)) => None,
        Statement::Explain(explain) => refused_statement(&explain.statement),
        other => {
            let text = other.to_string();
            let mut words = text.split_whitespace();
            let first = words.next().unwrap_or_default().to_uppercase();
            Some(match first.as_str() {
                "CREATE" | "DROP" | "ALTER" | "TRUNCATE" => match words.next() {
                    Some(second) => format!("{first} {}", second.to_uppercase()),
                    None => first,
                },
                _ => first,
            })
        }
    }
}

/// A running query: its answer and how fresh it is.
pub struct QueryResult {
    /// Where the answer stands in the log.
    pub cut: Cut,
    /// The answer, batch by batch.
    pub stream: QueryStream,
}

/// A query's place among the node's running queries, given back when the query ends or its time is up,
/// whichever comes first: a client that stops reading an answer (a Postgres portal left suspended) holds
/// the place no longer than the time limit.
struct QuerySlot {
    permit: Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>,
    watchdog: tokio::task::JoinHandle<()>,
}

impl QuerySlot {
    fn hold(permit: OwnedSemaphorePermit, deadline: tokio::time::Instant) -> Self {
        let permit = Arc::new(std::sync::Mutex::new(Some(permit)));
        let held = permit.clone();
        let watchdog = tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            QuerySlot::give_back(&held);
        });
        QuerySlot { permit, watchdog }
    }

    fn give_back(permit: &std::sync::Mutex<Option<OwnedSemaphorePermit>>) {
        permit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    }
}

impl Drop for QuerySlot {
    fn drop(&mut self) {
        // Given back now, not when the runtime gets to the aborted watchdog.
        QuerySlot::give_back(&self.permit);
        self.watchdog.abort();
    }
}

/// A query's record batches; it fails with [`QueryError::Timeout`] past the query's time limit. Dropping
/// it cancels the query and frees its place among the node's queries.
pub struct QueryStream {
    batches: SendableRecordBatchStream,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    memory: usize,
    done: bool,
    _slot: QuerySlot,
}

impl QueryStream {
    /// The answer's schema.
    pub fn schema(&self) -> SchemaRef {
        self.batches.schema()
    }
}

impl Stream for QueryStream {
    type Item = Result<RecordBatch, QueryError>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(context).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(QueryError::Timeout(self.timeout))));
        }
        match self.batches.poll_next_unpin(context) {
            Poll::Ready(Some(Err(error))) => {
                self.done = true;
                let memory = self.memory;
                Poll::Ready(Some(Err(QueryError::from_datafusion(error, memory))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            other => other.map(|batch| batch.map(|batch| batch.map_err(|error| QueryError::from_datafusion(error, 0)))),
        }
    }
}
