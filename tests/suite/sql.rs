//! SQL over a running region: `Query.Sql` over gRPC (an Arrow IPC stream) and `fjord sql`, on any node,
//! behind the same tokens as the rest of the API, read-your-writes on a follower through an append's
//! consistency token, and each bad statement failing with its own reason.

use std::collections::HashMap;
use std::process::Command;

use fjord_proto::auth::BearerToken;
use fjord_proto::v1;
use fjord_proto::v1::query_client::QueryClient;
use tonic::Code;

use crate::common::TestRegion;
use crate::common::append;
use crate::common::reason;
use crate::common::sql::sql;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_sql_with_its_freshness_and_the_callers_writes() {
    let region = TestRegion::start(3, 2).await;
    region.wait_for_leaders().await;
    let mut store = region.nodes[0].store().await;
    // The offsets after every write, per partition: a token that covers them all.
    let mut written: HashMap<u32, u64> = HashMap::new();
    for n in 0..20u128 {
        let response = store.append(append(&format!("order-{n}"), None, &[2 * n + 1, 2 * n + 2])).await.unwrap();
        for (partition, offset) in response.into_inner().token.unwrap().partition_offsets {
            let entry = written.entry(partition).or_default();
            *entry = (*entry).max(offset);
        }
    }
    let token = v1::ConsistencyToken { region: String::new(), partition_offsets: written.clone() };
    for node in &region.nodes {
        let answer =
            sql(&node.address, &region.token, "SELECT count(*) FROM events", Some(token.clone())).await.unwrap();
        assert_eq!(answer.count(), 40, "node at {}", node.address);
        for (partition, offset) in &written {
            assert!(answer.freshness.applied_offsets[partition] >= *offset, "{:?}", answer.freshness);
        }
        let types =
            sql(&node.address, &region.token, "SELECT DISTINCT type FROM events", Some(token.clone())).await.unwrap();
        assert_eq!(types.strings(0), ["Tested"]);
    }
    let data = sql(
        &region.nodes[1].address,
        &region.token,
        "SELECT data->>'id' FROM events WHERE stream = 'order-3' ORDER BY revision",
        Some(token),
    )
    .await
    .unwrap();
    assert_eq!(data.strings(0), ["7", "8"]);
    // Every node shows every member's view of every partition, each with its applied offset.
    for node in &region.nodes {
        let views = "SELECT count(*) FROM fjord_partitions WHERE applied_offset IS NOT NULL AND role <> 'unreachable'";
        assert_eq!(sql(&node.address, &region.token, views, None).await.unwrap().count(), 6, "{}", node.address);
        let members = "SELECT count(DISTINCT node) FROM fjord_partitions";
        assert_eq!(sql(&node.address, &region.token, members, None).await.unwrap().count(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_see_what_their_token_grants_and_bad_ones_say_why() {
    let region = TestRegion::start(1, 2).await;
    region.wait_for_leaders().await;
    let address = region.nodes[0].address.clone();
    let mut store = region.nodes[0].store().await;
    store.append(append("cart-1", None, &[1])).await.unwrap();
    store.append(append("order-1", None, &[2, 3])).await.unwrap();

    let carts = BearerToken::new(&region.issue_token("analyst", "query:cart-")).unwrap();
    assert_eq!(sql(&address, &carts, "SELECT count(*) FROM events", None).await.unwrap().count(), 1);
    let hidden = sql(&address, &carts, "SELECT count(*) FROM fjord_streams WHERE stream = 'order-1'", None).await;
    assert_eq!(hidden.unwrap().count(), 0);
    let reader = BearerToken::new(&region.issue_token("reader", "read:")).unwrap();
    let denied = sql(&address, &reader, "SELECT 1", None).await.err().expect("no query grant");
    assert_eq!((denied.code(), reason(&denied).as_str()), (Code::PermissionDenied, "PERMISSION_DENIED"));
    let anonymous = QueryClient::new(crate::common::anonymous_channel(&address))
        .sql(v1::SqlRequest { sql: "SELECT 1".to_owned(), wait_for: None, max_staleness_ms: 0 })
        .await
        .expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    for (statement, code, why) in [
        ("SELEC 1", Code::InvalidArgument, "SYNTAX_ERROR"),
        ("SELECT * FROM nowhere", Code::InvalidArgument, "UNDEFINED_NAME"),
        ("SELECT colour FROM events", Code::InvalidArgument, "UNDEFINED_NAME"),
        ("INSERT INTO events (stream) VALUES ('x')", Code::InvalidArgument, "READ_ONLY"),
        ("DELETE FROM events", Code::InvalidArgument, "READ_ONLY"),
    ] {
        let error = sql(&address, &region.token, statement, None).await.err().expect(statement);
        assert_eq!((error.code(), reason(&error).as_str()), (code, why), "{statement}: {}", error.message());
    }
    let never = v1::ConsistencyToken { region: String::new(), partition_offsets: HashMap::from([(0, u64::MAX)]) };
    let stale = sql(&address, &region.token, "SELECT 1", Some(never)).await.err().expect("never applied");
    assert_eq!((stale.code(), reason(&stale).as_str()), (Code::Unavailable, "NOT_FRESH_ENOUGH"));
    // Still serving.
    assert_eq!(sql(&address, &region.token, "SELECT count(*) FROM events", None).await.unwrap().count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fjord_sql_prints_a_table_csv_and_json() {
    let region = TestRegion::start(1, 2).await;
    region.wait_for_leaders().await;
    let mut store = region.nodes[0].store().await;
    store.append(append("order-1", None, &[1, 2])).await.unwrap();
    store.append(append("order-2", None, &[3])).await.unwrap();
    let address = region.nodes[0].address.clone();
    let fjord = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_fjord"))
            .args(["sql", "--server", &address])
            .args(args)
            .env("FJORD_TOKEN", region.admin_token())
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let statement = "SELECT stream, count(*) AS events FROM events GROUP BY stream ORDER BY stream";
    let (ok, out, err) = fjord(&[statement]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["stream  | events", "--------+-------", "order-1 |      2", "order-2 |      1"], "{out}");
    assert!(err.contains("(2 rows; as of node 1's applied log"), "{err}");
    let (ok, out, _) = fjord(&[statement, "--csv"]);
    assert!(ok);
    assert_eq!(out, "stream,events\norder-1,2\norder-2,1\n");
    let (ok, out, _) = fjord(&[statement, "--json"]);
    assert!(ok);
    let rows: Vec<serde_json::Value> = out.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(rows[0], serde_json::json!({"stream": "order-1", "events": 2}));
    let (ok, _, err) = fjord(&["SELECT nope FROM events"]);
    assert!(!ok && err.contains("UNDEFINED_NAME"), "{err}");

    // Alone, `fjord sql` is a prompt: statements end at their `;`, over as many lines as they take; an
    // error is printed and the prompt goes on; `--wait-for` takes the token `fjord append` prints.
    let appended = Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args(["append", "--server", &address, "order-3", "OrderPlaced", r#"{"total": 5}"#])
        .env("FJORD_TOKEN", region.admin_token())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&appended.stdout).into_owned();
    let token = printed.lines().find_map(|line| line.strip_prefix("consistency token: ")).expect("a token");
    let token = token.split_whitespace().next().unwrap();
    let mut prompt = Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args(["sql", "--server", &address, "--wait-for", token])
        .env("FJORD_TOKEN", region.admin_token())
        .env("HOME", tempfile::tempdir().unwrap().path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script =
        "SELECT count(*)\n  AS events\nFROM events;\nSELECT nope FROM events;\nSELECT 'after' AS still;\n\\q\n";
    std::io::Write::write_all(prompt.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    let output = prompt.wait_with_output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{err}");
    assert!(out.contains("events\n------\n     4"), "{out}");
    assert!(err.contains("UNDEFINED_NAME") && out.contains("after"), "{out}\n{err}");
}
