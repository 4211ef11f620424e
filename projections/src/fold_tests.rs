//! The fold's promise, as a property: folding any sequence of events, split into batches at any points
//! (partitions interleaved in any order) and interrupted by restarts from a checkpoint at any points, gives
//! exactly the table that DataFusion computes from the same `SELECT` over all the events at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::ArrayFormatter;
use datafusion::arrow::util::display::FormatOptions;
use datafusion::datasource::MemTable;
use datafusion::execution::SessionState;
use datafusion::prelude::SessionConfig;
use fjord_log::Offset;
use fjord_log::RecordedEvent;
use fjord_log::Revision;
use proptest::prelude::*;

use crate::batch::BatchBuilder;
use crate::batch::Column;
use crate::checkpoint;
use crate::definition::ViewDefinition;
use crate::fold::ViewState;
use crate::plan::ViewPlan;
use crate::schema::events_schema;
use crate::sql;

/// One view of each shape the class has: rows, groups with each aggregate, a `FILTER`, `HAVING`, JSON
/// extraction, the latest row per key (two spellings), and a grouping without keys.
const VIEWS: [&str; 7] = [
    "SELECT stream, type, \"offset\", \"partition\" FROM events WHERE type <> 'c'",
    "SELECT type, count(*) AS n, sum(revision) AS s, min(\"offset\") AS lo, max(timestamp) AS hi, avg(revision) AS a \
     FROM events GROUP BY type",
    "SELECT data->>'category' AS category, sum(CAST(data->>'price' AS BIGINT)) AS revenue, \
     count(*) FILTER (WHERE type = 'a') AS a_events FROM events GROUP BY 1 HAVING count(*) > 1",
    "SELECT stream, last_value(type ORDER BY \"offset\") AS status, count(*) AS events FROM events GROUP BY stream",
    "SELECT count(*) AS n, sum(revision) AS revisions, max(data->>'price') AS top FROM events",
    "SELECT DISTINCT ON (stream) stream, data->>'category' AS category FROM events ORDER BY stream, \"offset\" DESC",
    "SELECT upper(type) AS kind, stream FROM events WHERE CAST(data->>'price' AS BIGINT) > 500",
];

const PARTITIONS: u32 = 3;

/// What one generated event is: its stream (by index), type, and payload's category and price.
#[derive(Debug, Clone)]
struct Spec {
    stream: u8,
    event_type: u8,
    category: u8,
    price: Option<i64>,
    json: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (0u8..8, 0u8..3, 0u8..4, proptest::option::of(-50i64..1000), proptest::bool::weighted(0.9))
        .prop_map(|(stream, event_type, category, price, json)| Spec { stream, event_type, category, price, json })
}

/// The events `specs` make, by partition, as the log would hold them: offsets dense per partition,
/// revisions dense per stream, commit times rising.
fn events(specs: &[Spec]) -> BTreeMap<u32, Vec<RecordedEvent>> {
    let mut by_partition: BTreeMap<u32, Vec<RecordedEvent>> = (0..PARTITIONS).map(|p| (p, Vec::new())).collect();
    let mut revisions: BTreeMap<u8, u64> = BTreeMap::new();
    for (index, spec) in specs.iter().enumerate() {
        let partition = u32::from(spec.stream) % PARTITIONS;
        let log = by_partition.entry(partition).or_default();
        let revision = revisions.entry(spec.stream).or_default();
        let data = match (spec.json, spec.price) {
            (false, _) => vec![0xff, 0x00, 0x01],
            (true, Some(price)) => format!(r#"{{"category":"c{}","price":{price}}}"#, spec.category).into_bytes(),
            (true, None) => format!(r#"{{"category":"c{}"}}"#, spec.category).into_bytes(),
        };
        log.push(RecordedEvent {
            id: uuid::Uuid::from_u128(index as u128 + 1),
            stream: format!("order-{}", spec.stream),
            event_type: ["a", "b", "c"][usize::from(spec.event_type)].to_owned(),
            content_type: "application/json".to_owned(),
            data,
            metadata: BTreeMap::new(),
            offset: Offset(log.len() as u64),
            revision: Revision(*revision),
            timestamp_micros: 1_700_000_000_000_000 + index as i64,
        });
        *revision += 1;
    }
    by_partition
}

/// `events` of `partition` as a batch of `columns`.
fn batch_of(partition: u32, events: &[RecordedEvent], plan: &ViewPlan) -> RecordBatch {
    batch_with(partition, events, plan.input_schema.clone(), plan.columns.clone())
}

fn batch_with(
    partition: u32,
    events: &[RecordedEvent],
    schema: datafusion::arrow::datatypes::SchemaRef,
    columns: Arc<[Column]>,
) -> RecordBatch {
    let mut builder = BatchBuilder::new(partition, schema, columns, events.len().max(1));
    for event in events {
        builder.push(event);
    }
    builder.finish().unwrap()
}

/// Each row of `batches` as text, sorted: two tables are equal when these are.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<_> =
            batch.columns().iter().map(|column| ArrayFormatter::try_new(column.as_ref(), &options).unwrap()).collect();
        for row in 0..batch.num_rows() {
            rows.push(formatters.iter().map(|f| f.value(row).to_string()).collect::<Vec<_>>().join(" | "));
        }
    }
    rows.sort();
    rows
}

