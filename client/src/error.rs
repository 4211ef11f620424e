//! [`ClientError`]: what a client call ends with when it does not succeed.

/// Why a call failed, after whatever retries it was worth.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client was given something it cannot use (no address, an address or token it cannot send).
    #[error("client configuration: {0}")]
    Config(String),
    /// A node answered with a failure: a refusal (returned at once), or a transient failure that lasted
    /// longer than the client retries. `reason` is the node's machine-readable reason, when it gave one.
    #[error("{operation} failed on {node}: {} ({code:?}{})", status.message(), reason.as_deref().map(|r| format!(", {r}")).unwrap_or_default())]
    Failed {
        /// What was being done: append, read, subscribe.
        operation: &'static str,
        /// The node that answered last.
        node: String,
        /// Its status code.
        code: tonic::Code,
        /// Its reason (`fjord-reason`), if it gave one.
        reason: Option<String>,
        /// The whole status.
        status: Box<tonic::Status>,
    },
}

impl ClientError {
    pub(crate) fn from_status(operation: &'static str, node: &str, status: tonic::Status) -> ClientError {
        ClientError::Failed {
            operation,
            node: node.to_owned(),
            code: status.code(),
            reason: crate::reason(&status).map(str::to_owned),
            status: Box::new(status),
        }
    }

    /// The gRPC code of a failure a node answered with.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Failed { code, .. } => Some(*code),
            ClientError::Config(_) => None,
        }
    }
}
