//! A node's views: the registry folded from the `$views` stream, and for each view the version that serves
//! readers and the version being built to replace it. Each version folds on its own task, woken by the
//! partitions' applied-tail watches (never by polling), a bounded batch at a time, on the runtime it is
//! given (the node runs views on the queries' runtime, below appends and Raft): a view's lag never holds
//! back an append. A version serves once it has caught up with the log; a replacement is swapped in at that
//! moment, under the lock readers take, so a reader sees the old version or the new one, never a mix.
//!
//! This module never writes the log itself: definitions reach the region through [`DefinitionLog`].

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::Weak;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SessionState;
use datafusion::sql::sqlparser::ast;
use fjord_log::Direction;
use fjord_log::ExpectedRevision;
use fjord_log::LogStore;
use fjord_log::Offset;
use fjord_log::PartitionLog;
use fjord_log::ProposedEvent;
use fjord_log::Revision;
use serde::Deserialize;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::batch::BatchBuilder;
use crate::checkpoint;
use crate::definition::DEFINITIONS_STREAM;
use crate::definition::DefinitionRecord;
use crate::definition::Registry;
use crate::definition::ViewDefinition;
use crate::definition::check_name;
use crate::error::ViewError;
use crate::fold::ViewState;
use crate::plan::ViewPlan;
use crate::scope::StreamScope;

/// How views run on a node. Every limit fails what would pass it with a clear error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ViewsConfig {
    /// Views the region may define.
    pub max_views: usize,
    /// The longest view definition (its `SELECT`), bytes.
    pub max_definition_bytes: usize,
    /// Events a fold step reads of one partition, at most.
    pub fold_batch_events: usize,
    /// Memory one view version's state may hold, bytes; past it the version stops folding and says so.
    pub max_state_bytes: usize,
    /// How often a changed view's state is checkpointed, ms.
    pub checkpoint_interval_ms: u64,
}

impl Default for ViewsConfig {
    fn default() -> Self {
        ViewsConfig {
            max_views: 64,
            max_definition_bytes: 16 * 1024,
            fold_batch_events: 16 * 1024,
            max_state_bytes: 1024 * 1024 * 1024,
            checkpoint_interval_ms: 10_000,
        }
    }
}

/// Why appending a definition failed.
#[derive(Debug)]
pub enum DefinitionWriteError {
    /// The `$views` stream was not at the expected revision: another definition came first.
    Conflict,
    /// Anything else, said for the caller.
    Failed(String),
}

/// Where a node writes view definitions: the `$views` stream, through the region's Raft log.
#[async_trait]
pub trait DefinitionLog: Send + Sync + 'static {
    /// Appends `event` to [`DEFINITIONS_STREAM`] if the stream is at `expected`; the event's revision.
    async fn append(&self, expected: ExpectedRevision, event: ProposedEvent) -> Result<u64, DefinitionWriteError>;
}

/// Where a view version stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Per partition, the offset of the next event to fold.
    pub offsets: BTreeMap<u32, u64>,
    /// Per partition, the node's applied end when the version last looked.
    pub targets: BTreeMap<u32, u64>,
    /// Whether the version has caught up with the log (it serves readers once it has).
    pub caught_up: bool,
    /// When it last had folded everything applied (`None`: not since it started).
    pub fresh_at: Option<SystemTime>,
    /// Events folded since this node started folding it, and since when.
    pub folded: u64,
    /// When this node started folding it.
    pub started: Instant,
    /// Its rows (kept rows, or groups) and the bytes its state holds.
    pub rows: u64,
    /// The bytes its state holds in memory, about.
    pub bytes: u64,
    /// Why it stopped folding, if it did.
    pub failed: Option<String>,
    /// The events (of every partition) its last checkpoint covers (`None`: none saved).
    pub checkpointed: Option<u64>,
}

impl Progress {
    /// Events folded and events to fold to reach the targets.
    pub fn done_and_total(&self) -> (u64, u64) {
        let done: u64 = self.offsets.values().sum();
        let total: u64 =
            self.targets.iter().map(|(p, end)| (*end).max(self.offsets.get(p).copied().unwrap_or(0))).sum();
        (done, total)
    }

