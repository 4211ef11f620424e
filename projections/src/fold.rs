//! A view's state and its fold: batches of new events go through the view's compiled steps
//! ([`crate::plan`]) into the rows it keeps or into its groups' accumulators (DataFusion's
//! `GroupsAccumulator`s, keyed by DataFusion's `GroupValues`); reading the view evaluates the groups' final
//! values. The state carries the offsets it has folded, per partition, so the two never disagree; it is
//! saved to and restored from Arrow batches ([`crate::checkpoint`] writes them).
//!
//! This module never reads the log or a file: what to fold is handed to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::array::RecordBatchOptions;
use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::array::new_empty_array;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::Field;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::error::Result;
use datafusion::logical_expr::EmitTo;
use datafusion::logical_expr::GroupsAccumulator;
use datafusion::physical_plan::aggregates::group_values::GroupValues;
use datafusion::physical_plan::aggregates::group_values::new_group_values;
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use crate::plan::Grouping;
use crate::plan::Shape;
use crate::plan::ViewPlan;
use crate::plan::evaluate;
use crate::plan::run_stages;

/// Rows a view's answer is cut into, at most, per batch.
const OUTPUT_BATCH_ROWS: usize = 64 * 1024;

/// One version of a view, folded up to its offsets.
pub struct ViewState {
    plan: Arc<ViewPlan>,
    /// Per partition, the offset of the next event to fold.
    offsets: BTreeMap<u32, u64>,
    contents: Contents,
    /// Raised by every fold that changed the contents: a read reuses its last answer while it stays.
    generation: u64,
    answer: Option<(u64, Arc<[RecordBatch]>)>,
}

impl std::fmt::Debug for ViewState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewState").field("offsets", &self.offsets).field("rows", &self.rows()).finish_non_exhaustive()
    }
}

/// What a view keeps.
enum Contents {
    /// A view without aggregates: its rows, in batches as they were folded.
    Rows(Vec<RecordBatch>),
    /// A view with aggregates.
    Groups(Groups),
}

/// A grouping's state: its groups' keys and the accumulators' state, by group index.
struct Groups {
    /// Interns each row's keys to its group's index (`None`: no keys, a single group).
    values: Option<Box<dyn GroupValues>>,
    /// The keys of every group, in index order (a group's index is the order it first appeared in).
    keys: Vec<RecordBatch>,
    count: usize,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Scratch: each row's group index.
    indices: Vec<usize>,
}

impl ViewState {
    /// An empty view of `plan`, at offset 0 of every partition.
    pub fn new(plan: Arc<ViewPlan>) -> Result<Self> {
        let contents = match &plan.shape {
            Shape::Rows => Contents::Rows(Vec::new()),
            Shape::Groups(grouping) => Contents::Groups(Groups::new(grouping)?),
        };
        Ok(ViewState { plan, offsets: BTreeMap::new(), contents, generation: 0, answer: None })
    }

    /// The view's compiled definition.
    pub fn plan(&self) -> &Arc<ViewPlan> {
        &self.plan
    }

    /// Per partition, the offset of the next event to fold (partitions never folded are absent: 0).
    pub fn offsets(&self) -> &BTreeMap<u32, u64> {
        &self.offsets
    }

    /// The offset of the next event of `partition` to fold.
    pub fn offset(&self, partition: u32) -> u64 {
        self.offsets.get(&partition).copied().unwrap_or(0)
    }

    /// Folds `events` (a batch in the view plan's input columns: events of `partition` from its next offset
    /// up to `next_offset`, less those outside the view's scope) and moves the partition's offset there.
    pub fn fold(&mut self, partition: u32, events: RecordBatch, next_offset: u64) -> Result<()> {
        let rows = run_stages(&self.plan.before, events)?;
        if rows.num_rows() > 0 {
            match (&mut self.contents, &self.plan.shape) {
                (Contents::Rows(batches), _) => batches.push(rows),
                (Contents::Groups(groups), Shape::Groups(grouping)) => groups.fold(grouping, &rows)?,
                _ => return Err(DataFusionError::Internal("a view's state does not match its plan".into())),
            }
            self.generation += 1;
        }
        self.offsets.insert(partition, next_offset);
        Ok(())
    }

