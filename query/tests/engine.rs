//! The query engine over a real log store (RocksDB in a temp dir): what `events` and the system tables
//! answer, what a scan may skip and what it must not, and every limit failing as its error says.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::util::display::ArrayFormatter;
use datafusion::arrow::util::display::FormatOptions;
use datafusion::common::ScalarValue;
use fjord_log::AppendRequest;
use fjord_log::Durability;
use fjord_log::ExpectedRevision;
use fjord_log::LogStore;
use fjord_log::ProposedEvent;
use fjord_log::StoreOptions;
use fjord_query::QueryEngine;
use fjord_query::QueryError;
use fjord_query::QueryLimits;
use fjord_query::QueryRequest;
use fjord_query::StreamScope;
use fjord_query::system::MemberRow;
use fjord_query::system::PartitionRow;
use fjord_query::system::RegionView;
use futures::StreamExt;

/// A region view with one member that leads every partition.
#[derive(Debug)]
struct OneNode(Arc<LogStore>);

#[async_trait::async_trait]
impl RegionView for OneNode {
    async fn partitions(&self) -> Vec<PartitionRow> {
        self.0
            .partitions()
            .iter()
            .map(|log| PartitionRow {
                node: 1,
                partition: log.partition().0,
                role: "leader".to_owned(),
                leader: Some(1),
                term: Some(1),
                last_log_index: Some(0),
                applied_index: Some(0),
                applied_offset: Some(log.applied_tail().next_offset.0),
            })
            .collect()
    }

