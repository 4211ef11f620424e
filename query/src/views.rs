//! Views as tables: each view the caller may see is a table of its query's catalog, answered from the
//! version that serves it ([`ViewTable`]), after waiting (bounded) for the offsets the query's consistency
//! token names, and refused when staler than the query allows; and the `fjord_views` system table, every
//! view's versions and where their folds stand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::array::Float64Array;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::array::StringArray;
use datafusion::arrow::array::UInt64Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::Field;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::catalog::TableProvider;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::DataFusionError;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::TableType;
use datafusion::physical_plan::ExecutionPlan;
use fjord_projections::Progress;
use fjord_projections::StreamScope;
use fjord_projections::ViewEntry;
use fjord_projections::ViewError;
use fjord_projections::Views;

use crate::system::SmallTable;

/// How a query reads views: the offsets to wait for, how long, and how stale an answer may be.
#[derive(Debug, Clone, Default)]
pub(crate) struct ViewReading {
    /// Per partition, the offsets a view must have folded before it answers (a consistency token's).
    pub(crate) wait_for: BTreeMap<u32, u64>,
    /// How long to wait for them.
    pub(crate) wait: Duration,
    /// The most a view may lag the log (`None`: any).
    pub(crate) max_staleness: Option<Duration>,
}

/// Where the views a query read stand: per partition, the lowest offset any of them was folded up to.
#[derive(Debug, Default)]
pub(crate) struct ViewCut {
    offsets: Mutex<Option<BTreeMap<u32, u64>>>,
}

impl ViewCut {
    fn record(&self, offsets: &BTreeMap<u32, u64>) {
        let mut cut = self.offsets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match cut.as_mut() {
            None => *cut = Some(offsets.clone()),
            Some(cut) => {
                for (partition, offset) in offsets {
                    let lowest = cut.entry(*partition).or_insert(*offset);
                    *lowest = (*lowest).min(*offset);
                }
            }
        }
    }

    /// The offsets, if the query read a view.
    pub(crate) fn offsets(&self) -> Option<BTreeMap<u32, u64>> {
        self.offsets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// The views `scope` may read: those whose streams it covers.
pub(crate) fn visible(views: &Views, scope: &StreamScope) -> Vec<ViewEntry> {
    views
        .entries()
        .into_iter()
        .filter(|entry| scope.covers(&StreamScope::prefixes(entry.definition.scope.clone())))
        .collect()
}

/// A view, as a table of one query.
#[derive(Debug)]
pub(crate) struct ViewTable {
    views: Views,
    name: String,
    schema: SchemaRef,
    reading: ViewReading,
    cut: Arc<ViewCut>,
}

impl ViewTable {
    /// The table of `entry`'s view: its serving version's columns (the building version's before one serves).
    pub(crate) fn new(views: Views, entry: &ViewEntry, reading: ViewReading, cut: Arc<ViewCut>) -> Option<Self> {
        let version = entry.serving.as_ref().or(entry.building.as_ref())?;
        Some(ViewTable { views, name: entry.definition.name.clone(), schema: version.schema(), reading, cut })
    }

    async fn answer(&self) -> Result<Vec<RecordBatch>, ViewError> {
        let entry = self.views.entry(&self.name).ok_or_else(|| ViewError::NoSuchView(self.name.clone()))?;
        let version = match (&entry.serving, &entry.building) {
            (Some(serving), _) => serving.clone(),
            (None, Some(building)) if !self.reading.wait_for.is_empty() => {
                // A first version that may catch up within the wait: once it has, it is whole.
                building.wait_caught_up(&self.name, self.reading.wait).await?;
                building.clone()
            }
            (None, building) => {
                let (done, total) = building.as_ref().map(|b| b.progress().done_and_total()).unwrap_or_default();
                return Err(ViewError::Building { name: self.name.clone(), done, total });
            }
        };
        if version.schema() != self.schema {
            return Err(ViewError::ConcurrentChange(format!("a read of {}", self.name)));
        }
        if !self.reading.wait_for.is_empty() {
            version.wait_for(&self.reading.wait_for, self.reading.wait).await?;
        }
        let progress = version.progress();
        if let Some(failed) = &progress.failed {
            return Err(ViewError::Internal(format!("materialized view {:?} stopped folding: {failed}", self.name)));
        }
        if let (Some(allowed), Some(staleness)) = (self.reading.max_staleness, progress.staleness())
            && staleness > allowed
        {
            return Err(ViewError::TooStale { name: self.name.clone(), staleness, allowed });
        }
        let answer = version.answer()?;
        self.cut.record(&answer.offsets);
        Ok(answer.batches.to_vec())
    }
}

#[async_trait]
impl TableProvider for ViewTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = self.answer().await.map_err(|error| DataFusionError::External(Box::new(error)))?;
        // The batches spread over the query's partitions, so a large view is scanned in parallel.
        let lanes = state.config().target_partitions().clamp(1, batches.len().max(1));
        let mut partitions = vec![Vec::new(); lanes];
        for (index, batch) in batches.into_iter().enumerate() {
            partitions[index % lanes].push(batch);
        }
        Ok(MemorySourceConfig::try_new_exec(&partitions, self.schema.clone(), projection.cloned())?)
    }
}

