//! `fjord dev`: a 3-node region on 127.0.0.1 in one process, each node with its own data dir under
//! `./data`, with auth on: a throwaway CA, node certificates and an admin token in `./data/security`
//! (made on the first run). Appends a small order workload through the real gRPC API (to a follower as often as to a
//! leader: nodes forward), shows a retry and a conflict, reads back, prints where to connect, and stays
//! up until Ctrl-C. A second run keeps the data and appends more.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context;
use fjord_proto::auth::BearerToken;
use fjord_proto::v1;
use fjord_proto::v1::event_store_client::EventStoreClient;
use fjord_proto::v1::query_client::QueryClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::DevArgs;
use crate::node::Node;
use crate::node::NodeConfig;
use crate::pb;
use crate::security::certs::SecurityDir;

/// A client of the dev region, presenting the admin token.
type DevClient = EventStoreClient<InterceptedService<Channel, BearerToken>>;
/// The dev region's name.
const REGION: &str = "dev";
/// How far above its public port each node's node-to-node port is: the public ports are the given one and
/// the next two, the node-to-node ports the three after.
const INTERNAL_PORT_OFFSET: u16 = 3;
/// How far above its public port each node's Postgres port is: the three after the node-to-node ports.
const POSTGRES_PORT_OFFSET: u16 = 6;

/// Runs the dev region until Ctrl-C.
pub async fn run(base: NodeConfig, args: DevArgs) -> anyhow::Result<()> {
    let address = |id: u64, offset: u16| SocketAddr::from(([127, 0, 0, 1], args.port + offset + id as u16 - 1));
    let addresses: BTreeMap<u64, SocketAddr> = (1..=3u64).map(|id| (id, address(id, 0))).collect();
    let members: BTreeMap<u64, String> =
        (1..=3u64).map(|id| (id, address(id, INTERNAL_PORT_OFFSET).to_string())).collect();
    let security = SecurityDir::new(args.data_dir.join("security"));
    security.ensure(REGION, &[1, 2, 3]).with_context(|| format!("making {}", security.path().display()))?;
    let token = std::fs::read_to_string(security.admin_token())?.trim().to_owned();
    let mut nodes = Vec::new();
    for (&id, &listen) in &addresses {
        let mut config = base.clone();
        config.node_id = id;
        config.listen = listen;
        config.internal_listen = address(id, INTERNAL_PORT_OFFSET);
        config.postgres_listen = address(id, POSTGRES_PORT_OFFSET);
        config.region = REGION.to_owned();
        config.data_dir = args.data_dir.join(format!("node-{id}"));
        config.security_dir = security.path().to_owned();
        config.initial_members = members.clone();
        if let Some(partitions) = args.partitions {
            config.store.partitions = partitions;
        }
        nodes.push(Node::start(&config).await.with_context(|| format!("starting node {id}"))?);
    }
    println!(
        "fjord dev: region \"{REGION}\" of 3 nodes, {} partitions, data under {}",
        base.store.partitions,
        args.data_dir.display()
    );
    let mut clients = Vec::new();
    let bearer = BearerToken::new(&token).map_err(|status| anyhow::anyhow!("{}", status.message()))?;
    for node in &nodes {
        let channel = Channel::from_shared(format!("http://{}", node.address()))?.connect().await?;
        clients.push(EventStoreClient::new(InterceptedService::new(channel, bearer.clone())));
    }
    workload(&mut clients).await?;
    sample_view(&addresses, &bearer).await?;
    println!("connect to any node: {}", addresses.values().map(ToString::to_string).collect::<Vec<_>>().join(", "));
    println!("auth is on; the admin token (every operation, every stream) is in {}:", security.admin_token().display());
    println!("  export FJORD_TOKEN={token}");
    println!("  fjord status --server {}", addresses[&1]);
    println!("  fjord append --server {} order-1001 ItemAdded '{{\"sku\":\"tent\"}}'", addresses[&2]);
    println!("  fjord read --server {} order-1001", addresses[&3]);
    println!("  fjord sql --server {} \"SELECT type, count(*) FROM events GROUP BY type\"", addresses[&2]);
    println!(
        "  fjord views --server {}   (the materialized views, and progress bars for those being built)",
        addresses[&1]
    );
    let postgres = address(3, POSTGRES_PORT_OFFSET);
    println!(
        "  PGPASSWORD=\"$FJORD_TOKEN\" psql -h {} -p {} -U analyst -d fjord -c \"SELECT type, count(*) FROM events GROUP BY type\"",
        postgres.ip(),
        postgres.port()
    );
    println!(
        "  PGPASSWORD=\"$FJORD_TOKEN\" psql -h {} -p {} -U analyst -d fjord -c \"SELECT * FROM {SAMPLE_VIEW} ORDER BY order_id\"",
        postgres.ip(),
        postgres.port()
    );
    println!(
        "  (Postgres wire on {}; Arrow Flight SQL on every node's gRPC address)",
        (1..=3).map(|id| address(id, POSTGRES_PORT_OFFSET).to_string()).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  fjord token --dir {} --subject reader --grant read:order-   (a token that may only read orders)",
        security.path().display()
    );
    println!("  grpcurl -plaintext -H \"authorization: Bearer $FJORD_TOKEN\" {} list", addresses[&1]);
    println!("node logs: {}", args.data_dir.join("dev.log").display());
    // Caught before "ready" is printed: whoever reads it may press Ctrl-C at once.
    let stop = crate::server::StopSignal::listen()?;
    println!("ready; press Ctrl-C to stop");
    stop.wait().await;
    println!("stopping");
    for node in nodes {
        node.stop().await?;
    }
    Ok(())
}