    /// The rows the view holds: kept rows, or groups.
    pub fn rows(&self) -> usize {
        match &self.contents {
            Contents::Rows(batches) => batches.iter().map(RecordBatch::num_rows).sum(),
            Contents::Groups(groups) => groups.count,
        }
    }

    /// The bytes the view's state holds in memory, about.
    pub fn bytes(&self) -> usize {
        match &self.contents {
            Contents::Rows(batches) => batches.iter().map(RecordBatch::get_array_memory_size).sum(),
            Contents::Groups(groups) => {
                let keys: usize = groups.keys.iter().map(RecordBatch::get_array_memory_size).sum();
                keys + groups.accumulators.iter().map(|accumulator| accumulator.size()).sum::<usize>()
            }
        }
    }

    /// The view as readers see it, now: its rows, or its groups' final values through the steps above the
    /// grouping. Computed once per change: reads in between share it.
    pub fn answer(&mut self) -> Result<Arc<[RecordBatch]>> {
        if let Some((generation, answer)) = &self.answer
            && *generation == self.generation
        {
            return Ok(answer.clone());
        }
        let batches = match (&mut self.contents, &self.plan.shape) {
            (Contents::Rows(batches), _) => {
                compact(batches, &self.plan.schema)?;
                batches.clone()
            }
            (Contents::Groups(groups), Shape::Groups(grouping)) => {
                let values = groups.final_values(grouping)?;
                slices(run_stages(&grouping.after, values)?)
            }
            _ => return Err(DataFusionError::Internal("a view's state does not match its plan".into())),
        };
        let answer: Arc<[RecordBatch]> = batches.into();
        self.answer = Some((self.generation, answer.clone()));
        Ok(answer)
    }

    /// The state as Arrow batches of [`Self::state_schema`], to be saved with [`Self::offsets`]: the kept
    /// rows, or each group's keys then each accumulator's state columns.
    pub fn state_batches(&mut self) -> Result<Vec<RecordBatch>> {
        match (&mut self.contents, &self.plan.shape) {
            (Contents::Rows(batches), _) => {
                compact(batches, &self.plan.schema)?;
                Ok(batches.clone())
            }
            (Contents::Groups(groups), Shape::Groups(grouping)) => {
                groups.state_batch(grouping).map(|batch| vec![batch])
            }
            _ => Err(DataFusionError::Internal("a view's state does not match its plan".into())),
        }
    }

    /// A view of `plan` restored from what [`Self::state_batches`] and [`Self::offsets`] gave.
    pub fn restore(plan: Arc<ViewPlan>, offsets: BTreeMap<u32, u64>, batches: &[RecordBatch]) -> Result<Self> {
        let mut state = ViewState::new(plan)?;
        let expected = state.state_schema()?;
        if let Some(batch) = batches.iter().find(|batch| batch.schema().fields() != expected.fields()) {
            return Err(DataFusionError::Internal(format!(
                "the saved state's columns ({}) are not this view's ({})",
                batch.schema(),
                expected
            )));
        }
        match (&mut state.contents, &state.plan.shape) {
            (Contents::Rows(kept), _) => kept.extend(batches.iter().cloned()),
            (Contents::Groups(groups), Shape::Groups(grouping)) => {
                groups.restore(grouping, &concat_batches(&expected, batches.iter())?)?
            }
            _ => return Err(DataFusionError::Internal("a view's state does not match its plan".into())),
        }
        state.offsets = offsets;
        state.generation = 1;
        Ok(state)
    }

    /// The schema of [`Self::state_batches`]' batches.
    pub fn state_schema(&self) -> Result<SchemaRef> {
        match &self.plan.shape {
            Shape::Rows => Ok(self.plan.schema.clone()),
            Shape::Groups(grouping) => Groups::state_schema(grouping),
        }
    }
}

impl Groups {
    fn new(grouping: &Grouping) -> Result<Self> {
        let values = match grouping.keys.is_empty() {
            true => None,
            false => Some(new_group_values(grouping.key_schema.clone(), &GroupOrdering::None)?),
        };
        let accumulators = grouping
            .aggregates
            .iter()
            .map(|aggregate| aggregate.function.create_groups_accumulator())
            .collect::<Result<_>>()?;
        // Without keys, the one group comes with the first row (before it, see `final_values`).
        let count = 0;
        Ok(Groups { values, keys: Vec::new(), count, accumulators, indices: Vec::new() })
    }

