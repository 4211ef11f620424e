//! The command-line client: `fjord append`, `fjord read`, `fjord status` against a running region.
//! Readable tables by default, `--json` for scripts.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use fjord_client::ClientOptions;
use fjord_client::EventData;
use fjord_client::Expected;
use fjord_proto::auth::BearerToken;
use fjord_proto::v1;
use fjord_proto::v1::cluster_client::ClusterClient;
use fjord_proto::v1::event_store_client::EventStoreClient;
use fjord_query::ConsistencyToken;
use serde_json::json;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::pb;

/// Flags every client subcommand shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// A node of the region, `host:port`.
    #[arg(long, global = true, env = "FJORD_SERVER", default_value = "127.0.0.1:7101")]
    pub server: String,
    /// A bearer token that grants what the command does (`fjord dev` prints one; `fjord token` issues them).
    #[arg(long, global = true, env = "FJORD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token (kept out of the process list), e.g. a security dir's `admin.token`.
    #[arg(long, global = true, env = "FJORD_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<std::path::PathBuf>,
    /// Seconds to wait for the server, connecting and for each answer.
    #[arg(long, global = true, env = "FJORD_TIMEOUT", default_value_t = 30)]
    pub timeout_secs: u64,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A channel to a node that presents the client's token with every request.
pub(crate) type AuthorizedChannel = InterceptedService<Channel, BearerToken>;

impl ClientArgs {
    /// The token the flags give, from `--token`, `--token-file` or the environment.
    pub fn token(&self) -> anyhow::Result<String> {
        Ok(match (&self.token, &self.token_file) {
            (Some(token), _) => token.clone(),
            (None, Some(file)) => {
                std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?.trim().to_owned()
            }
            (None, None) => anyhow::bail!(
                "no token: pass --token or --token-file, or set FJORD_TOKEN (`fjord dev` prints one; `fjord token` issues them)"
            ),
        })
    }

    /// A `fjord-client` of `--server` and `also` (more nodes to go on with), retrying for `--timeout-secs`.
    pub fn fjord_client(&self, also: &[String]) -> anyhow::Result<fjord_client::Client> {
        let token = self.token()?;
        let nodes = std::iter::once(self.server.clone()).chain(also.iter().cloned());
        let timeout = Duration::from_secs(self.timeout_secs);
        let options = ClientOptions { retry_for: timeout, attempt_timeout: timeout, ..ClientOptions::default() };
        Ok(fjord_client::Client::with_options(nodes, Some(&token), options)?)
    }

    /// A channel to `--server` that presents the token.
    pub(crate) async fn channel(&self) -> anyhow::Result<AuthorizedChannel> {
        let token = self.token()?;
        let token = BearerToken::new(&token).map_err(|status| anyhow::anyhow!("the token: {}", status.message()))?;
        let timeout = Duration::from_secs(self.timeout_secs);
        let endpoint = Channel::from_shared(format!("http://{}", self.server))
            .with_context(|| format!("{} is not host:port", self.server))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = endpoint.connect().await.with_context(|| format!("connecting to {}", self.server))?;
        Ok(InterceptedService::new(channel, token))
    }
}

/// Flags of `fjord append`.
#[derive(Debug, clap::Args)]
pub struct AppendArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The stream.
    stream: String,
    /// The event type.
    event_type: String,
    /// The event data, as `--content-type` says.
    data: String,
    /// The data's media type; `application/json` (the default) is checked to be JSON before it is sent.
    #[arg(long, default_value = JSON)]
    content_type: String,
    /// Expected revision: `any`, `no-stream`, `exists`, or a number.
    #[arg(long, default_value = "any")]
    expected: String,
}

/// The media type of JSON data.
const JSON: &str = "application/json";

/// Flags of `fjord read`.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The stream to read.
    stream: String,
    /// The first revision to read.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// The most events to read (0: all).
    #[arg(long, default_value_t = 0)]
    limit: u64,
    /// Serve from the contacted node's applied state instead of through the leader.
    #[arg(long)]
    local: bool,
}

/// Flags of `fjord status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    client: ClientArgs,
}

/// `text` safe to print on a terminal: control characters (escape sequences above all) shown escaped.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect::<String>()
        .into()
}

/// A status as the command line reports it: its reason, then its message.
pub(crate) fn failed(status: tonic::Status) -> anyhow::Error {
    let reason = pb::reason_of(&status).unwrap_or("UNKNOWN").to_owned();
    anyhow::anyhow!("{reason}: {}", status.message())
}

/// A `fjord-client` failure as the CLI says every failure: the reason, then the message (and the node).
pub fn client_failed(error: fjord_client::ClientError) -> anyhow::Error {
    match error {
        fjord_client::ClientError::Failed { node, code, reason, status, .. } => {
            let reason = reason.unwrap_or_else(|| format!("{code:?}"));
            anyhow::anyhow!("{reason}: {} (from {node})", status.message())
        }
        other => other.into(),
    }
}

