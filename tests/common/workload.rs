//! The clients of a fault run, each recording every operation in a shared [`History`]:
//! - writers append pairs of events to their own streams, retrying each append with the same ids (moving
//!   between nodes) until it is acknowledged;
//! - contenders race in rounds on one stream: each reads the stream's length, then all append at once
//!   expecting exactly that revision, so every round has one rightful winner;
//! - a reader reads how long the writers' streams are, linearizably, through the nodes in turn.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use fjord_proto::auth::BearerToken;
use fjord_proto::v1::Empty;
use fjord_proto::v1::event_store_client::EventStoreClient;
use fjord_proto::v1::expected_revision::Kind;
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use super::StoreClient;
use super::append;
use super::channel;
use super::history::AppendOp;
use super::history::History;
use super::history::Outcome;
use super::history::ReadOp;
use super::stream_length;

/// The nodes the clients take turns on (public addresses), and the token they present.
#[derive(Clone)]
pub(crate) struct Nodes {
    /// The nodes' public addresses.
    pub(crate) addresses: Vec<String>,
    /// A token that may append and read the clients' streams.
    pub(crate) token: BearerToken,
}

impl Nodes {
    /// The address of the node whose turn `turn` is.
    fn address(&self, turn: usize) -> &str {
        &self.addresses[turn % self.addresses.len()]
    }

    /// A client of the node at `address`.
    async fn store(&self, address: &str) -> StoreClient {
        EventStoreClient::new(channel(address, &self.token).await)
    }
}

/// How long a client waits for any answer before counting the outcome unknown.
const PATIENCE: Duration = Duration::from_secs(10);
/// The stream the contenders race on.
pub(crate) const CONTENDED_STREAM: &str = "contended";

/// Running clients.
pub(crate) struct Workload {
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts `writers` writers, `contenders` contenders and one reader against `nodes`.
    pub(crate) fn start(nodes: &Nodes, writers: usize, contenders: usize) -> Workload {
        let (history, stop) = (Arc::new(History::default()), Arc::new(AtomicBool::new(false)));
        let mut clients = Vec::new();
        for client in 0..writers {
            clients.push(tokio::spawn(writer(client, nodes.clone(), history.clone(), stop.clone())));
        }
        let round = Arc::new(Rounds { barrier: Barrier::new(contenders.max(1)), quit: AtomicBool::new(false) });
        for contender in 0..contenders {
            let client = writers + contender;
            let task = contend(client, nodes.clone(), round.clone(), history.clone(), stop.clone());
            clients.push(tokio::spawn(task));
        }
        clients.push(tokio::spawn(reader(writers + contenders, writers, nodes.clone(), history.clone(), stop.clone())));
        Workload { history, stop, clients }
    }

    /// What the clients have done so far.
    pub(crate) fn history(&self) -> &Arc<History> {
        &self.history
    }

    /// Stops the clients (each finishes the operation it is in, retrying until acknowledged) and returns the
    /// history.
    pub(crate) async fn stop(self) -> Arc<History> {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        self.history
    }
}

/// One append attempt through `address`, recorded.
async fn attempt(
    client: usize,
    nodes: &Nodes,
    address: &str,
    stream: &str,
    expected: Option<(Kind, u64)>,
    ids: &[u128],
    history: &History,
) -> Outcome {
    let mut store = nodes.store(address).await;
    let invoked = Instant::now();
    let request = append(stream, expected.map(|(kind, _)| kind), ids);
    let outcome = match tokio::time::timeout(PATIENCE, store.append(request)).await {
        Ok(result) => Outcome::of(&result),
        Err(_) => Outcome::Unknown("no answer in time".to_owned()),
    };
    history.append(AppendOp {
        client,
        stream: stream.to_owned(),
        ids: ids.to_vec(),
        expected_exact: expected.map(|(_, revision)| revision),
        invoked,
        completed: Instant::now(),
        outcome: outcome.clone(),
    });
    outcome
}

/// Appends pairs of events to its own stream until told to stop, each retried with the same ids until
/// acknowledged.
async fn writer(client: usize, nodes: Nodes, history: Arc<History>, stop: Arc<AtomicBool>) {
    let stream = format!("writer-{client}");
    let (mut turn, mut seq) = (client, 0u128);
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let ids = [((client as u128) << 64) | (seq << 1), ((client as u128) << 64) | (seq << 1) | 1];
        loop {
            let address = nodes.address(turn);
            if matches!(attempt(client, &nodes, address, &stream, None, &ids, &history).await, Outcome::Ok(_)) {
                break;
            }
            turn += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The contenders' rounds: all start each round together, and all agree whether there is one.
struct Rounds {
    barrier: Barrier,
    quit: AtomicBool,
}

impl Rounds {
    /// Waits for every contender; `false` (for all of them alike) once `stop` is set.
    async fn next(&self, stop: &AtomicBool) -> bool {
        // One contender decides between two barriers; nobody can reach the next decision before every
        // contender has read this one.
        if self.barrier.wait().await.is_leader() {
            self.quit.store(stop.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.barrier.wait().await;
        !self.quit.load(Ordering::Relaxed)
    }
}

/// Races the other contenders for each next revision of [`CONTENDED_STREAM`], never retrying (a retry
/// of an `exact` append that may have won would be refused as a loser, which is right but says nothing).
async fn contend(client: usize, nodes: Nodes, round: Arc<Rounds>, history: Arc<History>, stop: Arc<AtomicBool>) {
    let mut seq = 0u128;
    let mut turn = client;
    loop {
        let address = nodes.address(turn);
        turn += 1;
        let mut store = nodes.store(address).await;
        let length = match tokio::time::timeout(PATIENCE, stream_length(&mut store, CONTENDED_STREAM)).await {
            Ok(Ok(length)) => Some(length),
            _ => None,
        };
        if !round.next(&stop).await {
            return;
        }
        let Some(length) = length else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seq += 1;
        let id = (1u128 << 127) | ((client as u128) << 64) | seq;
        let kind = if length == 0 { Kind::NoStream(Empty {}) } else { Kind::Exact(length - 1) };
        attempt(client, &nodes, address, CONTENDED_STREAM, Some((kind, length)), &[id], &history).await;
    }
}

/// Reads the lengths of the writers' streams linearizably through the nodes in turn, recording what each read saw.
async fn reader(client: usize, writers: usize, nodes: Nodes, history: Arc<History>, stop: Arc<AtomicBool>) {
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) && writers > 0 {
        turn += 1;
        let stream = format!("writer-{}", turn % writers);
        let mut store = nodes.store(nodes.address(turn)).await;
        let invoked = Instant::now();
        if let Ok(Ok(events)) = tokio::time::timeout(PATIENCE, stream_length(&mut store, &stream)).await {
            history.read(ReadOp { client, stream, invoked, completed: Instant::now(), events });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
