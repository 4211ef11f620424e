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
use datafusion::arrow::datatypes::Schema;
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
use datafusion::physical_plan::EmptyRecordBatchStream;
use datafusion::prelude::SessionConfig;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast;
use fjord_log::LogStore;
use fjord_projections::DefinitionLog;
use fjord_projections::ViewError;
use fjord_projections::Views;
use fjord_projections::ViewsConfig;
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
use crate::system;
use crate::system::RegionView;
use crate::views::ViewCut;
use crate::views::ViewReading;
use crate::views::ViewTable;
use fjord_projections::StreamScope;

pub use fjord_projections::sql::CATALOG;
pub use fjord_projections::sql::SCHEMA;

/// What the node gives its engine to run views with.
pub struct ViewsSetup {
    /// Where view checkpoints live.
    pub dir: std::path::PathBuf,
    /// The limits views run under.
    pub config: ViewsConfig,
    /// Where definitions are written: the `$views` stream, through Raft.
    pub writer: Arc<dyn DefinitionLog>,
}

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
    /// Whether the caller may define and drop views (its token grants `admin`).
    pub may_define_views: bool,
    /// The most a view the query reads may lag the log (`None`: any lag).
    pub max_staleness: Option<Duration>,
}

impl QueryRequest {
    /// A statement without parameters that waits for nothing.
    pub fn new(sql: impl Into<String>, scope: StreamScope) -> Self {
        QueryRequest {
            sql: sql.into(),
            scope,
            wait_for: BTreeMap::new(),
            params: Vec::new(),
            may_define_views: false,
            max_staleness: None,
        }
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
    /// The statement's command tag when it changes something and answers no rows (`CREATE MATERIALIZED
    /// VIEW`, `DROP MATERIALIZED VIEW`): it runs when it is run, never when it is prepared.
    pub command: Option<&'static str>,
}

/// The SQL engine of one node.
pub struct QueryEngine {
    store: Arc<LogStore>,
    region: Arc<dyn RegionView>,
    limits: QueryLimits,
    running: Arc<Semaphore>,
    base: SessionState,
    executor: QueryExecutor,
    views: Option<Views>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl QueryEngine {
    /// The engine over `store`'s log, with `region` for the system tables, folding views with `views` (none:
    /// the node has no views).
    pub fn new(
        store: Arc<LogStore>,
        region: Arc<dyn RegionView>,
        limits: QueryLimits,
        views: Option<ViewsSetup>,
    ) -> Result<Self, QueryError> {
        let cores = std::thread::available_parallelism().map_or(2, NonZeroUsize::get);
        let config = SessionConfig::new().with_target_partitions(cores);
        let disk = match limits.spill_bytes {
            0 => DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            bytes => DiskManagerBuilder::default().with_max_temp_directory_size(bytes),
        };
        let runtime = RuntimeEnvBuilder::new()
            .with_disk_manager_builder(disk)
            .build_arc()
            .map_err(|error| QueryError::Internal(error.to_string()))?;
        let base = fjord_projections::sql::session_state(config, Some(runtime))?;
        let running = Arc::new(Semaphore::new(limits.max_concurrent));
        let executor = QueryExecutor::new(cores)?;
        // Views fold on the queries' runtime: below appends and Raft, like a query.
        let views = views.map(|setup| {
            let handle = executor.handle();
            Views::start(store.clone(), setup.dir, setup.config, base.clone(), setup.writer, handle)
        });
        Ok(QueryEngine { store, region, limits, running, base, executor, views })
    }

    /// The node's views, when it has them.
    pub fn views(&self) -> Option<&Views> {
        self.views.as_ref()
    }

    /// The limits queries run under.
    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// Plans `request` and starts it: the answer streams from the returned [`QueryResult`]. A view
    /// statement (`CREATE [OR REPLACE] MATERIALIZED VIEW`, `DROP MATERIALIZED VIEW`) runs here and answers
    /// with its command tag; `SHOW VIEWS` answers from `fjord_views`.
    pub async fn query(&self, request: QueryRequest) -> Result<QueryResult, QueryError> {
        let bytes = request.sql.len();
        if bytes > self.limits.max_query_bytes {
            return Err(QueryError::TooLong { bytes, limit: self.limits.max_query_bytes });
        }
        let permit =
            self.running.clone().try_acquire_owned().map_err(|_| QueryError::Busy(self.limits.max_concurrent))?;
        let timeout = Duration::from_millis(self.limits.timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let statement = parse(&self.base, &request.sql)?;
        let statement = match ViewStatement::of(&statement)? {
            Some(ViewStatement::Show) => parse(&self.base, SHOW_VIEWS)?,
            Some(view_statement) => {
                let command = tokio::time::timeout_at(deadline, self.run_view_statement(view_statement, &request))
                    .await
                    .map_err(|_| QueryError::Timeout(timeout))??;
                let stream = QueryStream {
                    batches: Box::pin(EmptyRecordBatchStream::new(Arc::new(Schema::empty()))),
                    deadline: Box::pin(tokio::time::sleep_until(deadline)),
                    timeout,
                    memory: 0,
                    done: false,
                    _slot: QuerySlot::hold(permit, deadline),
                };
                return Ok(QueryResult { cut: Cut::now(&self.store), stream, command: Some(command) });
            }
            None => statement,
        };
        if !request.wait_for.is_empty() {
            let wait = Duration::from_millis(self.limits.freshness_wait_ms);
            wait_until_applied(&self.store, &request.wait_for, wait).await?;
            if let Some(views) = &self.views {
                views.wait_for_definitions(&request.wait_for, wait).await?;
            }
        }
        let cut = Arc::new(Cut::now(&self.store));
        let reading = ViewReading {
            wait_for: request.wait_for.clone(),
            wait: Duration::from_millis(self.limits.freshness_wait_ms),
            max_staleness: request.max_staleness,
        };
        let view_cut = Arc::new(ViewCut::default());
        let context = self.context(&request.scope, &cut, reading, view_cut.clone())?;
        let memory = self.limits.memory_bytes;
        let start = async {
            let plan = plan(&context, statement).await?;
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
        // An answer from views stands where the views it read were folded up to.
        let cut = match view_cut.offsets() {
            Some(offsets) => cut.lowest(&offsets),
            None => Cut::clone(&cut),
        };
        Ok(QueryResult { cut, stream, command: None })
    }

    /// Runs a view statement; its command tag.
    async fn run_view_statement(
        &self,
        statement: ViewStatement,
        request: &QueryRequest,
    ) -> Result<&'static str, QueryError> {
        let views = self.views.as_ref().ok_or_else(|| QueryError::NotAllowed("a view statement here".to_owned()))?;
        if !request.may_define_views {
            return Err(ViewError::NotAllowed(
                "defining and dropping materialized views needs a token that grants admin".to_owned(),
            )
            .into());
        }
        match statement {
            ViewStatement::Create { name, query, replace } => {
                views.define(&name, &query, replace, &request.scope).await?;
                Ok("CREATE MATERIALIZED VIEW")
            }
            ViewStatement::Drop { names, if_exists } => {
                for name in names {
                    views.drop_view(&name, if_exists).await?;
                }
                Ok("DROP MATERIALIZED VIEW")
            }
            ViewStatement::Show => Err(QueryError::Internal("SHOW VIEWS runs as a query".to_owned())),
        }
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
        let statement = parse(&self.base, sql)?;
        let statement = match ViewStatement::of(&statement)? {
            Some(ViewStatement::Show) => parse(&self.base, SHOW_VIEWS)?,
            Some(view_statement) => {
                let command = view_statement.tag();
                return Ok(Prepared { parameter_types: Vec::new(), schema: Arc::new(Schema::empty()), command });
            }
            None => statement,
        };
        let context =
            self.context(scope, &Arc::new(Cut::now(&self.store)), ViewReading::default(), Default::default())?;
        let plan = plan(&context, statement).await?;
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
        // A view's table is planned from its columns alone: its rows are not taken here.
        let physical = context.state().create_physical_plan(&plan).await.map_err(|e| QueryError::from_datafusion(e, 0));
        let schema = match physical {
            Ok(physical) => physical.schema(),
            // A plan with parameters may not compile before they are bound (or a view it reads is still
            // being built): its logical schema.
            Err(_) => Arc::new(plan.schema().as_arrow().clone()),
        };
        Ok(Prepared { parameter_types, schema, command: None })
    }

    /// The tables a caller who sees `scope` can query, by name, with their schemas.
    pub async fn tables(&self, scope: &StreamScope) -> Result<Vec<(String, SchemaRef)>, QueryError> {
        let context =
            self.context(scope, &Arc::new(Cut::now(&self.store)), ViewReading::default(), Default::default())?;
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
    /// cut, the views its way of reading them) and a memory pool of its own.
    fn context(
        &self,
        scope: &StreamScope,
        cut: &Arc<Cut>,
        reading: ViewReading,
        view_cut: Arc<ViewCut>,
    ) -> Result<SessionContext, QueryError> {
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
        if let Some(views) = &self.views {
            let table = crate::views::views_table(views.clone(), scope.clone());
            tables.register_table("fjord_views".to_owned(), table).map_err(internal)?;
            for entry in crate::views::visible(views, scope) {
                if let Some(table) = ViewTable::new(views.clone(), &entry, reading.clone(), view_cut.clone()) {
                    tables.register_table(entry.definition.name.clone(), Arc::new(table)).map_err(internal)?;
                }
            }
        }
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

/// What `SHOW VIEWS` runs.
const SHOW_VIEWS: &str = "SELECT name, version, status, rows, staleness_ms, definition FROM fjord_views ORDER BY name";

/// A statement about views.
enum ViewStatement {
    /// `CREATE [OR REPLACE] MATERIALIZED VIEW name AS SELECT …`.
    Create {
        /// The view.
        name: String,
        /// Its `SELECT`.
        query: Box<ast::Query>,
        /// `OR REPLACE`.
        replace: bool,
    },
    /// `DROP MATERIALIZED VIEW [IF EXISTS] name, …`.
    Drop {
        /// The views.
        names: Vec<String>,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// `SHOW [MATERIALIZED] VIEWS`.
    Show,
}

impl ViewStatement {
    /// The view statement `statement` is, if it is one.
    fn of(statement: &Statement) -> Result<Option<ViewStatement>, QueryError> {
        let Statement::Statement(inner) = statement else { return Ok(None) };
        Ok(match inner.as_ref() {
            ast::Statement::CreateView(create) if create.materialized => {
                if !create.columns.is_empty() {
                    return Err(QueryError::Invalid(
                        "a column list after a view's name is not supported: name the columns with AS in the SELECT"
                            .to_owned(),
                    ));
                }
                if create.if_not_exists {
                    return Err(QueryError::Invalid("CREATE MATERIALIZED VIEW IF NOT EXISTS is not supported".into()));
                }
                Some(ViewStatement::Create {
                    name: object_name(&create.name)?,
                    query: create.query.clone(),
                    replace: create.or_replace,
                })
            }
            ast::Statement::Drop { object_type: ast::ObjectType::MaterializedView, if_exists, names, .. } => {
                let names = names.iter().map(object_name).collect::<Result<_, _>>()?;
                Some(ViewStatement::Drop { names, if_exists: *if_exists })
            }
            ast::Statement::ShowViews { .. } => Some(ViewStatement::Show),
            _ => None,
        })
    }

    /// Its command tag.
    fn tag(&self) -> Option<&'static str> {
        match self {
            ViewStatement::Create { .. } => Some("CREATE MATERIALIZED VIEW"),
            ViewStatement::Drop { .. } => Some("DROP MATERIALIZED VIEW"),
            ViewStatement::Show => None,
        }
    }
}

/// A view's name as SQL folds it: unquoted names in lowercase; `fjord.public.name` and `public.name` name
/// the same view.
fn object_name(name: &ast::ObjectName) -> Result<String, QueryError> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) if ident.quote_style.is_some() => Ok(ident.value.clone()),
            Some(ident) => Ok(ident.value.to_lowercase()),
            None => Err(QueryError::Invalid(format!("{name} is not a view name"))),
        })
        .collect::<Result<_, _>>()?;
    match parts.as_slice() {
        [name] => Ok(name.clone()),
        [schema, name] if schema == SCHEMA => Ok(name.clone()),
        [catalog, schema, name] if catalog == CATALOG && schema == SCHEMA => Ok(name.clone()),
        _ => Err(QueryError::Invalid(format!("views live in {CATALOG}.{SCHEMA}: {name} is not there"))),
    }
}

/// One statement of `sql`, parsed.
fn parse(state: &SessionState, sql: &str) -> Result<Statement, QueryError> {
    state.sql_to_statement(sql, &Dialect::PostgreSQL).map_err(|e| QueryError::from_datafusion(e, 0))
}

/// The logical plan of `statement`, which must read.
async fn plan(context: &SessionContext, statement: Statement) -> Result<LogicalPlan, QueryError> {
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
    /// The command tag of a statement that changed something and answers no rows.
    pub command: Option<&'static str>,
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
