//! `fjord server`: one node, until SIGINT or SIGTERM.

use crate::node::Node;
use crate::node::NodeConfig;

/// Runs one node until it is told to stop.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let node = Node::start(&config).await?;
    println!("fjord node {} of region {} serving on {}", config.node_id, config.region, node.address());
    wait_for_stop_signal().await?;
    node.stop().await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