    /// Events folded per second since this node started folding the version.
    pub fn rate(&self) -> f64 {
        let seconds = self.started.elapsed().as_secs_f64();
        if seconds > 0.0 { self.folded as f64 / seconds } else { 0.0 }
    }

    /// How far behind the log the version is: zero when it has folded everything applied when it last looked.
    pub fn staleness(&self) -> Option<Duration> {
        if self.offsets_reach(&self.targets) {
            return Some(Duration::ZERO);
        }
        self.fresh_at.map(|at| at.elapsed().unwrap_or_default())
    }

    /// Whether every partition's offset is at least `wanted`'s.
    pub fn offsets_reach(&self, wanted: &BTreeMap<u32, u64>) -> bool {
        wanted.iter().all(|(partition, offset)| self.offsets.get(partition).copied().unwrap_or(0) >= *offset)
    }
}

/// One version of a view on this node: its definition, its state, and its progress.
pub struct Version {
    definition: ViewDefinition,
    plan: Arc<ViewPlan>,
    scope: StreamScope,
    state: Mutex<ViewState>,
    progress: watch::Sender<Progress>,
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version").field("definition", &self.definition).finish_non_exhaustive()
    }
}

/// What a read of a view got: its rows and where they stand in the log.
#[derive(Debug, Clone)]
pub struct ViewAnswer {
    /// The view's rows.
    pub batches: Arc<[RecordBatch]>,
    /// Per partition, the offset the rows are folded up to.
    pub offsets: BTreeMap<u32, u64>,
}

impl Version {
    /// Its definition.
    pub fn definition(&self) -> &ViewDefinition {
        &self.definition
    }

    /// Its columns.
    pub fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// Where it stands.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Its rows now, and the offsets they are folded up to (taken together).
    pub fn answer(&self) -> Result<ViewAnswer, ViewError> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let batches = state.answer()?;
        Ok(ViewAnswer { batches, offsets: state.offsets().clone() })
    }

    /// Waits until the version has folded `wanted` (per partition, an offset), for at most `timeout`.
    pub async fn wait_for(&self, wanted: &BTreeMap<u32, u64>, timeout: Duration) -> Result<(), ViewError> {
        let mut progress = self.progress.subscribe();
        let reached = async {
            let progress =
                progress.wait_for(|progress| progress.offsets_reach(wanted) || progress.failed.is_some()).await;
            progress.map(|progress| progress.failed.is_none()).unwrap_or(false)
        };
        match tokio::time::timeout(timeout, reached).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.failure()),
            Err(_) => {
                let progress = self.progress();
                let behind = wanted
                    .iter()
                    .filter_map(|(partition, offset)| {
                        let at = progress.offsets.get(partition).copied().unwrap_or(0);
                        (at < *offset).then(|| format!("partition {partition} at {at} of {offset}"))
                    })
                    .collect::<Vec<_>>();
                Err(ViewError::NotFreshEnough {
                    name: self.definition.name.clone(),
                    waited: timeout,
                    behind: behind.join(", "),
                })
            }
        }
    }

    /// Waits until the version has caught up with the log once (it is whole from then on), for at most
    /// `timeout`.
    pub async fn wait_caught_up(&self, name: &str, timeout: Duration) -> Result<(), ViewError> {
        let mut progress = self.progress.subscribe();
        let whole = async {
            let progress = progress.wait_for(|progress| progress.caught_up || progress.failed.is_some()).await;
            progress.map(|progress| progress.failed.is_none()).unwrap_or(false)
        };
        match tokio::time::timeout(timeout, whole).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.failure()),
            Err(_) => {
                let (done, total) = self.progress().done_and_total();
                Err(ViewError::Building { name: name.to_owned(), done, total })
            }
        }
    }

    /// The error a read of this version gets when it stopped folding.
    pub fn failure(&self) -> ViewError {
        let why = self.progress.borrow().failed.clone().unwrap_or_else(|| "it stopped".to_owned());
        ViewError::Internal(format!("materialized view {:?} stopped folding: {why}", self.definition.name))
    }

    fn update(&self, change: impl FnOnce(&mut Progress)) {
        self.progress.send_modify(change);
    }
}

