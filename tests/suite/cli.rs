//! The command-line client against a running region: `fjord append`, `fjord read`, `fjord status`.

use std::process::Command;

use crate::common::TestRegion;

fn fjord(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_fjord")).args(args).output().unwrap();
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

    let (ok, _, err) = fjord(&["append", "--server", "127.0.0.1:1", "s-1", "T", "{}"]);
    assert!(!ok);
    assert!(err.contains("connecting to 127.0.0.1:1"), "{err}");
}
