//! Node configuration: defaults < TOML file < environment variables < flags.
//!
//! Every option has a default, so `fjord dev` runs with none. The file is optional; environment variables
//! and flags are declared on the clap arguments (see [`crate::cli`]) and applied over the file.

use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;
use fjord_log::GroupCommitConfig;
use fjord_log::Limits;
use fjord_log::StoreOptions;
use serde::Deserialize;
use serde::Serialize;

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// How the log store is opened (partition count, cache).
    pub store: StoreOptions,
    /// Limits every append is validated against.
    pub limits: Limits,
    /// Bounds on group-committed batches.
    pub group_commit: GroupCommitConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            store: StoreOptions::default(),
            limits: Limits::default(),
            group_commit: GroupCommitConfig::default(),
        }
    }
}

impl Config {
    /// The defaults, overlaid with the TOML file at `path` if one is given.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else { return Ok(Config::default()) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        let config: Config =
            toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
        config.limits.check().map_err(|e| anyhow::anyhow!("config file {}: limits: {e}", path.display()))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fjord.toml");
        std::fs::write(
            &path,
            "data_dir = \"/tmp/x\"\n[limits]\nmax_event_data_bytes = 2048\n[store]\npartitions = 8\n",
        )
        .unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.limits.max_event_data_bytes, 2048);
        assert_eq!(config.limits.max_stream_name_bytes, 255);
        assert_eq!(config.store.partitions, 8);
    }

    #[test]
    fn unknown_keys_and_bad_limits_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fjord.toml");
        std::fs::write(&path, "[limits]\nmax_event_size = 1\n").unwrap();
        assert!(format!("{:#}", Config::load(Some(&path)).unwrap_err()).contains("max_event_size"));
        std::fs::write(&path, "[limits]\nmax_stream_name_bytes = 1000\n").unwrap();
        assert!(format!("{:#}", Config::load(Some(&path)).unwrap_err()).contains("max_stream_name_bytes"));
        assert!(Config::load(Some(&dir.path().join("missing.toml"))).is_err());
    }
}