/// A view's versions on this node.
#[derive(Default)]
struct Live {
    /// The version readers see: the newest that has caught up.
    serving: Option<Running>,
    /// A newer version, folding from offset 0 until it catches up.
    building: Option<Running>,
}

/// A version and its fold task, stopped when dropped.
struct Running {
    version: Arc<Version>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A view as a reader finds it.
#[derive(Debug, Clone)]
pub struct ViewEntry {
    /// The newest definition.
    pub definition: ViewDefinition,
    /// The version that serves readers, if one has caught up.
    pub serving: Option<Arc<Version>>,
    /// The version being built, if any.
    pub building: Option<Arc<Version>>,
}

/// A node's views.
#[derive(Clone)]
pub struct Views {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

struct Inner {
    store: Arc<LogStore>,
    dir: PathBuf,
    config: ViewsConfig,
    planner: SessionState,
    writer: Arc<dyn DefinitionLog>,
    runtime: Handle,
    /// The registry, published once this node has started folding what it defines.
    registry: watch::Sender<Registry>,
    /// The offset of the definitions' partition the registry has read up to.
    definitions_read: watch::Sender<u64>,
    live: Mutex<BTreeMap<String, Live>>,
    /// One definition change at a time from this node.
    changing: tokio::sync::Mutex<()>,
}

impl Views {
    /// Starts the views of `store`'s region on `runtime`: follows the `$views` stream and folds every view
    /// it defines, keeping checkpoints under `dir`; definitions are written through `writer`, planned with
    /// `planner`.
    pub fn start(
        store: Arc<LogStore>,
        dir: PathBuf,
        config: ViewsConfig,
        planner: SessionState,
        writer: Arc<dyn DefinitionLog>,
        runtime: Handle,
    ) -> Views {
        let (registry, _) = watch::channel(Registry::default());
        let (definitions_read, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            store,
            dir,
            config,
            planner,
            writer,
            runtime: runtime.clone(),
            registry,
            definitions_read,
            live: Mutex::new(BTreeMap::new()),
            changing: tokio::sync::Mutex::new(()),
        });
        runtime.spawn(follow_definitions(Arc::downgrade(&inner)));
        Views { inner }
    }

    /// The views now, by name.
    pub fn entries(&self) -> Vec<ViewEntry> {
        let registry = self.inner.registry.borrow().clone();
        let live = self.inner.live();
        registry
            .views()
            .values()
            .map(|definition| {
                let versions = live.get(&definition.name);
                ViewEntry {
                    definition: definition.clone(),
                    serving: versions.and_then(|live| live.serving.as_ref()).map(|r| r.version.clone()),
                    building: versions.and_then(|live| live.building.as_ref()).map(|r| r.version.clone()),
                }
            })
            .collect()
    }

    /// The view `name`, if it exists.
    pub fn entry(&self, name: &str) -> Option<ViewEntry> {
        self.entries().into_iter().find(|entry| entry.definition.name == name)
    }

    /// Waits until this node knows every view definition at or below `wanted`'s offset of the definitions'
    /// partition (a consistency token's), for at most `timeout`: a query carrying a token written after a
    /// `CREATE` finds the view on any node.
    pub async fn wait_for_definitions(&self, wanted: &BTreeMap<u32, u64>, timeout: Duration) -> Result<(), ViewError> {
        let partition = fjord_log::partition_of(DEFINITIONS_STREAM, self.inner.store.partition_count());
        let Some(&offset) = wanted.get(&partition) else { return Ok(()) };
        let mut read = self.inner.definitions_read.subscribe();
        let reached = async { read.wait_for(|read| *read >= offset).await.is_ok() };
        if tokio::time::timeout(timeout, reached).await.unwrap_or(false) {
            return Ok(());
        }
        let at = *self.inner.definitions_read.borrow();
        Err(ViewError::NotFreshEnough {
            name: DEFINITIONS_STREAM.to_owned(),
            waited: timeout,
            behind: format!("the view definitions are read up to offset {at} of {offset}"),
        })
    }

    /// The limits views run under.
    pub fn config(&self) -> &ViewsConfig {
        &self.inner.config
    }

