//! `fjord dev` as a newcomer runs it: the real binary, a real data directory, its real output.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::process::Output;

fn fjord(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fjord")).args(args).current_dir(cwd).env_remove("FJORD_DATA_DIR").output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "fjord failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn dev_appends_reads_back_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let first = stdout(&fjord(&["dev"], dir.path()));
    assert!(dir.path().join("data").is_dir(), "data lives under ./data");
    assert!(first.contains("appended 3 events to order-1001"), "{first}");
    assert!(first.contains("revisions 0..=2"), "{first}");
    assert!(first.contains("(deduplicated: nothing written)"), "{first}");
    assert!(first.contains("refused (WRONG_EXPECTED_REVISION): stream order-1001 is at revision 2"), "{first}");
    assert!(first.contains("read back order-1003 (3 events):"), "{first}");
    assert!(first.contains("OrderShipped"), "{first}");
    let sizes = |out: &str| -> u64 {
        let line = out.lines().find(|l| l.starts_with("partition sizes")).unwrap();
        line.split_whitespace().filter_map(|w| w.split_once('=')).map(|(_, n)| n.parse::<u64>().unwrap()).sum()
    };
    assert_eq!(sizes(&first), 9);

    let second = stdout(&fjord(&["dev"], dir.path()));
    assert!(second.contains("appended 3 events to order-1001") && second.contains("revisions 3..=5"), "{second}");
    assert!(second.contains("read back order-1001 (6 events):"), "{second}");
    assert_eq!(sizes(&second), 18);
}

#[test]
fn a_bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fjord.toml"), "[limits]\nmax_stream_name_bytes = 999\n").unwrap();
    let output = fjord(&["dev", "--config", "fjord.toml"], dir.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_stream_name_bytes is 999"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

#[test]
fn partition_count_is_fixed_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    stdout(&fjord(&["dev", "--partitions", "2"], dir.path()));
    let output = fjord(&["dev", "--partitions", "3"], dir.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("created with 2 partitions"), "{stderr}");
}
