//! Materialized views on real `fjord server`s: defined over psql, Flight SQL (ADBC) and gRPC on any node,
//! folded on every node, read with a consistency token on a follower; equal to the same SQL over `events`
//! after a node is killed mid-fold and restarted from its checkpoint; replaced under load with readers
//! seeing the old version until the swap and the new one after, never a mix; refused definitions and a
//! DROP of a missing view said clearly.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::Duration;

use datafusion::arrow::array::Array;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::arrow::util::display::ArrayFormatter;
use datafusion::arrow::util::display::FormatOptions;
use fjord_proto::v1;
use serde_json::json;

use crate::common::TestRegion;
use crate::common::clients::psql;
use crate::common::clients::python;
use crate::common::clients::refused;
use crate::common::clients::stdout;
use crate::common::sql::Answer;
use crate::common::sql::sql;

/// Appends `count` events (types `a`, `b`, `c` in turn; `data` `{"amount": n}`) to `streams` streams
/// `order-0`…, in appends of up to 100, through node `via`; the consistency token of them all.
async fn orders(region: &TestRegion, via: usize, streams: u64, count: u64, first_id: u128) -> v1::ConsistencyToken {
    let mut store = region.nodes[via].store().await;
    let mut written: HashMap<u32, u64> = HashMap::new();
    let per_stream = count.div_ceil(streams);
    for stream in 0..streams {
        let mut left = per_stream;
        let mut n = 0u64;
        while left > 0 {
            let take = left.min(100);
            let events = (0..take)
                .map(|i| v1::ProposedEvent {
                    id: uuid::Uuid::from_u128(first_id + u128::from(stream) * 1_000_000 + u128::from(n + i))
                        .as_bytes()
                        .to_vec(),
                    r#type: ["a", "b", "c"][((n + i) % 3) as usize].to_owned(),
                    content_type: String::new(),
                    data: format!(r#"{{"amount": {}}}"#, n + i).into_bytes(),
                    metadata: Default::default(),
                })
                .collect();
            let request = v1::AppendRequest { stream: format!("order-{stream}"), expected: None, events };
            let response = store.append(request).await.unwrap().into_inner();
            for (partition, offset) in response.token.unwrap().partition_offsets {
                let entry = written.entry(partition).or_default();
                *entry = (*entry).max(offset);
            }
            (left, n) = (left - take, n + take);
        }
    }
    v1::ConsistencyToken { region: String::new(), partition_offsets: written }
}

/// Every row of `answer` as text, sorted.
fn rows(answer: &Answer) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in &answer.batches {
        let formatters: Vec<_> =
            batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap()).collect();
        for row in 0..batch.num_rows() {
            rows.push(formatters.iter().map(|f| f.value(row).to_string()).collect::<Vec<_>>().join("|"));
        }
    }
    rows.sort();
    rows
}

/// A token of the offsets either of `a` and `b` names, the higher where both do.
fn merged(a: &v1::ConsistencyToken, b: &v1::ConsistencyToken) -> v1::ConsistencyToken {
    let mut offsets = a.partition_offsets.clone();
    for (partition, offset) in &b.partition_offsets {
        let entry = offsets.entry(*partition).or_default();
        *entry = (*entry).max(*offset);
    }
    v1::ConsistencyToken { region: String::new(), partition_offsets: offsets }
}

/// A token of where the node at `address` stands: after a view statement it ran, one that holds the
/// statement (the statement returns once that node's registry has it).
async fn standing(region: &TestRegion, address: &str) -> v1::ConsistencyToken {
    let answer = sql(address, &region.token, "SELECT count(*) FROM fjord_views", None).await.unwrap();
    v1::ConsistencyToken { region: String::new(), partition_offsets: answer.freshness.applied_offsets }
}

/// Restarts node `index` and waits (a minute at most) until it answers.
async fn restart(region: &mut TestRegion, index: usize) {
    region.nodes[index].restart();
    let id = region.nodes[index].id;
    for _ in 0..600 {
        if region.node_answers(id).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {id} did not answer after its restart");
}

/// A token as the text `SET fjord.wait_for` takes.
fn token_text(token: &v1::ConsistencyToken) -> String {
    let offsets: BTreeMap<u32, u64> = token.partition_offsets.iter().map(|(p, o)| (*p, *o)).collect();
    let pairs: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}={o}")).collect();
    format!("test:{}", pairs.join(","))
}

/// `fjord_views`' `column` (a UInt64 column) for `view` on the node at `address`.
async fn view_number(region: &TestRegion, address: &str, view: &str, column: &str) -> Option<u64> {
    let statement = format!("SELECT {column} FROM fjord_views WHERE name = '{view}'");
    let answer = sql(address, &region.token, &statement, None).await.unwrap();
    let batch = answer.batches.iter().find(|batch| batch.num_rows() > 0)?;
    let column = batch.column(0).as_primitive::<UInt64Type>();
    (!column.is_null(0)).then(|| column.value(0))
}