    /// Defines the view `name` as `query` (replacing one that exists, if `replace`), folding the streams of
    /// `scope`. Returns once this node's registry holds the definition; the view then builds in the
    /// background.
    pub async fn define(
        &self,
        name: &str,
        query: &ast::Query,
        replace: bool,
        scope: &StreamScope,
    ) -> Result<ViewDefinition, ViewError> {
        check_name(name)?;
        if name == "events" || name.starts_with("fjord_") {
            return Err(ViewError::Reserved(name.to_owned()));
        }
        let sql = query.to_string();
        if sql.len() > self.inner.config.max_definition_bytes {
            return Err(ViewError::Limit(format!(
                "the view's definition is {} bytes, over the limit of {}",
                sql.len(),
                self.inner.config.max_definition_bytes
            )));
        }
        // Refused here, with the construct named, before anything is written.
        ViewPlan::compile(&self.inner.planner, query).await?;
        let record = DefinitionRecord::Defined { name: name.to_owned(), sql, scope: scope.granted().to_vec(), replace };
        let revision = self
            .change(&record, |registry| match registry.views().contains_key(name) {
                true if !replace => Err(ViewError::Exists(name.to_owned())),
                false if registry.views().len() >= self.inner.config.max_views => Err(ViewError::Limit(format!(
                    "the region has {} views, the most it may define",
                    self.inner.config.max_views
                ))),
                _ => Ok(()),
            })
            .await?;
        let registry = self.inner.registry.borrow().clone();
        match registry.views().get(name) {
            Some(definition) if registry.revision() >= Some(revision) => {
                tracing::info!(view = definition.name, version = definition.version, "defined");
                Ok(definition.clone())
            }
            _ => Err(ViewError::ConcurrentChange(format!("CREATE MATERIALIZED VIEW {name}"))),
        }
    }

