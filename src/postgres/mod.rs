//! The Postgres wire protocol on its own port: psql, drivers (psycopg, JDBC, Go's pgx) and BI tools query
//! the node's SQL engine as if it were a Postgres server, through the simple and the extended query
//! protocols. The password is a token of the region (any user name), which decides the streams a query
//! sees, as over gRPC and Flight SQL.
//!
//! What each part owns: [`guard`] the connection (framing limits, plaintext), [`session`] the login and
//! the session's settings (`SET fjord.wait_for`, transactions), [`statements`] running statements and
//! binding parameters, [`encode`] answers and errors as Postgres sends them.

mod encode;
mod guard;
mod session;
mod statements;

use std::sync::Arc;

use fjord_query::QueryEngine;
use pgwire::api::PgWireServerHandlers;
use pgwire::api::auth::StartupHandler;
use pgwire::api::query::ExtendedQueryHandler;
use pgwire::api::query::SimpleQueryHandler;
use serde::Deserialize;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::security::tokens::TokenKey;
use session::TokenLogin;
use statements::Statements;

/// The Postgres endpoint's settings (`[postgres]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresLimits {
    /// Connections served at once; one more is refused with SQLSTATE 53300 (too many connections).
    pub max_connections: usize,
    /// The largest message a client may send (a query, a bind with its parameters), bytes; a larger one
    /// closes the connection with SQLSTATE 54000 before it is buffered.
    pub max_message_bytes: usize,
}

impl Default for PostgresLimits {
    fn default() -> Self {
        PostgresLimits { max_connections: 256, max_message_bytes: 1024 * 1024 }
    }
}

/// What every connection is served with: the login (tokens) and the statements (the engine).
struct Handlers {
    login: Arc<TokenLogin>,
    statements: Arc<Statements>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.statements.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.statements.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.login.clone()
    }
}

/// Connections over the limit being told so at once; more are closed without a word.
const MAX_REFUSALS: usize = 64;

/// Serves the Postgres wire protocol on `listener` until `stop` says so.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<QueryEngine>,
    key: Arc<TokenKey>,
    region: String,
    limits: PostgresLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let handlers = Arc::new(Handlers {
        login: Arc::new(TokenLogin::new(key)),
        statements: Arc::new(Statements::new(engine, region)),
    });
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let mut stopped = std::pin::pin!(async move {
        let _ = stop.wait_for(|stop| *stop).await;
    });
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stopped => return Ok(()),
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(%error, "postgres: accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Told why, while few wait to be told; past that, closed at once.
            if let Ok(telling) = refusals.clone().try_acquire_owned() {
                let max_connections = limits.max_connections;
                tokio::spawn(async move {
                    guard::refuse(socket, max_connections).await;
                    drop(telling);
                });
            }
            continue;
        };
        let (handlers, max_message_bytes) = (handlers.clone(), limits.max_message_bytes);
        tokio::spawn(async move {
            if let Err(error) = guard::serve_connection(socket, handlers, max_message_bytes).await {
                tracing::debug!(%error, %peer, "postgres: connection ended");
            }
            drop(permit);
        });
    }
}
