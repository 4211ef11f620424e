//! `fjord server`: one node, until SIGINT or SIGTERM.

use crate::node::Node;
use crate::node::NodeConfig;

/// Runs one node until it is told to stop.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let stop = StopSignal::listen()?;
    let node = Node::start(&config).await?;
    println!("fjord node {} of region {} serving on {}", config.node_id, config.region, node.address());
    stop.wait().await;
    node.stop().await
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from the moment [`StopSignal::listen`] returns: a signal that arrives
/// before anyone waits is kept, never left to its default action (which would kill the process mid-write).
pub struct StopSignal {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignal {
    /// Starts catching SIGINT and SIGTERM.
    pub fn listen() -> anyhow::Result<StopSignal> {
        use tokio::signal::unix::SignalKind;
        Ok(StopSignal {
            interrupt: tokio::signal::unix::signal(SignalKind::interrupt())?,
            terminate: tokio::signal::unix::signal(SignalKind::terminate())?,
        })
    }

    /// Resolves on the first SIGINT or SIGTERM since [`StopSignal::listen`].
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