    /// Drops the view `name`; `Ok(false)` when there is none and `if_exists` said that is fine.
    pub async fn drop_view(&self, name: &str, if_exists: bool) -> Result<bool, ViewError> {
        let record = DefinitionRecord::Dropped { name: name.to_owned() };
        let missing = self.change(&record, |registry| match registry.views().contains_key(name) {
            true => Ok(()),
            false => Err(ViewError::NoSuchView(name.to_owned())),
        });
        match missing.await {
            Ok(_) => Ok(true),
            Err(ViewError::NoSuchView(_)) if if_exists => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Appends `record` if `allowed` says the registry (caught up with this node's log) permits it, at the
    /// registry's revision; waits until this node's registry holds it. Returns the record's revision.
    async fn change(
        &self,
        record: &DefinitionRecord,
        allowed: impl Fn(&Registry) -> Result<(), ViewError>,
    ) -> Result<u64, ViewError> {
        let _one_at_a_time = self.inner.changing.lock().await;
        let registry = self.inner.registry.borrow().clone();
        allowed(&registry)?;
        let expected = registry.revision().map_or(ExpectedRevision::NoStream, |r| ExpectedRevision::Exact(Revision(r)));
        let what = match record {
            DefinitionRecord::Defined { name, .. } => format!("the definition of {name}"),
            DefinitionRecord::Dropped { name } => format!("DROP MATERIALIZED VIEW {name}"),
        };
        let revision = match self.inner.writer.append(expected, record.to_event()?).await {
            Ok(revision) => revision,
            Err(DefinitionWriteError::Conflict) => return Err(ViewError::ConcurrentChange(what)),
            Err(DefinitionWriteError::Failed(why)) => return Err(ViewError::Write(why)),
        };
        let mut registry = self.inner.registry.subscribe();
        let applied = registry.wait_for(|registry| registry.revision() >= Some(revision));
        match tokio::time::timeout(Duration::from_secs(10), applied).await {
            Ok(Ok(_)) => Ok(revision),
            _ => Err(ViewError::Write(format!("{what} was stored, but this node has not applied it yet"))),
        }
    }
}

impl Inner {
    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Live>> {
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts and stops versions so that this node folds what the registry defines.
    async fn reconcile(self: &Arc<Self>, registry: &Registry) {
        let wanted: Vec<ViewDefinition> = {
            let mut live = self.live();
            live.retain(|name, _| registry.views().contains_key(name));
            let known = |running: &Option<Running>, definition: &ViewDefinition| {
                running.as_ref().is_some_and(|running| running.version.definition.version >= definition.version)
            };
            registry
                .views()
                .values()
                .filter(|definition| {
                    live.get(&definition.name).is_none_or(|versions| {
                        !known(&versions.serving, definition) && !known(&versions.building, definition)
                    })
                })
                .cloned()
                .collect()
        };
        for definition in wanted {
            match self.prepare_version(definition.clone()).await {
                Ok((version, serves)) => {
                    let dir = checkpoint::version_dir(&self.dir, &definition);
                    let task = self.runtime.spawn(fold_version(Arc::downgrade(self), version.clone(), dir));
                    let running = Some(Running { version, task });
                    let mut live = self.live();
                    let versions = live.entry(definition.name.clone()).or_default();
                    match serves {
                        true => (versions.serving, versions.building) = (running, None),
                        false => versions.building = running,
                    }
                }
                Err(error) => tracing::error!(view = definition.name, %error, "cannot fold this view"),
            }
        }
        self.remove_stale_dirs(registry).await;
    }

    /// A version of `definition`, from its checkpoint if it has a good one, and whether it serves at once
    /// (its checkpoint says it had caught up).
    async fn prepare_version(&self, definition: ViewDefinition) -> Result<(Arc<Version>, bool), ViewError> {
        let query = crate::sql::parse_query(&self.planner, &definition.sql)?;
        let plan = Arc::new(ViewPlan::compile(&self.planner, &query).await?);
        let dir = checkpoint::version_dir(&self.dir, &definition);
        let loaded = tokio::task::spawn_blocking(move || checkpoint::load(&dir))
            .await
            .map_err(|error| ViewError::Internal(error.to_string()))?;
        let (state, caught_up) = match loaded {
            Ok(Some(saved)) if saved.definition == definition => {
                match ViewState::restore(plan.clone(), saved.offsets, &saved.batches) {
                    Ok(state) => (state, saved.caught_up),
                    Err(error) => {
                        tracing::warn!(view = definition.name, %error, "its checkpoint does not fit; folding again from the log");
                        (ViewState::new(plan.clone())?, false)
                    }
                }
            }
            Ok(_) => (ViewState::new(plan.clone())?, false),
            Err(error) => {
                tracing::warn!(view = definition.name, %error, "its checkpoint is damaged; folding again from the log");
                (ViewState::new(plan.clone())?, false)
            }
        };
        let progress = Progress {
            offsets: state.offsets().clone(),
            targets: BTreeMap::new(),
            caught_up,
            fresh_at: None,
            folded: 0,
            started: Instant::now(),
            rows: state.rows() as u64,
            bytes: state.bytes() as u64,
            failed: None,
            checkpointed: (!state.offsets().is_empty()).then(|| state.offsets().values().sum()),
        };
        let scope = StreamScope::prefixes(definition.scope.clone());
        let (progress, _) = watch::channel(progress);
        Ok((Arc::new(Version { definition, plan, scope, state: Mutex::new(state), progress }), caught_up))
    }

    /// Makes `version` serve its view if it is the one being built (the old version stops).
    fn caught_up(&self, version: &Arc<Version>) {
        let mut live = self.live();
        let Some(versions) = live.get_mut(&version.definition.name) else { return };
        let building = versions.building.as_ref().is_some_and(|running| Arc::ptr_eq(&running.version, version));
        if building {
            let replaced = std::mem::replace(&mut versions.serving, versions.building.take());
            tracing::info!(view = version.definition.name, version = version.definition.version, "serving");
            // The old version stops with its task; its files go (a restart would remove them too).
            if let Some(old) = replaced {
                let dir = checkpoint::version_dir(&self.dir, &old.version.definition);
                drop(old);
                self.runtime.spawn_blocking(move || {
                    if let Err(error) = std::fs::remove_dir_all(&dir) {
                        tracing::debug!(path = %dir.display(), %error, "an old view version's files");
                    }
                });
            }
        }
    }

    /// Deletes the checkpoint directories of versions the registry no longer defines (on a blocking thread).
    async fn remove_stale_dirs(&self, registry: &Registry) {
        let mut keep: Vec<PathBuf> =
            registry.views().values().map(|definition| checkpoint::version_dir(&self.dir, definition)).collect();
        keep.extend(
            self.live()
                .values()
                .flat_map(|versions| [&versions.serving, &versions.building])
                .flatten()
                .map(|running| checkpoint::version_dir(&self.dir, &running.version.definition)),
        );
        let dir = self.dir.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else { return };
            for path in entries.flatten().map(|entry| entry.path()).filter(|path| !keep.contains(path)) {
                if let Err(error) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), %error, "cannot remove an old view version's files");
                }
            }
        });
        if let Err(error) = removed.await {
            tracing::warn!(%error, "removing old view versions' files failed");
        }
    }
}