impl AppendArgs {
    /// Appends the event and prints where it landed. Through `fjord-client`: the event gets its id before
    /// the first attempt, and a transient failure (no leader yet, a timeout) is retried with that id until
    /// `--timeout-secs`, so a retried append is stored once.
    pub async fn run(self) -> anyhow::Result<()> {
        let expected = match self.expected.as_str() {
            "any" => Expected::Any,
            "no-stream" => Expected::NoStream,
            "exists" => Expected::StreamExists,
            number => Expected::Exact(
                number.parse().with_context(|| format!("--expected {number:?}: any, no-stream, exists or a number"))?,
            ),
        };
        if self.content_type == JSON {
            serde_json::from_str::<serde_json::Value>(&self.data).with_context(|| {
                format!("the data is not JSON (say --content-type if it is something else): {}", printable(&self.data))
            })?;
        }
        let event = EventData {
            id: None,
            event_type: self.event_type,
            content_type: self.content_type,
            data: self.data.into_bytes(),
            metadata: Default::default(),
        };
        let client = self.client.fjord_client(&[])?;
        let response = client.append(&self.stream, expected, vec![event]).await.map_err(client_failed)?;
        let position = response.positions.first().copied().unwrap_or_default();
        // Read your writes: a query carrying this text waits until its node has applied this append.
        let token = response.token.map(|token| {
            ConsistencyToken { region: token.region, offsets: token.partition_offsets.into_iter().collect() }
                .to_string()
        });
        let mut out = std::io::stdout().lock();
        if self.client.json {
            let line = json!({"stream": self.stream, "partition": position.partition, "offset": position.offset,
                "revision": response.revision, "commit_time_micros": response.commit_time_micros,
                "consistency_token": token});
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "appended to {} at revision {} (partition {}, offset {})",
                printable(&self.stream),
                response.revision,
                position.partition,
                position.offset
            )?;
            if let Some(token) = token {
                writeln!(out, "consistency token: {token}   (fjord sql --wait-for, SET fjord.wait_for over psql)")?;
            }
        }
        Ok(())
    }
}

impl ReadArgs {
    /// Reads the stream and prints its events.
    pub async fn run(self) -> anyhow::Result<()> {
        let consistency =
            if self.local { v1::ReadConsistency::Local } else { v1::ReadConsistency::Linearizable } as i32;
        let request = v1::ReadStreamRequest {
            stream: self.stream.clone(),
            from_revision: self.from,
            backward: false,
            limit: self.limit,
            consistency,
        };
        let mut client = EventStoreClient::new(self.client.channel().await?);
        let mut stream = client.read_stream(request).await.map_err(failed)?.into_inner();
        let mut out = std::io::stdout().lock();
        if !self.client.json {
            writeln!(out, "{:>8}  {:>9}  {:>10}  {:<20}  data", "revision", "partition", "offset", "type")?;
        }
        while let Some(page) = stream.message().await.map_err(failed)? {
            for event in page.events {
                let position = event.position.unwrap_or_default();
                let data = String::from_utf8_lossy(&event.data);
                if self.client.json {
                    let line = json!({"stream": event.stream, "revision": position.revision, "partition": position.partition,
                        "offset": position.offset, "type": event.r#type, "data": data, "timestamp_micros": event.timestamp_micros});
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(
                        out,
                        "{:>8}  {:>9}  {:>10}  {:<20}  {}",
                        position.revision,
                        position.partition,
                        position.offset,
                        printable(&event.r#type),
                        printable(&data)
                    )?;
                }
            }
        }
        Ok(())
    }
}

impl StatusArgs {
    /// Prints the contacted node's view of the region.
    pub async fn run(self) -> anyhow::Result<()> {
        let mut client = ClusterClient::new(self.client.channel().await?);
        let status = client.status(v1::StatusRequest {}).await.map_err(failed)?.into_inner();
        let mut out = std::io::stdout().lock();
        if self.client.json {
            let members: Vec<_> =
                status.members.iter().map(|m| json!({"id": m.id, "address": m.address, "voter": m.voter})).collect();
            let partitions: Vec<_> = status
                .partitions
                .iter()
                .map(|p| json!({"partition": p.partition, "leader": p.leader, "term": p.term, "role": p.role,
                    "last_log_index": p.last_log_index, "applied_index": p.applied_index, "applied_offset": p.applied_offset,
                    "tail_epoch": p.tail_epoch, "sealed_offset": p.sealed_offset,
                    "sealed_chain_checksum": format!("{:08x}", p.sealed_chain_checksum)}))
                .collect();
            let line = json!({"node_id": status.node_id, "region": status.region, "cluster_id": status.cluster_id,
                "members": members, "partitions": partitions,
                "wal_syncs": status.wal_syncs, "wal_synced_log_appends": status.wal_synced_log_appends});
            writeln!(out, "{line}")?;
            return Ok(());
        }
        let cluster = if status.cluster_id.is_empty() { "(not known yet)" } else { status.cluster_id.as_str() };
        writeln!(
            out,
            "node {} of region {}, cluster {}",
            status.node_id,
            printable(&status.region),
            printable(cluster)
        )?;
        for member in &status.members {
            writeln!(
                out,
                "  member {:>3}  {:<22} {}",
                member.id,
                printable(&member.address),
                if member.voter { "voter" } else { "learner" }
            )?;
        }
        writeln!(
            out,
            "{:>9}  {:>6}  {:>5}  {:<9}  {:>9}  {:>9}  {:>10}  {:>5}  {:>10}  {:>8}",
            "partition", "leader", "term", "role", "log", "applied", "events", "epoch", "sealed", "chain"
        )?;
        for p in &status.partitions {
            writeln!(
                out,
                "{:>9}  {:>6}  {:>5}  {:<9}  {:>9}  {:>9}  {:>10}  {:>5}  {:>10}  {:08x}",
                p.partition,
                p.leader,
                p.term,
                p.role,
                p.last_log_index,
                p.applied_index,
                p.applied_offset,
                p.tail_epoch,
                p.sealed_offset,
                p.sealed_chain_checksum
            )?;
        }
        writeln!(
            out,
            "write-ahead log: {} syncs made {} Raft log appends durable since start",
            status.wal_syncs, status.wal_synced_log_appends
        )?;
        Ok(())
    }
}
