//! SQL through the clients people already have, against real `fjord server`s: psql (Debian's
//! postgresql-client), Python's psycopg 3, pyarrow.flight and ADBC's Flight SQL driver (the virtualenv
//! `bin/setup` fills; the scripts are in `tests/python/`), and arrow-flight's Rust Flight SQL client. Each
//! logs in with a token of the region, reads its own writes on a follower, and gets each bad statement
//! refused with its own code.

use std::collections::BTreeMap;

use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use fjord_proto::v1;
use fjord_query::ConsistencyToken;
use futures::TryStreamExt;
use serde_json::json;

use crate::common::TestRegion;
use crate::common::clients::psql;
use crate::common::clients::python;
use crate::common::clients::refused;
use crate::common::clients::stdout;

/// The events by type the workload leaves.
const BY_TYPE: &str = "SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type";

/// Three orders of four events each (`data` `{"amount": revision + 1}`), through the first node; the
/// consistency token of them all.
async fn orders(region: &TestRegion) -> ConsistencyToken {
    let mut store = region.nodes[0].store().await;
    let mut token = ConsistencyToken { region: "test".to_owned(), offsets: BTreeMap::new() };
    for order in 1..=3u128 {
        let events = ["OrderPlaced", "ItemAdded", "ItemAdded", "OrderShipped"].iter().enumerate().map(|(n, kind)| {
            v1::ProposedEvent {
                id: uuid::Uuid::from_u128(order * 100 + n as u128).as_bytes().to_vec(),
                r#type: (*kind).to_owned(),
                content_type: String::new(),
                data: format!(r#"{{"amount": {}}}"#, n + 1).into_bytes(),
                metadata: Default::default(),
            }
        });
        let request = v1::AppendRequest { stream: format!("order-{order}"), expected: None, events: events.collect() };
        let response = store.append(request).await.unwrap().into_inner();
        for (partition, offset) in response.token.unwrap().partition_offsets {
            let entry = token.offsets.entry(partition).or_default();
            *entry = (*entry).max(offset);
        }
    }
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_psycopg_query_with_the_token_as_password() {
    let region = TestRegion::start(3, 2).await;
    let token = orders(&region).await;
    let admin = region.admin_token();
    let follower = &region.nodes[2].postgres_address;

    let by_type = stdout(&psql(follower, &admin, &[&format!("SET fjord.wait_for = '{token}'"), BY_TYPE]));
    assert_eq!(by_type, "ItemAdded|6\nOrderPlaced|3\nOrderShipped|3");
    let total =
        stdout(&psql(follower, &admin, &["SELECT count(*) FROM events; SELECT count(DISTINCT stream) FROM events"]));
    assert_eq!(total, "12\n3");
    // Each refusal with its SQLSTATE; a syntax error points into the statement.
    let syntax = refused(&psql(follower, &admin, &["SELECT type FROM events WHER 1"]));
    assert!(syntax.contains("42601") && syntax.contains("LINE 1: SELECT type FROM events WHER 1"), "{syntax}");
    assert!(refused(&psql(follower, &admin, &["SELECT * FROM nowhere"])).contains("42P01"));
    assert!(refused(&psql(follower, &admin, &["DELETE FROM events"])).contains("25006"));
    assert!(refused(&psql(follower, &admin, &["SET work_mem = '1GB'"])).contains("42704"));
    let foreign = refused(&psql(follower, &admin, &["SET fjord.wait_for = 'elsewhere:0=1'", "SELECT 1"]));
    assert!(foreign.contains("22023") && foreign.contains("elsewhere"), "{foreign}");
    // The password is a token of the region that grants `query`, and a query sees what it grants.
    let stranger = refused(&psql(follower, "not-a-token", &["SELECT 1"]));
    assert!(stranger.contains("the password must be a token of this region"), "{stranger}");
    let reader = region.issue_token("reader", "read:");
    assert!(refused(&psql(follower, &reader, &["SELECT 1"])).contains("does not grant query"));
    let one_order = region.issue_token("analyst", "query:order-1");
    assert_eq!(stdout(&psql(follower, &one_order, &["SELECT count(*) FROM events"])), "4");

    let answer = python(
        "psycopg_client.py",
        &[
            ("FJORD_PG_HOST", follower.split_once(':').unwrap().0.to_owned()),
            ("FJORD_PG_PORT", follower.split_once(':').unwrap().1.to_owned()),
            ("FJORD_TOKEN", admin.clone()),
            ("FJORD_STREAM", "order-1".to_owned()),
            ("FJORD_WAIT_FOR", token.to_string()),
        ],
    );
    assert_eq!(answer["by_type"], json!([["ItemAdded", 6], ["OrderPlaced", 3], ["OrderShipped", 3]]));
    let stream_rows = json!([["order-1", 1, "2"], ["order-1", 2, "3"], ["order-1", 3, "4"]]);
    assert_eq!(answer["stream_rows"], stream_rows);
    assert_eq!(answer["binary_rows"], stream_rows);
    assert_eq!(answer["prepared_counts"], json!([4, 2]));
    let codes = json!({"syntax": "42601", "unknown_table": "42P01", "unknown_column": "42703", "write": "25006"});
    assert_eq!(answer["errors"], codes);
    assert_eq!(answer["usable_after_errors"], json!(true));
    assert_eq!((&answer["bad_token"]["refused"], &answer["bad_token"]["mentions_token"]), (&json!(true), &json!(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_clients_run_statements_prepare_and_list_tables() {
    let region = TestRegion::start(3, 2).await;
    let token = orders(&region).await;
    let admin = region.admin_token();
    let follower = region.nodes[1].address.clone();
    let env = [
        ("FJORD_FLIGHT", follower.clone()),
        ("FJORD_TOKEN", admin.clone()),
        ("FJORD_STREAM", "order-2".to_owned()),
        ("FJORD_WAIT_FOR", token.to_string()),
    ];
    let by_type = json!([["ItemAdded", 6], ["OrderPlaced", 3], ["OrderShipped", 3]]);
    let tables = json!(["events", "fjord_members", "fjord_partitions", "fjord_streams", "fjord_views"]);

    let flight = python("flight_client.py", &env);
    assert_eq!(flight["by_type"], by_type);
    assert_eq!(flight["schema_matches"], json!(true));
    assert_eq!(flight["tables"], tables);
    assert_eq!(flight["errors"]["syntax"]["mentions_syntax"], json!(true), "{flight}");
    assert_eq!(flight["errors"]["bad_token"], json!("FlightUnauthenticatedError"));
    assert_eq!(flight["basic_auth"], json!({"bearer": true, "n": 12}));

    let adbc = python("adbc_client.py", &env);
    assert_eq!(adbc["by_type"], by_type);
    assert_eq!(adbc["prepared"], json!([["order-2", 1], ["order-2", 2], ["order-2", 3]]));
    assert_eq!(adbc["prepared_counts"], json!([4, 2]));
    assert_eq!(adbc["tables"], tables);
    let columns = json!([
        "partition",
        "offset",
        "stream",
        "revision",
        "type",
        "content_type",
        "id",
        "timestamp",
        "data",
        "data_bytes",
        "metadata"
    ]);
    assert_eq!(adbc["events_schema"], columns);
    assert_eq!(adbc["errors"]["syntax"]["mentions_syntax"], json!(true), "{adbc}");
    assert_eq!(adbc["errors"]["bad_token"]["status"], json!("UNAUTHENTICATED"));
    assert_eq!(adbc["basic_auth"], json!({"n": 12}));

    // arrow-flight's Rust client: the answer says how fresh it is, as a token a later query can wait for.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{follower}")).unwrap().connect().await.unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_header("authorization", format!("Bearer {admin}"));
    client.set_header("x-fjord-wait-for", token.to_string());
    let info = client.execute("SELECT count(*) AS n FROM events".to_owned(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut answer = client.do_get(ticket).await.unwrap();
    let headers = answer.headers().clone();
    let batches: Vec<_> = (&mut answer).try_collect().await.unwrap();
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 12);
    let applied: ConsistencyToken = headers.get("x-fjord-applied").unwrap().to_str().unwrap().parse().unwrap();
    assert_eq!(applied.region, "test");
    for (partition, offset) in &token.offsets {
        assert!(applied.offsets[partition] >= *offset, "{applied} is behind {token}");
    }
    assert_eq!(headers.get("x-fjord-node").unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_endpoint_bounds_connections_and_messages() {
    let options = crate::common::RegionOptions {
        extra_config: "\n[postgres]\nmax_connections = 2\nmax_message_bytes = 4096\n".to_owned(),
        ..Default::default()
    };
    let region = TestRegion::start_with_options(1, 1, &options).await;
    let (admin, address) = (region.admin_token(), region.nodes[0].postgres_address.clone());
    assert_eq!(stdout(&psql(&address, &admin, &["SELECT 41 + 1"])), "42");
    // A message over the limit closes the connection, unread; the node goes on serving.
    let long = format!("SELECT '{}' AS padding", "x".repeat(8192));
    let refused_long = refused(&psql(&address, &admin, &[&long]));
    assert!(refused_long.contains("over the limit of 4096"), "{refused_long}");
    // Two connections held open (not even logged in) take every place; a third is told so.
    let held: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let crowded = refused(&psql(&address, &admin, &["SELECT 1"]));
    assert!(crowded.contains("2 Postgres connections already"), "{crowded}");
    drop(held);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(stdout(&psql(&address, &admin, &["SELECT 1"])), "1");
}
