//! `fjord server`: one node, until SIGINT or SIGTERM — or until it finds its stored data damaged, when it
//! restarts itself into repair.

use std::time::Duration;

use anyhow::Context;

use crate::node::Node;
use crate::node::NodeConfig;

/// How long a node that found damage goes on before it restarts: the reads that found it have ended with
/// `DATA_LOSS` and their clients are told.
const RESTART_AFTER_DAMAGE: Duration = Duration::from_millis(500);

/// Runs one node until it is told to stop. A node that finds its stored data damaged while it runs (see
/// `fjord_raft::damage`) re-executes itself with the same arguments, as a crash and a restart would but at
/// once: the new run moves the damaged database aside and is repaired from its peers.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let stop = StopSignal::listen()?;
    let node = Node::start(&config).await?;
    println!("fjord node {} of region {} serving on {}", config.node_id, config.region, node.address());
    let mut damage = node.groups().damage().found();
    let found = tokio::select! {
        () = stop.wait() => None,
        found = damage.wait_for(Option::is_some) => found.ok().and_then(|found| found.clone()),
    };
    let Some(found) = found else { return node.stop().await };
    tracing::error!(%found, "restarting to repair damaged storage from the region's other nodes");
    tokio::time::sleep(RESTART_AFTER_DAMAGE).await;
    Err(restart())
}

/// Replaces this process with a new run of the same program and arguments; returns only if that fails.
fn restart() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let program = match std::env::current_exe().context("finding this program to restart it") {
        Ok(program) => program,
        Err(error) => return error,
    };
    let error = std::process::Command::new(&program).args(std::env::args_os().skip(1)).exec();
    anyhow::Error::new(error).context(format!("restarting {}", program.display()))
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