    fn members(&self) -> Vec<MemberRow> {
        vec![MemberRow { node: 1, address: "127.0.0.1:7201".to_owned(), voter: true }]
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<LogStore>,
}

impl Fixture {
    /// A store of 4 partitions holding `orders` orders: `order-<n>` gets `OrderPlaced` (total n) then
    /// `OrderPaid`, and every tenth a `cart-<n>` stream gets `ItemAdded`; plus one `$internal` event.
    fn new(orders: u64) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = StoreOptions { partitions: 4, verify_on_open: false, ..StoreOptions::default() };
        let store = Arc::new(LogStore::open(dir.path(), &options).expect("open the store"));
        let fixture = Fixture { _dir: dir, store };
        for n in 0..orders {
            let total = format!(r#"{{"total": {n}, "category": "{}"}}"#, if n % 2 == 0 { "even" } else { "odd" });
            fixture.append(&format!("order-{n}"), &[("OrderPlaced", total.as_str()), ("OrderPaid", "{}")]);
            if n % 10 == 0 {
                fixture.append(&format!("cart-{n}"), &[("ItemAdded", r#"{"sku": "x"}"#)]);
            }
        }
        fixture.append("$internal", &[("Checkpoint", "{}")]);
        fixture
    }

    fn append(&self, stream: &str, events: &[(&str, &str)]) {
        let events = events.iter().map(|(kind, data)| ProposedEvent::json(*kind, data.as_bytes().to_vec())).collect();
        let request = AppendRequest { stream: stream.to_owned(), expected: ExpectedRevision::Any, events };
        let log = self.store.partition_for(stream);
        let outcome = log.apply(&[request], now_micros(), Durability::Buffered).expect("append");
        assert!(outcome[0].is_ok(), "{outcome:?}");
    }

    fn engine(&self, limits: QueryLimits) -> QueryEngine {
        QueryEngine::new(self.store.clone(), Arc::new(OneNode(self.store.clone())), limits, None).expect("engine")
    }
}

fn now_micros() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    i64::try_from(since.as_micros()).expect("micros")
}

fn request(sql: &str) -> QueryRequest {
    QueryRequest::new(sql, StreamScope::all())
}

async fn run(engine: &QueryEngine, request: QueryRequest) -> Result<Vec<RecordBatch>, QueryError> {
    let mut result = engine.query(request).await?;
    let mut batches = Vec::new();
    while let Some(batch) = result.stream.next().await {
        batches.push(batch?);
    }
    Ok(batches)
}

/// The answer as rows of display texts.
async fn rows(engine: &QueryEngine, sql: &str) -> Vec<Vec<String>> {
    rows_of(&run(engine, request(sql)).await.unwrap_or_else(|error| panic!("{sql}: {error}")))
}

fn rows_of(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::new().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<_> =
            batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("format")).collect();
        for row in 0..batch.num_rows() {
            rows.push(formatters.iter().map(|f| f.value(row).to_string()).collect());
        }
    }
    rows
}

async fn count(engine: &QueryEngine, sql: &str) -> i64 {
    let batches = run(engine, request(sql)).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
    batches.iter().find(|b| b.num_rows() > 0).map(|b| b.column(0).as_primitive::<Int64Type>().value(0)).unwrap_or(0)
}

#[tokio::test]
async fn events_answer_what_the_log_holds_and_hide_internal_streams() {
    let fixture = Fixture::new(100);
    let engine = fixture.engine(QueryLimits::default());
    assert_eq!(count(&engine, "SELECT count(*) FROM events").await, 210);
    let by_type = rows(&engine, "SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type").await;
    assert_eq!(by_type, [["ItemAdded", "10"], ["OrderPaid", "100"], ["OrderPlaced", "100"]]);
    let one =
        rows(&engine, "SELECT stream, revision, type, data FROM events WHERE stream = 'order-7' ORDER BY revision")
            .await;
    assert_eq!(
        one,
        [["order-7", "0", "OrderPlaced", r#"{"total": 7, "category": "odd"}"#], ["order-7", "1", "OrderPaid", "{}"]]
    );
    // Offsets are dense per partition and every partition has events.
    let partitions = rows(
        &engine,
        "SELECT partition, count(*), min(\"offset\"), max(\"offset\") FROM events GROUP BY partition ORDER BY partition",
    )
    .await;
    assert_eq!(partitions.len(), 4);
    for row in &partitions {
        let (n, min, max): (u64, u64, u64) =
            (row[1].parse().unwrap(), row[2].parse().unwrap(), row[3].parse().unwrap());
        assert_eq!(min, 0);
        // The `$internal` event, appended last, takes the offset after its partition's visible ones.
        assert_eq!(max + 1, n, "{row:?}");
    }
}

#[tokio::test]
async fn a_prepared_statement_describes_itself_and_binds_its_parameters() {
    let fixture = Fixture::new(20);
    let engine = fixture.engine(QueryLimits::default());
    let sql = "SELECT stream, revision FROM events WHERE stream = $1 AND revision >= $2 ORDER BY revision";
    let prepared = engine.prepare(sql, &StreamScope::all()).await.expect("prepare");
    assert_eq!(prepared.parameter_types, [Some(DataType::Utf8), Some(DataType::UInt64)]);
    let names: Vec<&str> = prepared.schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["stream", "revision"]);
    let bound = |params: Vec<ScalarValue>| QueryRequest { params, ..request(sql) };
    // A client that sends every value as text (a Postgres driver's unknown type) gets it cast.
    let text = vec![ScalarValue::from("order-3"), ScalarValue::from("1")];
    assert_eq!(rows_of(&run(&engine, bound(text)).await.unwrap()), [["order-3", "1"]]);
    let typed = vec![ScalarValue::from("order-3"), ScalarValue::Int64(Some(0))];
    assert_eq!(rows_of(&run(&engine, bound(typed)).await.unwrap()).len(), 2);
    let missing = run(&engine, bound(vec![ScalarValue::from("order-3")])).await.expect_err("one value short");
    assert!(matches!(missing, QueryError::BadParameter(_)), "{missing}");
    let wrong = run(&engine, bound(vec![ScalarValue::from("order-3"), ScalarValue::from("two")])).await;
    assert!(matches!(wrong, Err(QueryError::BadParameter(_))), "{wrong:?}");
    // Preparing refuses what running refuses.
    let write = engine.prepare("DELETE FROM events", &StreamScope::all()).await.expect_err("a write");
    assert!(matches!(write, QueryError::NotAllowed(_)), "{write}");
    // An answer without parameters streams exactly the schema it was prepared with.
    let plain = engine.prepare("SELECT type, count(*) AS n FROM events GROUP BY type", &StreamScope::all()).await;
    let result = engine.query(request("SELECT type, count(*) AS n FROM events GROUP BY type")).await.unwrap();
    assert_eq!(plain.unwrap().schema, result.stream.schema());
}

#[tokio::test]
async fn json_data_is_queryable() {
    let fixture = Fixture::new(100);
    let engine = fixture.engine(QueryLimits::default());
    let sums = rows(
        &engine,
        "SELECT data->>'category' AS category, sum(json_get_int(data, 'total')) FROM events \
         WHERE type = 'OrderPlaced' GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert_eq!(sums, [["even", "2450"], ["odd", "2500"]]);
}

#[tokio::test]
async fn pushed_down_filters_keep_every_matching_row() {
    let fixture = Fixture::new(200);
    let engine = fixture.engine(QueryLimits::default());
    let all = rows(&engine, "SELECT partition, \"offset\", stream, type, timestamp FROM events").await;
    let cases: [(&str, RowTest); 8] = [
        ("stream = 'order-42'", Box::new(|r| r[2] == "order-42")),
        ("stream IN ('order-1', 'cart-10', 'nope')", Box::new(|r| ["order-1", "cart-10"].contains(&r[2].as_str()))),
        ("stream LIKE 'cart-%'", Box::new(|r| r[2].starts_with("cart-"))),
        ("type IN ('ItemAdded')", Box::new(|r| r[3] == "ItemAdded")),
        (
            "partition = 2 AND \"offset\" >= 10 AND \"offset\" < 20",
            Box::new(|r| r[0] == "2" && in_range(&r[1], 10, 20)),
        ),
        ("\"offset\" BETWEEN 5 AND 6", Box::new(|r| in_range(&r[1], 5, 7))),
        (
            "stream LIKE 'order-1%' AND type = 'OrderPaid'",
            Box::new(|r| r[2].starts_with("order-1") && r[3] == "OrderPaid"),
        ),
        ("stream = 'order-1' AND stream = 'order-2'", Box::new(|_| false)),
    ];
    for (filter, keeps) in cases {
        let sql = format!("SELECT partition, \"offset\", stream, type, timestamp FROM events WHERE {filter}");
        let mut got = rows(&engine, &sql).await;
        let mut want: Vec<Vec<String>> = all.iter().filter(|row| keeps(row)).cloned().collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{filter}");
    }
    // A time range: every event at or after the 100th event's commit time, in its partition.
    let middle = &all[all.len() / 2];
    let sql = format!("SELECT count(*) FROM events WHERE timestamp >= '{}'", middle[4]);
    let want = all.iter().filter(|row| row[4] >= middle[4]).count();
    assert_eq!(count(&engine, &sql).await, i64::try_from(want).unwrap());
}

/// Which rows a filter keeps, checked in Rust.
type RowTest = Box<dyn Fn(&Vec<String>) -> bool>;

fn in_range(offset: &str, from: u64, to: u64) -> bool {
    offset.parse::<u64>().is_ok_and(|offset| (from..to).contains(&offset))
}

#[tokio::test]
async fn a_scope_shows_only_its_streams_everywhere() {
    let fixture = Fixture::new(50);
    let engine = fixture.engine(QueryLimits::default());
    let carts = |sql: &str| QueryRequest::new(sql, StreamScope::prefixes(["cart-".to_owned()]));
    let events = rows_of(&run(&engine, carts("SELECT DISTINCT stream FROM events ORDER BY stream")).await.unwrap());
    assert_eq!(events, [["cart-0"], ["cart-10"], ["cart-20"], ["cart-30"], ["cart-40"]]);
    let named = rows_of(&run(&engine, carts("SELECT count(*) FROM events WHERE stream = 'order-1'")).await.unwrap());
    assert_eq!(named, [["0"]]);
    let streams = rows_of(&run(&engine, carts("SELECT count(*) FROM fjord_streams")).await.unwrap());
    assert_eq!(streams, [["5"]]);
    let everything = rows(&engine, "SELECT count(*) FROM fjord_streams").await;
    assert_eq!(everything, [["55"]], "every stream but $internal");
}

#[tokio::test]
async fn system_tables_describe_the_node() {
    let fixture = Fixture::new(10);
    let engine = fixture.engine(QueryLimits::default());
    let partitions = rows(&engine, "SELECT sum(applied_offset), count(*), min(role) FROM fjord_partitions").await;
    assert_eq!(partitions, [["22", "4", "leader"]]);
    assert_eq!(rows(&engine, "SELECT node, voter FROM fjord_members").await, [["1", "true"]]);
    let head = rows(&engine, "SELECT revision FROM fjord_streams WHERE stream = 'order-3'").await;
    assert_eq!(head, [["1"]]);
}

#[tokio::test]
async fn an_answer_stops_at_its_cut() {
    let fixture = Fixture::new(10);
    let engine = fixture.engine(QueryLimits::default());
    let mut result = engine.query(request("SELECT \"offset\" FROM events")).await.expect("query");
    let before: u64 = result.cut.offsets().iter().map(|(_, end)| end).sum();
    fixture.append("order-late", &[("OrderPlaced", "{}")]);
    let mut seen = 0;
    while let Some(batch) = result.stream.next().await {
        seen += batch.expect("batch").num_rows();
    }
    // Everything below the cut but the one internal event; nothing appended after it.
    assert_eq!(u64::try_from(seen).unwrap(), before - 1);
}

#[tokio::test]
async fn a_consistency_token_waits_for_the_node_to_apply_it() {
    let fixture = Arc::new(Fixture::new(1));
    let engine = fixture.engine(QueryLimits { freshness_wait_ms: 5_000, ..QueryLimits::default() });
    let log = fixture.store.partition_for("order-next");
    let wanted = log.applied_tail().next_offset.0 + 1;
    let token = BTreeMap::from([(log.partition().0, wanted)]);
    let later = fixture.clone();
    let appender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        later.append("order-next", &[("OrderPlaced", "{}")]);
    });
    let sql = "SELECT count(*) FROM events WHERE stream = 'order-next'";
    let answer = run(&engine, QueryRequest { wait_for: token, ..request(sql) }).await.expect("query");
    assert_eq!(rows_of(&answer), [["1"]]);
    appender.await.expect("appender");

    let impatient = fixture.engine(QueryLimits { freshness_wait_ms: 100, ..QueryLimits::default() });
    let never = BTreeMap::from([(0, u64::MAX)]);
    let error = run(&impatient, QueryRequest { wait_for: never, ..request(sql) }).await.expect_err("not fresh");
    assert!(matches!(error, QueryError::NotFreshEnough { .. }), "{error}");
    let error = run(&impatient, QueryRequest { wait_for: BTreeMap::from([(9, 1)]), ..request(sql) }).await.unwrap_err();
    assert!(matches!(error, QueryError::UnknownPartition { partition: 9 }), "{error}");
}

#[tokio::test]
async fn bad_statements_fail_with_their_own_errors() {
    let fixture = Fixture::new(10);
    let engine = fixture.engine(QueryLimits::default());
    let failure = |sql: &'static str| {
        let engine = &engine;
        async move { run(engine, request(sql)).await.expect_err(sql) }
    };
    let syntax = failure("SELEC * FROM events").await;
    assert!(matches!(syntax, QueryError::Syntax(_)) && syntax.sqlstate() == "42601", "{syntax}");
    let table = failure("SELECT * FROM nowhere").await;
    assert!(matches!(table, QueryError::Undefined(_)) && table.sqlstate() == "42P01", "{table}");
    let column = failure("SELECT colour FROM events").await;
    assert!(matches!(column, QueryError::Undefined(_)) && column.sqlstate() == "42703", "{column}");
    let types = failure("SELECT sum(stream) FROM events").await;
    assert!(matches!(types, QueryError::Invalid(_)), "{types}");
    for write in [
        "INSERT INTO events (stream) VALUES ('x')",
        "DELETE FROM events",
        "UPDATE events SET type = 'x'",
        "CREATE TABLE t (a int)",
        "DROP TABLE events",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let refused = failure(write).await;
        assert!(matches!(refused, QueryError::NotAllowed(_)) && refused.sqlstate() == "25006", "{write}: {refused}");
    }
    // The engine still answers.
    assert_eq!(count(&engine, "SELECT count(*) FROM events").await, 21);
}

