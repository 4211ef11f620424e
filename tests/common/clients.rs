//! The clients people already have, as tests run them: psql (Debian's postgresql-client) and the Python
//! scripts in `tests/python/` (psycopg, pyarrow.flight, ADBC) in the virtualenv `bin/setup` fills.

use std::process::Command;
use std::process::Output;

use serde_json::Value;

/// `psql` against `address` with `password`, in unaligned tuples-only mode, running each of `commands`
/// (`-c`, one session), with errors verbose (their SQLSTATE shown).
pub(crate) fn psql(address: &str, password: &str, commands: &[&str]) -> Output {
    let (host, port) = address.split_once(':').unwrap();
    let mut psql = Command::new("psql");
    psql.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose"])
        .args(["-h", host, "-p", port, "-U", "analyst", "-d", "fjord"])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10");
    for command in commands {
        psql.args(["-c", command]);
    }
    psql.output().expect("psql runs (bin/setup installs postgresql-client)")
}

pub(crate) fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

pub(crate) fn refused(output: &Output) -> String {
    assert!(!output.status.success(), "unexpectedly answered: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `tests/python/<script>` with the setup's virtualenv and `env`; its one line of JSON.
pub(crate) fn python(script: &str, env: &[(&str, String)]) -> Value {
    let venv = std::env::var("FJORD_VENV").unwrap_or_else(|_| "/var/cache/fjord/venv".to_owned());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let output = Command::new(format!("{venv}/bin/python"))
        .arg(&path)
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .output()
        .expect("the virtualenv's python runs (bin/setup makes it)");
    assert!(output.status.success(), "{script}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{script} printed no JSON ({e})"))
}