    /// Folds `rows` (the output of the view's steps before the grouping) into the groups.
    fn fold(&mut self, grouping: &Grouping, rows: &RecordBatch) -> Result<()> {
        let keys = grouping.keys.iter().map(|key| evaluate(key, rows)).collect::<Result<Vec<ArrayRef>>>()?;
        match &mut self.values {
            None => {
                self.indices.clear();
                self.indices.resize(rows.num_rows(), 0);
                self.count = 1;
            }
            Some(values) => {
                values.intern(&keys, &mut self.indices)?;
                let before = self.count;
                self.count = values.len();
                if self.count > before {
                    self.keep_new_keys(grouping, keys, before)?;
                }
            }
        }
        for (aggregate, accumulator) in grouping.aggregates.iter().zip(&mut self.accumulators) {
            let inputs = aggregate.inputs.iter().map(|input| evaluate(input, rows)).collect::<Result<Vec<_>>>()?;
            let filter = match &aggregate.filter {
                Some(filter) => Some(evaluate(filter, rows)?),
                None => None,
            };
            let filter = filter.as_ref().map(|mask| datafusion::arrow::array::AsArray::as_boolean(mask.as_ref()));
            accumulator.update_batch(&inputs, &self.indices, filter, self.count)?;
        }
        Ok(())
    }

    /// Appends the keys of the groups this batch created (indices from `first_new` on) to `self.keys`:
    /// each new group's first row, in index order (indices are handed out in order of first appearance).
    fn keep_new_keys(&mut self, grouping: &Grouping, keys: Vec<ArrayRef>, first_new: usize) -> Result<()> {
        let mut next = first_new;
        let mut rows = Vec::with_capacity(self.count - first_new);
        for (row, &index) in self.indices.iter().enumerate() {
            if index == next {
                rows.push(u32::try_from(row).map_err(|_| DataFusionError::Internal("a batch too long".into()))?);
                next += 1;
            }
        }
        let batch = RecordBatch::try_new(grouping.key_schema.clone(), keys)?;
        self.keys.push(take_record_batch(&batch, &UInt32Array::from(rows))?);
        Ok(())
    }

    /// Every group's keys then its aggregates' final values. The accumulators hand their state over and
    /// take it back (DataFusion's accumulators only emit by giving their state up).
    fn final_values(&mut self, grouping: &Grouping) -> Result<RecordBatch> {
        if self.count == 0 {
            return Self::no_groups(grouping);
        }
        let mut columns = self.key_columns(grouping)?;
        let indices: Vec<usize> = (0..self.count).collect();
        for (aggregate, accumulator) in grouping.aggregates.iter().zip(&mut self.accumulators) {
            let state = accumulator.state(EmitTo::All)?;
            accumulator.merge_batch(&state, &indices, self.count)?;
            let mut reader = aggregate.function.create_groups_accumulator()?;
            reader.merge_batch(&state, &indices, self.count)?;
            columns.push(reader.evaluate(EmitTo::All)?);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(self.count));
        Ok(RecordBatch::try_new_with_options(grouping.groups_schema.clone(), columns, &options)?)
    }

    /// The answer before any row was folded: no groups, or, without keys, the one row an aggregate over
    /// nothing gives (`count(*)` 0, `sum` NULL), as DataFusion's own accumulators say.
    fn no_groups(grouping: &Grouping) -> Result<RecordBatch> {
        if !grouping.keys.is_empty() {
            return Ok(RecordBatch::new_empty(grouping.groups_schema.clone()));
        }
        let values = grouping
            .aggregates
            .iter()
            .map(|aggregate| aggregate.function.create_accumulator()?.evaluate()?.to_array())
            .collect::<Result<Vec<ArrayRef>>>()?;
        Ok(RecordBatch::try_new(grouping.groups_schema.clone(), values)?)
    }

    /// The keys of every group, one array per key, in index order; the kept batches become one.
    fn key_columns(&mut self, grouping: &Grouping) -> Result<Vec<ArrayRef>> {
        if self.keys.len() > 1 {
            self.keys = vec![concat_batches(&grouping.key_schema, self.keys.iter())?];
        }
        Ok(match self.keys.first() {
            Some(keys) => keys.columns().to_vec(),
            None => grouping.key_schema.fields().iter().map(|field| new_empty_array(field.data_type())).collect(),
        })
    }