/// Follows the `$views` stream: folds its records into the registry as they are applied and reconciles the
/// node's versions with it.
async fn follow_definitions(inner: Weak<Inner>) {
    let Some(strong) = inner.upgrade() else { return };
    let partition = fjord_log::partition_of(DEFINITIONS_STREAM, strong.store.partition_count());
    let log = match strong.store.partition(partition) {
        Ok(log) => log.clone(),
        Err(error) => {
            tracing::error!(%error, "views: the definitions' partition is missing");
            return;
        }
    };
    let mut tail = log.watch_tail();
    drop(strong);
    let mut registry = Registry::default();
    let mut reconciled = false;
    loop {
        // Everything applied up to here is in what the read below returns.
        let covered = tail.borrow_and_update().next_offset.0;
        let from = registry.revision().map_or(0, |revision| revision + 1);
        let reader = log.clone();
        let read = tokio::task::spawn_blocking(move || {
            reader
                .read_stream(DEFINITIONS_STREAM, Revision(from), Direction::Forward, u64::MAX)
                .collect::<Result<Vec<_>, _>>()
        });
        let Some(inner) = inner.upgrade() else { return };
        match read.await {
            Ok(Ok(events)) => {
                if events.first().is_some_and(|event| event.revision.0 != from) {
                    // The log under the registry was rewritten: fold it again from its start.
                    registry = Registry::default();
                }
                for event in &events {
                    registry.apply(event);
                }
                if !events.is_empty() || !reconciled {
                    reconciled = true;
                    // Folding starts before the registry is published: whoever sees a view in it finds a
                    // version of it.
                    inner.reconcile(&registry).await;
                    inner.registry.send_replace(registry.clone());
                }
                inner.definitions_read.send_if_modified(|read| {
                    let raised = covered > *read;
                    *read = (*read).max(covered);
                    raised
                });
            }
            Ok(Err(error)) => tracing::warn!(%error, "views: reading the definitions failed; retrying"),
            Err(error) => tracing::warn!(%error, "views: reading the definitions failed; retrying"),
        }
        drop(inner);
        if tail.changed().await.is_err() {
            return;
        }
    }
}

