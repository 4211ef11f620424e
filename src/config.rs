//! Node configuration files: the defaults, overlaid with an optional TOML file. Flags and environment
//! variables are applied over the result by [`crate::cli`].

use std::path::Path;

use anyhow::Context;

use crate::node::NodeConfig;

/// The defaults, overlaid with the TOML file at `path` if one is given.
pub fn load(path: Option<&Path>) -> anyhow::Result<NodeConfig> {
    let Some(path) = path else { return Ok(NodeConfig::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    let config: NodeConfig =
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
    config.limits.check().map_err(|e| anyhow::anyhow!("config file {}: limits: {e}", path.display()))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fjord.toml");
        std::fs::write(
            &path,
            "node_id = 2\ndata_dir = \"/tmp/x\"\n[initial_members]\n1 = \"127.0.0.1:7101\"\n2 = \"127.0.0.1:7102\"\n\
             [limits]\nmax_event_data_bytes = 2048\n[store]\npartitions = 8\n",
        )
        .unwrap();
        let config = load(Some(&path)).unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.initial_members.len(), 2);
        assert_eq!(config.limits.max_event_data_bytes, 2048);
        assert_eq!(config.limits.max_stream_name_bytes, 255);
        assert_eq!(config.store.partitions, 8);
    }

    #[test]
    fn unknown_keys_and_bad_limits_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fjord.toml");
        std::fs::write(&path, "[limits]\nmax_event_size = 1\n").unwrap();
        assert!(format!("{:#}", load(Some(&path)).unwrap_err()).contains("max_event_size"));
        std::fs::write(&path, "[limits]\nmax_stream_name_bytes = 1000\n").unwrap();
        assert!(format!("{:#}", load(Some(&path)).unwrap_err()).contains("max_stream_name_bytes"));
        assert!(load(Some(&dir.path().join("missing.toml"))).is_err());
    }
}
