//! The command-line client against a running region: `fjord append`, `fjord read`, `fjord status`,
//! `fjord tail`, `fjord subscription`, with the region's admin token in `FJORD_TOKEN`, and tokens that grant
//! less, issued with `fjord token`.

use std::process::Command;

use crate::common::TestRegion;

/// Runs `fjord args` with `token` in `FJORD_TOKEN` (none: unset).
fn fjord_as(token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fjord"));
    command.args(args).env_remove("FJORD_TOKEN");
    if let Some(token) = token {
        command.env("FJORD_TOKEN", token);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_and_status_from_the_command_line() {
    let region = TestRegion::start(3, 2).await;
    let (a, b, c) = (&region.nodes[0].address, &region.nodes[1].address, &region.nodes[2].address);
    let admin = region.admin_token();
    let fjord = |args: &[&str]| fjord_as(Some(&admin), args);

    let (ok, out, err) =
        fjord(&["append", "--server", a, "cart-1", "ItemAdded", r#"{"sku":"tent"}"#, "--expected", "no-stream"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("appended to cart-1 at revision 0"), "{out}");
    let (ok, out, err) = fjord(&["append", "--server", b, "cart-1", "ItemAdded", r#"{"sku":"stove"}"#, "--json"]);
    assert!(ok, "{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["revision"], 1);

    let (ok, _, err) = fjord(&["append", "--server", c, "cart-1", "ItemAdded", "{}", "--expected", "0"]);
    assert!(!ok);
    assert!(err.contains("WRONG_EXPECTED_REVISION: stream cart-1 is at revision 1, expected revision 0"), "{err}");

    let (ok, out, err) = fjord(&["read", "--server", c, "cart-1"]);
    assert!(ok, "{err}");
    assert!(out.contains("ItemAdded") && out.contains("tent") && out.contains("stove"), "{out}");
    let (ok, out, _) = fjord(&["read", "--server", b, "cart-1", "--json", "--local"]);
    assert!(ok);
    let revisions: Vec<u64> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["revision"].as_u64().unwrap())
        .collect();
    let prefix: Vec<u64> = (0..revisions.len() as u64).collect();
    assert_eq!(revisions, prefix, "a local read serves a prefix of the stream");

    let (ok, out, err) = fjord(&["status", "--server", a]);
    assert!(ok, "{err}");
    assert!(out.contains("member") && out.contains("leader"), "{out}");
    let (ok, out, _) = fjord(&["status", "--server", a, "--json"]);
    assert!(ok);
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    assert_eq!(status["partitions"].as_array().unwrap().len(), 2);

    // Nobody there: retried until --timeout-secs, then said where it failed.
    let (ok, _, err) = fjord(&["append", "--server", "127.0.0.1:1", "--timeout-secs", "1", "s-1", "T", "{}"]);
    assert!(!ok);
    assert!(err.contains("Unavailable") && err.contains("(from 127.0.0.1:1)"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_grant_what_they_say_and_nothing_else() {
    let region = TestRegion::start(1, 1).await;
    let server = region.nodes[0].address.clone();
    let admin = region.admin_token();
    let security = region.security_dir().display().to_string();
    let (ok, reader, err) =
        fjord_as(None, &["token", "--dir", &security, "--subject", "reader", "--grant", "read:order-"]);
    assert!(ok, "{err}");
    let (ok, writer, err) =
        fjord_as(None, &["token", "--dir", &security, "--subject", "writer", "--grant", "append,read:order-"]);
    assert!(ok, "{err}");
    let (reader, writer) = (reader.trim(), writer.trim());

    let (ok, _, err) = fjord_as(None, &["append", "--server", &server, "order-1", "Placed", "{}"]);
    assert!(!ok);
    assert!(err.contains("no token"), "{err}");
    let (ok, _, err) = fjord_as(Some("not-a-token"), &["append", "--server", &server, "order-1", "Placed", "{}"]);
    assert!(!ok);
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    let (ok, _, err) = fjord_as(Some(reader), &["append", "--server", &server, "order-1", "Placed", "{}"]);
    assert!(!ok);
    assert!(err.contains("PERMISSION_DENIED") && err.contains("append"), "{err}");
    let (ok, _, err) = fjord_as(Some(writer), &["append", "--server", &server, "invoice-1", "Issued", "{}"]);
    assert!(!ok);
    assert!(err.contains("PERMISSION_DENIED") && err.contains("invoice-1"), "{err}");
    let (ok, _, err) = fjord_as(Some(writer), &["status", "--server", &server]);
    assert!(!ok);
    assert!(err.contains("PERMISSION_DENIED") && err.contains("admin"), "{err}");

    // Nothing above was written: the stream is still empty.
    let (ok, out, err) = fjord_as(Some(reader), &["read", "--server", &server, "order-1", "--json"]);
    assert!(ok, "{err}");
    assert_eq!(out, "");
    let (ok, _, err) = fjord_as(Some(writer), &["append", "--server", &server, "order-1", "Placed", "{}"]);
    assert!(ok, "{err}");
    let (ok, out, err) = fjord_as(Some(reader), &["read", "--server", &server, "order-1", "--json"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let (ok, _, err) = fjord_as(Some(&admin), &["status", "--server", &server]);
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_is_checked_against_its_content_type_and_printed_terminal_safe() {
    let region = TestRegion::start(1, 1).await;
    let server = region.nodes[0].address.clone();
    let admin = region.admin_token();
    let fjord = |args: &[&str]| fjord_as(Some(&admin), args);

    let (ok, _, err) = fjord(&["append", "--server", &server, "note-1", "Written", "{not json"]);
    assert!(!ok);
    assert!(err.contains("not JSON"), "{err}");
    let escape = "plain \u{1b}]0;owned\u{7}\u{1b}[2J text";
    let (ok, _, err) =
        fjord(&["append", "--server", &server, "note-1", "Written", escape, "--content-type", "text/plain"]);
    assert!(ok, "{err}");
    let (ok, out, err) = fjord(&["read", "--server", &server, "note-1"]);
    assert!(ok, "{err}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "control characters reached the terminal: {out:?}");
    assert!(out.contains("plain \\u{1b}]0;owned"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_history_then_live_events_and_resumes_where_a_line_says() {
    use std::io::BufRead;
    let region = TestRegion::start(3, 2).await;
    let admin = region.admin_token();
    let (a, b) = (&region.nodes[0].address, &region.nodes[1].address);
    for sku in ["tent", "stove"] {
        let (ok, _, err) =
            fjord_as(Some(&admin), &["append", "--server", a, "cart-9", "ItemAdded", &format!(r#"{{"sku":"{sku}"}}"#)]);
        assert!(ok, "{err}");
    }
    let (ok, _, err) = fjord_as(Some(&admin), &["append", "--server", a, "invoice-1", "Issued", "{}"]);
    assert!(ok, "{err}");
    let tail = |from: &str| {
        Command::new(env!("CARGO_BIN_EXE_fjord"))
            .args(["tail", "--server", b, "--category", "cart", "--json", "--from", from])
            .env("FJORD_TOKEN", &admin)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = tail("start");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || -> serde_json::Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    let (first, second) = (next(), next());
    assert_eq!((first["stream"].as_str(), first["revision"].as_u64()), (Some("cart-9"), Some(0)));
    assert_eq!(second["data"].as_str(), Some(r#"{"sku":"stove"}"#));
    // Live: an append after the tail started shows up; the invoice (another category) never does.
    let (ok, _, err) = fjord_as(Some(&admin), &["append", "--server", a, "cart-9", "CheckedOut", "{}"]);
    assert!(ok, "{err}");
    let third = next();
    assert_eq!((third["type"].as_str(), third["revision"].as_u64()), (Some("CheckedOut"), Some(2)));
    child.kill().unwrap();
    child.wait().unwrap();

    // Resumed from the position the first line printed, it goes on with the second.
    let mut child = tail(first["resume_from"].as_str().unwrap());
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let resumed: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(resumed["revision"].as_u64(), Some(1));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_subscription_from_the_command_line_is_consumed_in_turns_without_repeats() {
    let region = TestRegion::start(3, 2).await;
    let (a, b) = (&region.nodes[0].address, &region.nodes[1].address);
    let admin = region.admin_token();
    let fjord = |args: &[&str]| fjord_as(Some(&admin), args);
    for n in 0..6 {
        let (ok, _, err) = fjord(&["append", "--server", a, &format!("cart-{}", n % 3), "ItemAdded", "{}"]);
        assert!(ok, "{err}");
    }
    let (ok, out, err) = fjord(&["subscription", "create", "--server", b, "carts", "--category", "cart"]);
    assert!(ok, "{err}");
    assert!(out.contains("carts") && out.contains("category cart"), "{out}");

    // Two consumers one after the other: each event printed once, the second starting where the first
    // stopped (it acknowledged what it printed before it left).
    let consume = |count: &str| {
        let (ok, out, err) = fjord(&[
            "subscription",
            "consume",
            "--server",
            a,
            "carts",
            "--json",
            "--count",
            count,
            "--timeout-secs",
            "10",
        ]);
        assert!(ok, "{err}");
        out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>()
    };
    // (The first may have been handed more than it printed: those come to the second as a second delivery.)
    let lines: Vec<serde_json::Value> = consume("2").into_iter().chain(consume("4")).collect();
    let mut seen: Vec<(u64, u64)> =
        lines.iter().map(|line| (line["partition"].as_u64().unwrap(), line["offset"].as_u64().unwrap())).collect();
    seen.sort();
    seen.dedup();
    assert_eq!((lines.len(), seen.len()), (6, 6), "every event printed once: {lines:?}");

    let (ok, out, err) = fjord(&["subscription", "describe", "--server", b, "carts", "--json"]);
    assert!(ok, "{err}");
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(info["name"], "carts");
    assert_eq!(info["in_flight"], 0);
    let (ok, out, _) = fjord(&["subscription", "list", "--server", a]);
    assert!(ok && out.contains("carts"), "{out}");
    let (ok, _, err) = fjord(&["subscription", "describe", "--server", a, "nothing-here"]);
    assert!(!ok && err.contains("SUBSCRIPTION_NOT_FOUND"), "{err}");
    let (ok, _, err) = fjord(&["subscription", "delete", "--server", a, "carts"]);
    assert!(ok, "{err}");
    let (ok, out, _) = fjord(&["subscription", "list", "--server", a, "--json"]);
    assert!(ok && out.trim().is_empty(), "{out}");
}