/// The materialized view `fjord dev` defines over its workload.
const SAMPLE_VIEW: &str = "order_status";

/// Defines [`SAMPLE_VIEW`] (each order's latest event, its events and items) through the first node's
/// `Query` service, unless an earlier run did, and waits (a few seconds at most) until every node serves it.
async fn sample_view(addresses: &BTreeMap<u64, SocketAddr>, bearer: &BearerToken) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for address in addresses.values() {
        let channel = Channel::from_shared(format!("http://{address}"))?.connect().await?;
        clients.push(QueryClient::new(InterceptedService::new(channel, bearer.clone())));
    }
    let sql = format!(
        "CREATE MATERIALIZED VIEW {SAMPLE_VIEW} AS SELECT stream AS order_id, \
         last_value(type ORDER BY \"offset\") AS status, count(*) AS events, \
         sum(json_get_int(data, 'quantity')) AS items FROM events WHERE stream LIKE 'order-%' GROUP BY stream"
    );
    match clients[0].sql(v1::SqlRequest { sql, wait_for: None, max_staleness_ms: 0 }).await {
        Ok(_) => println!("defined the materialized view {SAMPLE_VIEW}: each order's status, folded as events commit"),
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            println!("the materialized view {SAMPLE_VIEW} (defined by an earlier run) folds on")
        }
        Err(status) => return Err(failed(status)),
    }
    // Where the first node stands, holding the definition: every node waits for that before it reads.
    let standing = v1::SqlRequest { sql: "SELECT 1".to_owned(), wait_for: None, max_staleness_ms: 0 };
    let mut answer = clients[0].sql(standing).await.map_err(failed)?.into_inner();
    let freshness = answer.message().await.map_err(failed)?.and_then(|message| message.freshness);
    let wait_for = freshness.map(|freshness| v1::ConsistencyToken {
        region: REGION.to_owned(),
        partition_offsets: freshness.applied_offsets,
    });
    let read = format!("SELECT count(*) FROM {SAMPLE_VIEW}");
    for client in &mut clients {
        let request = v1::SqlRequest { sql: read.clone(), wait_for: wait_for.clone(), max_staleness_ms: 0 };
        let mut answer = client.sql(request).await.map_err(failed)?.into_inner();
        while answer.message().await.map_err(failed)?.is_some() {}
    }
    Ok(())
}