    fn state_schema(grouping: &Grouping) -> Result<SchemaRef> {
        let mut fields: Vec<Arc<Field>> = grouping.key_schema.fields().iter().cloned().collect();
        for (index, aggregate) in grouping.aggregates.iter().enumerate() {
            for field in aggregate.function.state_fields()? {
                fields.push(Arc::new(Field::clone(&field).with_name(format!("{index}:{}", field.name()))));
            }
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    fn state_batch(&mut self, grouping: &Grouping) -> Result<RecordBatch> {
        if self.count == 0 {
            return Ok(RecordBatch::new_empty(Self::state_schema(grouping)?));
        }
        let mut columns = self.key_columns(grouping)?;
        let indices: Vec<usize> = (0..self.count).collect();
        for accumulator in &mut self.accumulators {
            let state = accumulator.state(EmitTo::All)?;
            accumulator.merge_batch(&state, &indices, self.count)?;
            columns.extend(state);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(self.count));
        Ok(RecordBatch::try_new_with_options(Self::state_schema(grouping)?, columns, &options)?)
    }

    fn restore(&mut self, grouping: &Grouping, batch: &RecordBatch) -> Result<()> {
        let key_count = grouping.keys.len();
        let keys: Vec<ArrayRef> = batch.columns()[..key_count].to_vec();
        match &mut self.values {
            Some(values) => {
                values.intern(&keys, &mut self.indices)?;
                self.count = values.len();
                if self.count != batch.num_rows() {
                    return Err(DataFusionError::Internal("the saved state repeats a group".into()));
                }
                self.keys = vec![RecordBatch::try_new(grouping.key_schema.clone(), keys)?];
            }
            None => {
                self.indices = vec![0; batch.num_rows()];
                self.count = batch.num_rows().min(1);
            }
        }
        let mut column = key_count;
        for (aggregate, accumulator) in grouping.aggregates.iter().zip(&mut self.accumulators) {
            let width = aggregate.function.state_fields()?.len();
            let state = &batch.columns()[column..column + width];
            accumulator.merge_batch(state, &self.indices, self.count)?;
            column += width;
        }
        Ok(())
    }
}

/// Joins runs of small batches into batches of about [`OUTPUT_BATCH_ROWS`] rows (large ones stay as they
/// are): a view folded a few events at a time would otherwise be read as thousands of tiny batches.
fn compact(batches: &mut Vec<RecordBatch>, schema: &SchemaRef) -> Result<()> {
    let small = |batch: &RecordBatch| batch.num_rows() < OUTPUT_BATCH_ROWS / 2;
    if batches.iter().filter(|batch| small(batch)).count() <= 1 {
        return Ok(());
    }
    let mut compacted = Vec::with_capacity(batches.len());
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0;
    let flush = |pending: &mut Vec<RecordBatch>, pending_rows: &mut usize, into: &mut Vec<RecordBatch>| {
        if !pending.is_empty() {
            into.push(concat_batches(schema, pending.iter())?);
            (*pending, *pending_rows) = (Vec::new(), 0);
        }
        Ok::<(), DataFusionError>(())
    };
    for batch in batches.drain(..) {
        if !small(&batch) {
            flush(&mut pending, &mut pending_rows, &mut compacted)?;
            compacted.push(batch);
            continue;
        }
        pending_rows += batch.num_rows();
        pending.push(batch);
        if pending_rows >= OUTPUT_BATCH_ROWS {
            flush(&mut pending, &mut pending_rows, &mut compacted)?;
        }
    }
    flush(&mut pending, &mut pending_rows, &mut compacted)?;
    *batches = compacted;
    Ok(())
}

/// `batch` cut into slices of at most [`OUTPUT_BATCH_ROWS`] rows (zero-copy), so a read can spread them.
fn slices(batch: RecordBatch) -> Vec<RecordBatch> {
    let rows = batch.num_rows();
    if rows <= OUTPUT_BATCH_ROWS {
        return vec![batch];
    }
    (0..rows).step_by(OUTPUT_BATCH_ROWS).map(|start| batch.slice(start, OUTPUT_BATCH_ROWS.min(rows - start))).collect()
}