/// Folds `version` as the log grows, until its task is stopped.
async fn fold_version(inner: Weak<Inner>, version: Arc<Version>, dir: PathBuf) {
    let Some(strong) = inner.upgrade() else { return };
    let (store, config) = (strong.store.clone(), strong.config.clone());
    drop(strong);
    let mut tails: Vec<_> = store.partitions().iter().map(|log| log.watch_tail()).collect();
    let interval = Duration::from_millis(config.checkpoint_interval_ms);
    let mut saved = Instant::now();
    let mut dirty = false;
    loop {
        for tail in &mut tails {
            tail.borrow_and_update();
        }
        let targets: BTreeMap<u32, u64> =
            store.partitions().iter().map(|log| (log.partition().0, log.applied_tail().next_offset.0)).collect();
        let mut folded = 0;
        for log in store.partitions() {
            let from =
                version.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).offset(log.partition().0);
            let end = targets[&log.partition().0];
            if end <= from {
                continue;
            }
            let to = end.min(from + config.fold_batch_events as u64);
            let (log, folding) = (log.clone(), version.clone());
            let step = tokio::task::spawn_blocking(move || fold_step(&folding, &log, from, to)).await;
            match step.map_err(|error| ViewError::Internal(error.to_string())).and_then(|result| result) {
                Ok(()) => folded += to - from,
                Err(error) => {
                    tracing::error!(view = version.definition.name, %error, "stopped folding");
                    version.update(|progress| progress.failed = Some(error.to_string()));
                    return;
                }
            }
        }
        let (rows, bytes, offsets) = {
            let state = version.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (state.rows() as u64, state.bytes() as u64, state.offsets().clone())
        };
        if bytes > config.max_state_bytes as u64 {
            let why = format!("its state holds {bytes} bytes, over the limit of {}", config.max_state_bytes);
            tracing::error!(view = version.definition.name, why, "stopped folding");
            version.update(|progress| progress.failed = Some(why));
            return;
        }
        let caught_up = folded == 0;
        let became_fresh = caught_up && !version.progress.borrow().caught_up;
        version.update(|progress| {
            progress.folded += folded;
            progress.offsets = offsets;
            progress.targets = targets;
            progress.rows = rows;
            progress.bytes = bytes;
            if caught_up {
                progress.caught_up = true;
                progress.fresh_at = Some(SystemTime::now());
            }
        });
        dirty |= folded > 0;
        if became_fresh {
            let Some(inner) = inner.upgrade() else { return };
            inner.caught_up(&version);
        }
        // Saved when the interval is up, and at once when a build catches up (a restart need not redo it).
        if dirty && (became_fresh || saved.elapsed() >= interval) {
            let (saving, dir) = (version.clone(), dir.clone());
            match tokio::task::spawn_blocking(move || save(&saving, &dir)).await {
                Ok(Ok(events)) => {
                    (saved, dirty) = (Instant::now(), false);
                    version.update(|progress| progress.checkpointed = Some(events));
                }
                Ok(Err(error)) => tracing::warn!(view = version.definition.name, %error, "checkpoint failed"),
                Err(error) => tracing::warn!(view = version.definition.name, %error, "checkpoint failed"),
            }
        }
        if !caught_up {
            tokio::task::yield_now().await;
            continue;
        }
        let changed = futures::future::select_all(tails.iter_mut().map(|tail| Box::pin(tail.changed())));
        let wait = if dirty { interval.saturating_sub(saved.elapsed()) } else { Duration::MAX };
        match tokio::time::timeout(wait, changed).await {
            Ok((Err(_), _, _)) => return,
            Ok((Ok(()), _, _)) | Err(_) => {}
        }
    }
}

/// Folds `log`'s events `[from, to)` into `version` (blocking: reads the log).
fn fold_step(version: &Version, log: &PartitionLog, from: u64, to: u64) -> Result<(), ViewError> {
    let plan = version.plan.clone();
    let partition = log.partition().0;
    let rows = (to - from) as usize;
    let mut batch = BatchBuilder::new(partition, plan.input_schema.clone(), plan.columns.clone(), rows);
    let mut next = from;
    // A live view reads what the last commits applied from memory; one catching up reads the store.
    let recent = log.recent_events(Offset(from), Offset(to), rows).filter(|events| events.len() == rows);
    match recent {
        Some(events) => {
            for event in events {
                next = event.offset.0 + 1;
                if version.scope.allows(&event.stream) {
                    batch.push(event.as_ref());
                }
            }
        }
        None => log.scan_records(Offset(from), Offset(to), |record| {
            next = record.offset.0 + 1;
            if version.scope.allows(record.stream) {
                batch.push(&record);
            }
            Ok(ControlFlow::Continue(()))
        })?,
    }
    if next != to {
        return Err(ViewError::Internal(format!("partition {partition}: read up to {next}, expected {to}")));
    }
    let events = batch.finish()?;
    let mut state = version.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if state.offset(partition) != from {
        return Err(ViewError::Internal(format!("partition {partition}: two folds at once")));
    }
    state.fold(partition, events, to)?;
    Ok(())
}

/// Writes `version`'s checkpoint (blocking); the events it covers.
fn save(version: &Version, dir: &std::path::Path) -> Result<u64, ViewError> {
    let (batches, offsets, schema) = {
        let mut state = version.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (state.state_batches()?, state.offsets().clone(), state.state_schema()?)
    };
    let caught_up = version.progress.borrow().caught_up;
    checkpoint::save(dir, &version.definition, &offsets, caught_up, &schema, &batches)?;
    Ok(offsets.values().sum())
}