async fn workload(clients: &mut [DevClient]) -> anyhow::Result<()> {
    let orders = ["order-1001", "order-1002", "order-1003"];
    let mut firsts = Vec::new();
    for (n, stream) in orders.iter().enumerate() {
        let request = sample_order(stream, n);
        // Each order goes to a different node: followers forward to the partition's leader.
        let client = &mut clients[n % clients.len()];
        let response = client.append(request.clone()).await.map_err(failed)?.into_inner();
        println!("appended 3 events to {stream} via node {}: {}", n + 1, describe(&response));
        firsts.push(request);
    }
    let retry = clients[1].append(firsts[0].clone()).await.map_err(failed)?.into_inner();
    println!("retried the first append with the same event ids: {}", describe(&retry));
    let conflict = v1::AppendRequest {
        stream: orders[0].to_owned(),
        expected: Some(v1::ExpectedRevision { kind: Some(v1::expected_revision::Kind::NoStream(v1::Empty {})) }),
        events: vec![v1::ProposedEvent {
            r#type: "OrderPlaced".to_owned(),
            data: b"{}".to_vec(),
            ..Default::default()
        }],
    };
    match clients[2].append(conflict).await {
        Ok(_) => println!("unexpected: a conflicting append succeeded"),
        Err(status) => {
            println!(
                "a conflicting append was refused ({}): {}",
                pb::reason_of(&status).unwrap_or("?"),
                status.message()
            )
        }
    }
    for (n, stream) in orders.iter().enumerate() {
        let request = v1::ReadStreamRequest { stream: (*stream).to_owned(), ..Default::default() };
        let mut pages = clients[(n + 1) % clients.len()].read_stream(request).await.map_err(failed)?.into_inner();
        let mut events = Vec::new();
        while let Some(page) = pages.message().await.map_err(failed)? {
            events.extend(page.events);
        }
        println!("read back {stream} ({} events):", events.len());
        for event in events.iter().rev().take(3).rev() {
            let position = event.position.unwrap_or_default();
            println!(
                "  rev {:>3}  partition {}  offset {:>5}  {:<13} {}",
                position.revision,
                position.partition,
                position.offset,
                event.r#type,
                String::from_utf8_lossy(&event.data)
            );
        }
    }
    Ok(())
}

fn sample_order(stream: &str, n: usize) -> v1::AppendRequest {
    let sku = ["fjord-mug", "kayak-paddle", "wool-socks"][n % 3];
    let event = |event_type: &str, data: String| v1::ProposedEvent {
        id: uuid::Uuid::now_v7().as_bytes().to_vec(),
        r#type: event_type.to_owned(),
        content_type: String::new(),
        data: data.into_bytes(),
        metadata: [("source".to_owned(), "fjord-dev".to_owned())].into(),
    };
    v1::AppendRequest {
        stream: stream.to_owned(),
        expected: None,
        events: vec![
            event("OrderPlaced", format!(r#"{{"customer":"c-{n}","currency":"NOK"}}"#)),
            event("ItemAdded", format!(r#"{{"sku":"{sku}","quantity":{}}}"#, n + 1)),
            event("OrderShipped", r#"{"carrier":"posten"}"#.to_owned()),
        ],
    }
}

fn describe(response: &v1::AppendResponse) -> String {
    let first = response.positions.first().copied().unwrap_or_default();
    let last = response.positions.last().copied().unwrap_or_default();
    format!(
        "partition {} offsets {}..={}, revisions {}..={}{}",
        first.partition,
        first.offset,
        last.offset,
        first.revision,
        last.revision,
        if response.deduplicated { " (deduplicated: nothing written)" } else { "" }
    )
}

fn failed(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", pb::reason_of(&status).unwrap_or("UNKNOWN"), status.message())
}