fn state() -> SessionState {
    sql::session_state(SessionConfig::new().with_target_partitions(2), None).unwrap()
}

/// The view `sql` computed at once over every event.
async fn one_shot(state: &SessionState, sql: &str, events: &BTreeMap<u32, Vec<RecordedEvent>>) -> Vec<String> {
    let all_columns: Arc<[Column]> = (0..events_schema().fields().len()).map(|i| Column::at(i).unwrap()).collect();
    let batches: Vec<RecordBatch> = events
        .iter()
        .map(|(partition, events)| batch_with(*partition, events, events_schema(), all_columns.clone()))
        .collect();
    let table = MemTable::try_new(events_schema(), vec![batches]).unwrap();
    let context = sql::planning_context(state, Arc::new(table)).unwrap();
    rows(&context.sql(sql).await.unwrap().collect().await.unwrap())
}

/// The view `sql` folded in the steps `cuts` describes: each `(partition, events, restart)` folds the
/// partition's next events (at most `events` of them), then, if `restart`, saves the state to a
/// checkpoint and continues from what is read back.
async fn folded(
    state: &SessionState,
    sql: &str,
    events: &BTreeMap<u32, Vec<RecordedEvent>>,
    cuts: &[(u32, usize, bool)],
) -> Vec<String> {
    let plan = Arc::new(ViewPlan::compile(state, &sql::parse_query(state, sql).unwrap()).await.unwrap());
    let mut view = ViewState::new(plan.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let definition = ViewDefinition {
        name: "v".to_owned(),
        version: 1,
        sql: sql.to_owned(),
        scope: vec![String::new()],
        defined_micros: 0,
    };
    let step = |view: &mut ViewState, partition: u32, count: usize| {
        let log = &events[&partition];
        let from = view.offset(partition) as usize;
        let to = (from + count).min(log.len());
        view.fold(partition, batch_of(partition, &log[from..to], &plan), to as u64).unwrap();
    };
    for &(partition, count, restart) in cuts {
        step(&mut view, partition, count);
        if restart {
            let (batches, schema) = (view.state_batches().unwrap(), view.state_schema().unwrap());
            checkpoint::save(dir.path(), &definition, view.offsets(), true, &schema, &batches).unwrap();
            let saved = checkpoint::load(dir.path()).unwrap().unwrap();
            view = ViewState::restore(plan.clone(), saved.offsets, &saved.batches).unwrap();
        }
        // Reading between folds must not disturb the state.
        if count % 3 == 0 {
            view.answer().unwrap();
        }
    }
    // Whatever the cuts left unfolded, in one step per partition.
    for partition in 0..PARTITIONS {
        step(&mut view, partition, usize::MAX / 2);
    }
    rows(&view.answer().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn folding_in_any_batches_with_restarts_equals_one_shot_sql(
        specs in proptest::collection::vec(spec(), 0..120),
        cuts in proptest::collection::vec((0..PARTITIONS, 0usize..20, proptest::bool::weighted(0.2)), 0..30),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let events = events(&specs);
        let state = state();
        for sql in VIEWS {
            let (expected, got) = runtime.block_on(async {
                (one_shot(&state, sql, &events).await, folded(&state, sql, &events, &cuts).await)
            });
            prop_assert_eq!(&got, &expected, "{}", sql);
        }
    }
}
