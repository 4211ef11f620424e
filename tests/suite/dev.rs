//! `fjord dev` as a newcomer runs it: the real binary, real data directories, its real output, Ctrl-C.

use std::io::BufRead;
use std::io::BufReader;
use std::path::Path;
use std::process::Command;
use std::process::Stdio;

use crate::common::free_ports;

/// Runs `fjord dev` in `cwd` until it says it is ready, then `while_up` with what it printed so far, then
/// sends SIGINT; returns what it printed.
fn run_dev(cwd: &Path, port: u16, while_up: impl FnOnce(&str)) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args(["dev", "--port", &port.to_string()])
        .current_dir(cwd)
        .env_remove("FJORD_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut output = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        output.push_str(&line);
        output.push('\n');
        if line.starts_with("ready") {
            break;
        }
    }
    while_up(&output);
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    for line in lines {
        output.push_str(&line.unwrap());
        output.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "fjord dev did not exit cleanly ({status}):\n{output}");
    output
}

/// Nine consecutive free ports: `fjord dev` takes the one given and the next eight.
fn dev_port() -> u16 {
    free_ports(9)
}

/// The token `fjord dev` says to export.
fn printed_token(output: &str) -> &str {
    output.lines().find_map(|line| line.trim().strip_prefix("export FJORD_TOKEN=")).expect("fjord dev prints a token")
}

#[test]
fn dev_runs_a_region_appends_reads_back_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let port = dev_port();
    let first = run_dev(dir.path(), port, |output| {
        // The printed commands work as printed, with the printed token; without it, nothing is served.
        let server = format!("127.0.0.1:{port}");
        let status = Command::new(env!("CARGO_BIN_EXE_fjord"))
            .args(["status", "--server", &server])
            .env("FJORD_TOKEN", printed_token(output))
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        assert!(String::from_utf8_lossy(&status.stdout).contains("region dev"));
        let refused = Command::new(env!("CARGO_BIN_EXE_fjord"))
            .args(["status", "--server", &server, "--token", "x"])
            .output()
            .unwrap();
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains("UNAUTHENTICATED"));
        // The printed SQL command, as printed: the sample workload's events by type.
        let sql = output.lines().find_map(|line| line.trim().strip_prefix("fjord sql ")).expect("fjord dev prints SQL");
        let (sql_server, statement) = sql.strip_prefix("--server ").and_then(|rest| rest.split_once(' ')).unwrap();
        let answer = Command::new(env!("CARGO_BIN_EXE_fjord"))
            .args(["sql", "--server", sql_server, statement.trim_matches('"')])
            .env("FJORD_TOKEN", printed_token(output))
            .output()
            .unwrap();
        assert!(answer.status.success(), "{}", String::from_utf8_lossy(&answer.stderr));
        let table = String::from_utf8_lossy(&answer.stdout);
        assert!(table.starts_with("type ") && table.contains("OrderPlaced"), "{table}");
        // The printed psql command, as printed, through a shell (psql from the setup's packages).
        let psql = output.lines().map(str::trim).find(|line| line.starts_with("PGPASSWORD=")).expect("a psql command");
        let answer = Command::new("sh").args(["-c", psql]).env("FJORD_TOKEN", printed_token(output)).output().unwrap();
        assert!(answer.status.success(), "{psql}: {}", String::from_utf8_lossy(&answer.stderr));
        let table = String::from_utf8_lossy(&answer.stdout);
        assert!(table.contains("OrderPlaced") && table.contains("(3 rows)"), "{table}");
        // The sample view, as printed: each order's latest status.
        let view = output.lines().map(str::trim).find(|line| line.contains("FROM order_status")).expect("a view query");
        let answer = Command::new("sh").args(["-c", view]).env("FJORD_TOKEN", printed_token(output)).output().unwrap();
        assert!(answer.status.success(), "{view}: {}", String::from_utf8_lossy(&answer.stderr));
        let table = String::from_utf8_lossy(&answer.stdout);
        assert!(
            table.contains("order-1001") && table.contains("OrderShipped") && table.contains("(3 rows)"),
            "{table}"
        );
    });
    for node in 1..=3 {
        assert!(dir.path().join(format!("data/node-{node}")).is_dir(), "node {node} keeps its data under ./data");
    }
    assert!(first.contains("region \"dev\" of 3 nodes"), "{first}");
    assert!(first.contains("appended 3 events to order-1001 via node 1"), "{first}");
    assert!(first.contains("revisions 0..=2"), "{first}");
    assert!(first.contains("(deduplicated: nothing written)"), "{first}");
    assert!(first.contains("refused (WRONG_EXPECTED_REVISION): stream order-1001 is at revision 2"), "{first}");
    assert!(first.contains("read back order-1003 (3 events):"), "{first}");
    assert!(first.contains(&format!("fjord status --server 127.0.0.1:{port}")), "{first}");
    assert!(first.contains("stopping"), "{first}");
    assert!(first.contains("defined the materialized view order_status"), "{first}");

    let second = run_dev(dir.path(), port, |_| {});
    assert_eq!(printed_token(&first), printed_token(&second), "the dev region keeps its credentials");
    assert!(
        second.contains("appended 3 events to order-1001 via node 1") && second.contains("revisions 3..=5"),
        "{second}"
    );
    assert!(second.contains("read back order-1001 (6 events):"), "{second}");
    assert!(second.contains("order_status (defined by an earlier run) folds on"), "{second}");
}

#[test]
fn a_bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fjord.toml"), "[limits]\nmax_stream_name_bytes = 999\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args(["dev", "--config", "fjord.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_stream_name_bytes is 999"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing was created");
}