#[tokio::test]
async fn limits_fail_the_query_not_the_node() {
    let fixture = Fixture::new(2_000);
    let long = format!("SELECT 1 -- {}", "x".repeat(100));
    let small = fixture.engine(QueryLimits { max_query_bytes: 64, ..QueryLimits::default() });
    let error = run(&small, request(&long)).await.expect_err("too long");
    assert!(matches!(error, QueryError::TooLong { bytes, limit: 64 } if bytes == long.len()), "{error}");

    let tight = fixture.engine(QueryLimits { memory_bytes: 64 * 1024, spill_bytes: 0, ..QueryLimits::default() });
    let heavy = "SELECT stream, array_agg(data) FROM events GROUP BY stream ORDER BY stream";
    let error = run(&tight, request(heavy)).await.expect_err("over its memory");
    assert!(matches!(error, QueryError::OutOfMemory { .. }), "{error}");

    let hasty = fixture.engine(QueryLimits { timeout_ms: 1, ..QueryLimits::default() });
    let slow = "SELECT count(*) FROM events a JOIN events b ON a.type = b.type";
    let error = run(&hasty, request(slow)).await.expect_err("over its time");
    assert!(matches!(error, QueryError::Timeout(_)), "{error}");

    let single = fixture.engine(QueryLimits { max_concurrent: 1, ..QueryLimits::default() });
    let first = single.query(request("SELECT * FROM events")).await.expect("first");
    let error = single.query(request("SELECT 1")).await.err().expect("busy");
    assert!(matches!(error, QueryError::Busy(1)), "{error}");
    drop(first);
    assert_eq!(count(&single, "SELECT count(*) FROM events").await, 4_200);

    // An answer nobody reads (a Postgres portal left suspended) holds its place only until its time is up.
    let brief = fixture.engine(QueryLimits { max_concurrent: 1, timeout_ms: 300, ..QueryLimits::default() });
    let abandoned = brief.query(request("SELECT * FROM events")).await.expect("first");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&brief, "SELECT count(*) FROM events").await, 4_200);
    drop(abandoned);
}