static VIEWS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("definition", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, true),
        Field::new("bytes", DataType::UInt64, true),
        Field::new("applied_offsets", DataType::Utf8, true),
        Field::new("lag_events", DataType::UInt64, true),
        Field::new("staleness_ms", DataType::UInt64, true),
        Field::new("folded_since_start", DataType::UInt64, true),
        Field::new("checkpointed_events", DataType::UInt64, true),
        Field::new("building_version", DataType::UInt64, true),
        Field::new("build_done", DataType::UInt64, true),
        Field::new("build_total", DataType::UInt64, true),
        Field::new("build_rate", DataType::Float64, true),
        Field::new("build_eta_s", DataType::Float64, true),
        Field::new("error", DataType::Utf8, true),
    ]))
});

/// The status of a view: `serving`, `replacing` (serving while a new version builds), `building` (no
/// version has caught up yet) or `failed`.
fn status(entry: &ViewEntry) -> &'static str {
    let failed = |version: &Option<Arc<fjord_projections::Version>>| {
        version.as_ref().is_some_and(|version| version.progress().failed.is_some())
    };
    match (&entry.serving, &entry.building) {
        _ if failed(&entry.serving) || failed(&entry.building) => "failed",
        (Some(_), Some(_)) => "replacing",
        (Some(_), None) => "serving",
        (None, _) => "building",
    }
}

/// `fjord_views`: the views `scope` may read, built when a query scans it.
pub(crate) fn views_table(views: Views, scope: StreamScope) -> Arc<dyn TableProvider> {
    Arc::new(SmallTable::new(VIEWS_SCHEMA.clone(), move || {
        let entries = visible(&views, &scope);
        Box::pin(async move {
            let serving: Vec<Option<Progress>> =
                entries.iter().map(|entry| entry.serving.as_ref().map(|version| version.progress())).collect();
            let building: Vec<Option<Progress>> =
                entries.iter().map(|entry| entry.building.as_ref().map(|version| version.progress())).collect();
            let of_serving = |f: &dyn Fn(&Progress) -> Option<u64>| -> ArrayRef {
                Arc::new(serving.iter().map(|p| p.as_ref().and_then(f)).collect::<UInt64Array>())
            };
            let of_building = |f: &dyn Fn(&Progress) -> Option<u64>| -> ArrayRef {
                Arc::new(building.iter().map(|p| p.as_ref().and_then(f)).collect::<UInt64Array>())
            };
            let failure = |index: usize| {
                let from = |p: &Option<Progress>| p.as_ref().and_then(|p| p.failed.clone());
                from(&serving[index]).or_else(|| from(&building[index]))
            };
            let columns: Vec<ArrayRef> = vec![
                Arc::new(entries.iter().map(|e| Some(e.definition.name.clone())).collect::<StringArray>()),
                Arc::new(entries.iter().map(|e| Some(e.definition.version)).collect::<UInt64Array>()),
                Arc::new(entries.iter().map(|e| Some(e.definition.sql.clone())).collect::<StringArray>()),
                Arc::new(entries.iter().map(|e| Some(status(e))).collect::<StringArray>()),
                of_serving(&|p| Some(p.rows)),
                of_serving(&|p| Some(p.bytes)),
                Arc::new(serving.iter().map(|p| p.as_ref().map(|p| offsets_text(&p.offsets))).collect::<StringArray>()),
                of_serving(&|p| {
                    let (done, total) = p.done_and_total();
                    Some(total - done)
                }),
                of_serving(&|p| p.staleness().map(|lag| u64::try_from(lag.as_millis()).unwrap_or(u64::MAX))),
                of_serving(&|p| Some(p.folded)),
                of_serving(&|p| p.checkpointed),
                Arc::new(
                    entries
                        .iter()
                        .map(|e| e.building.as_ref().map(|version| version.definition().version))
                        .collect::<UInt64Array>(),
                ),
                of_building(&|p| Some(p.done_and_total().0)),
                of_building(&|p| Some(p.done_and_total().1)),
                Arc::new(building.iter().map(|p| p.as_ref().map(Progress::rate)).collect::<Float64Array>()),
                Arc::new(building.iter().map(|p| p.as_ref().and_then(eta_seconds)).collect::<Float64Array>()),
                Arc::new((0..entries.len()).map(failure).collect::<StringArray>()),
            ];
            columns
        })
    }))
}

/// Seconds until a building version catches up at its rate so far.
fn eta_seconds(progress: &Progress) -> Option<f64> {
    let (done, total) = progress.done_and_total();
    let rate = progress.rate();
    (rate > 0.0).then(|| (total - done) as f64 / rate)
}

/// Offsets as `partition=offset,…`.
fn offsets_text(offsets: &BTreeMap<u32, u64>) -> String {
    offsets.iter().map(|(partition, offset)| format!("{partition}={offset}")).collect::<Vec<_>>().join(",")
}