const ORDER_TOTALS: &str = "CREATE MATERIALIZED VIEW order_totals AS SELECT stream, count(*) AS events, \
     sum(json_get_int(data, 'amount')) AS amount, last_value(type ORDER BY \"offset\") AS status \
     FROM events GROUP BY stream";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_defined_anywhere_folds_everywhere_and_reads_the_callers_writes() {
    let region = TestRegion::start(3, 2).await;
    region.wait_for_leaders().await;
    let admin = region.admin_token();
    orders(&region, 0, 3, 12, 1).await;
    // Defined over Postgres on the third node; every node folds it.
    stdout(&psql(&region.nodes[2].postgres_address, &admin, &[ORDER_TOTALS]));
    // Reads elsewhere wait for the definition too: it is an event of the region's log.
    let defined = standing(&region, &region.nodes[2].address).await;
    let token = merged(&orders(&region, 0, 3, 6, 500).await, &defined);
    let statement = "SELECT stream, events, amount, status FROM order_totals ORDER BY stream";
    let one_shot = "SELECT stream, count(*) AS events, sum(json_get_int(data, 'amount')) AS amount, \
                    last_value(type ORDER BY \"offset\") AS status FROM events GROUP BY stream ORDER BY stream";
    for node in &region.nodes {
        let view = sql(&node.address, &region.token, statement, Some(token.clone())).await.unwrap();
        let events = sql(&node.address, &region.token, one_shot, Some(token.clone())).await.unwrap();
        assert_eq!(rows(&view), rows(&events), "node {}", node.id);
        assert_eq!(view.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        // The answer stands where the view was folded up to: at or past the caller's writes.
        for (partition, offset) in &token.partition_offsets {
            assert!(view.freshness.applied_offsets[partition] >= *offset, "node {}", node.id);
        }
    }
    let follower = &region.nodes[1].postgres_address;
    let read = stdout(&psql(follower, &admin, &[&format!("SET fjord.wait_for = '{}'", token_text(&token)), statement]));
    assert_eq!(read.lines().count(), 3, "{read}");
    assert!(read.starts_with("order-0|6|7|b"), "{read}");
    let listed = stdout(&psql(follower, &admin, &["SHOW VIEWS"]));
    assert!(listed.starts_with("order_totals|1|serving|3|"), "{listed}");

    // Each refusal with its SQLSTATE and the construct named.
    let join = refused(&psql(
        follower,
        &admin,
        &["CREATE MATERIALIZED VIEW j AS SELECT a.stream FROM events a JOIN events b ON a.stream = b.stream"],
    ));
    assert!(join.contains("0A000") && join.contains("joins are not supported in materialized views"), "{join}");
    let window = refused(&psql(
        follower,
        &admin,
        &["CREATE MATERIALIZED VIEW w AS SELECT stream, row_number() OVER (ORDER BY \"offset\") FROM events"],
    ));
    assert!(window.contains("window functions"), "{window}");
    let missing = refused(&psql(follower, &admin, &["DROP MATERIALIZED VIEW nothing_here"]));
    assert!(missing.contains("42P01") && missing.contains("\"nothing_here\" does not exist"), "{missing}");
    stdout(&psql(follower, &admin, &["DROP MATERIALIZED VIEW IF EXISTS nothing_here"]));
    let twice = refused(&psql(follower, &admin, &[ORDER_TOTALS]));
    assert!(twice.contains("42P07") && twice.contains("already exists"), "{twice}");
    let analyst = region.issue_token("analyst", "query:");
    let not_admin = refused(&psql(follower, &analyst, &["DROP MATERIALIZED VIEW order_totals"]));
    assert!(not_admin.contains("42501") && not_admin.contains("grants admin"), "{not_admin}");
    // An analyst reads what the view folded; one who may see only some streams does not see the view.
    assert_eq!(stdout(&psql(follower, &analyst, &["SELECT count(*) FROM order_totals"])), "3");
    let narrow = region.issue_token("narrow", "query:order-1");
    assert!(refused(&psql(follower, &narrow, &["SELECT * FROM order_totals"])).contains("42P01"));

    // The same through Arrow Flight SQL (ADBC): define, read with the token, refuse a duplicate, drop.
    let answer = python(
        "views_client.py",
        &[
            ("FJORD_FLIGHT", region.nodes[1].address.clone()),
            ("FJORD_TOKEN", admin.clone()),
            ("FJORD_WAIT_FOR", token_text(&token)),
        ],
    );
    assert_eq!(answer["rows"], json!([["a", 9], ["b", 6], ["c", 3]]));
    assert_eq!((&answer["duplicate_refused"], &answer["dropped_then_missing"]), (&json!(true), &json!(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_fold_restarts_from_its_checkpoint_and_agrees_with_sql() {
    let mut region = TestRegion::start(3, 2).await;
    region.wait_for_leaders().await;
    orders(&region, 0, 20, 20_000, 1).await;
    let define = "CREATE MATERIALIZED VIEW by_type AS SELECT type, count(*) AS n, sum(revision) AS revisions, \
                  max(\"offset\") AS top FROM events GROUP BY type";
    sql(&region.nodes[0].address, &region.token, define, None).await.unwrap();
    let defined = standing(&region, &region.nodes[0].address).await;
    // Killed while it folds 20,000 events, and more arrive while it is down.
    region.nodes[2].kill();
    let token = merged(&orders(&region, 0, 20, 2_000, 900_000_000).await, &defined);
    restart(&mut region, 2).await;
    let view = "SELECT type, n, revisions, top FROM by_type";
    let one_shot =
        "SELECT type, count(*) AS n, sum(revision) AS revisions, max(\"offset\") AS top FROM events GROUP BY type";
    let node = &region.nodes[2].address.clone();
    let folded = sql(node, &region.token, view, Some(token.clone())).await.unwrap();
    let expected = sql(node, &region.token, one_shot, Some(token.clone())).await.unwrap();
    assert_eq!(rows(&folded), rows(&expected));

    // Once its checkpoint covers every event, a restart folds only what came after it.
    // Every event appended, and the view's definition.
    let total: u64 = 22_000 + 1;
    let mut checkpointed = 0;
    for _ in 0..300 {
        checkpointed = view_number(&region, node, "by_type", "checkpointed_events").await.unwrap_or(0);
        if checkpointed >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checkpointed >= total, "the checkpoint covers {checkpointed} events");
    region.nodes[2].kill();
    let token = orders(&region, 0, 2, 100, 950_000_000).await;
    restart(&mut region, 2).await;
    let folded = sql(node, &region.token, view, Some(token.clone())).await.unwrap();
    let expected = sql(node, &region.token, one_shot, Some(token.clone())).await.unwrap();
    assert_eq!(rows(&folded), rows(&expected));
    let here = view_number(&region, node, "by_type", "folded_since_start").await.unwrap();
    assert!(
        here <= 100,
        "after restarting from its checkpoint the node folded {here} events, not just the 100 new ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_view_under_load_swaps_whole_versions() {
    let region = TestRegion::start(3, 2).await;
    region.wait_for_leaders().await;
    let token = orders(&region, 0, 50, 5_000, 1).await;
    let define = |version: &str| {
        format!(
            "CREATE OR REPLACE MATERIALIZED VIEW per_stream AS \
             SELECT stream, '{version}' AS version, count(*) AS n FROM events GROUP BY stream"
        )
    };
    let reader = region.nodes[1].address.clone();
    sql(&reader, &region.token, &define("one"), None).await.unwrap();
    let read = "SELECT version, count(*) AS streams, sum(n) AS events FROM per_stream GROUP BY version";
    sql(&reader, &region.token, read, Some(token)).await.unwrap();

    // Appends go on through the replacement; a reader reads the view all along.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writer = {
        let mut store = region.nodes[0].store().await;
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let mut n = 0u128;
            while !*stopped.borrow_and_update() {
                let request = crate::common::append(&format!("order-{}", n % 50), None, &[(1u128 << 64) + n]);
                store.append(request).await.unwrap();
                n += 1;
            }
            n
        })
    };
    sql(&region.nodes[2].address, &region.token, &define("two"), None).await.unwrap();
    let mut seen: Vec<(String, i64)> = Vec::new();
    for _ in 0..2_000 {
        let answer = sql(&reader, &region.token, read, None).await.unwrap();
        let batch = answer.batches.iter().find(|b| b.num_rows() > 0).unwrap();
        assert_eq!(batch.num_rows(), 1, "an answer mixed versions: {:?}", rows(&answer));
        let version = batch.column(0).as_string::<i32>().value(0).to_owned();
        let events = batch.column(2).as_primitive::<Int64Type>().value(0);
        seen.push((version, events));
        if seen.iter().filter(|(version, _)| version == "two").count() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    let appended = writer.await.unwrap();
    let first_two = seen.iter().position(|(version, _)| version == "two").expect("the new version never served");
    assert!(seen[..first_two].iter().all(|(version, _)| version == "one"), "{seen:?}");
    assert!(seen[first_two..].iter().all(|(version, _)| version == "two"), "{seen:?}");
    // The new version served only once caught up: never fewer events than the old one had shown.
    let before = seen[..first_two].iter().map(|(_, events)| *events).max().unwrap_or(5_000);
    assert!(seen[first_two].1 >= before, "{seen:?}");
    assert!(appended > 0);
}
