//! The trust boundary, tried as an attacker would: Raft traffic forged on the public port, on the
//! node-to-node port without a certificate, with a certificate of another CA, and with real node
//! certificates that claim to be another node or belong to no member (votes, appends, snapshot installs and
//! campaigns alike). Each is refused, and the region keeps
//! serving with its terms untouched. The public API refuses calls without a valid token.

use std::path::Path;

use fjord_proto::v1;
use fjord_proto::v1::cluster_client::ClusterClient;
use fjord_proto::v1::event_store_client::EventStoreClient;
use fjord_proto::v1::internal::CampaignRequest;
use fjord_proto::v1::internal::RaftMessage;
use fjord_proto::v1::internal::raft_transport_client::RaftTransportClient;
use fjord_raft::types::TypeConfig;
use openraft::SnapshotMeta;
use openraft::Vote;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::VoteRequest;
use tonic::Code;
use tonic::transport::Certificate;
use tonic::transport::Channel;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Identity;

use crate::common::TestRegion;
use crate::common::anonymous_channel;
use crate::common::append;
use crate::common::reason;
use crate::common::stream_ids;

/// A vote term no real election reaches: accepted, the node's next election would overflow.
const FORGED_TERM: u64 = u64::MAX;

fn vote_as(node: u64) -> Vec<u8> {
    postcard::to_allocvec(&VoteRequest::new(Vote::new(FORGED_TERM, node), None)).unwrap()
}

fn append_entries_as(node: u64) -> Vec<u8> {
    let request = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(FORGED_TERM, node),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    postcard::to_allocvec(&request).unwrap()
}

fn install_snapshot_as(node: u64) -> Vec<u8> {
    let request = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(FORGED_TERM, node),
        meta: SnapshotMeta { snapshot_id: "../../forged".to_owned(), ..SnapshotMeta::default() },
        offset: 0,
        data: b"FJSNAP02".to_vec(),
        done: true,
    };
    postcard::to_allocvec(&request).unwrap()
}

/// A TLS channel to a node-to-node address, trusting `ca`, presenting `identity` (none: no certificate),
/// expecting the server to be node `node` of region `test`.
fn tls_channel(address: &str, ca: &Path, identity: Option<(&Path, &Path)>, node: u64) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name(format!("node-{node}.test.fjord"));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap()));
    }
    Channel::from_shared(format!("https://{address}")).unwrap().tls_config(tls).unwrap().connect_lazy()
}

async fn send_vote(channel: Channel, node: u64) -> Result<(), tonic::Status> {
    let message = RaftMessage { group: 0, payload: vote_as(node) };
    RaftTransportClient::new(channel).vote(message).await.map(|_| ())
}

async fn send_append_entries(channel: Channel, node: u64) -> Result<(), tonic::Status> {
    let message = RaftMessage { group: 0, payload: append_entries_as(node) };
    RaftTransportClient::new(channel).append_entries(message).await.map(|_| ())
}

async fn send_install_snapshot(channel: Channel, node: u64) -> Result<(), tonic::Status> {
    let message = RaftMessage { group: 0, payload: install_snapshot_as(node) };
    RaftTransportClient::new(channel).install_snapshot(message).await.map(|_| ())
}

async fn send_campaign(channel: Channel) -> Result<(), tonic::Status> {
    RaftTransportClient::new(channel).campaign(CampaignRequest { group: 0 }).await.map(|_| ())
}

/// The highest term any node reports for any partition.
async fn highest_term(region: &TestRegion) -> u64 {
    let mut highest = 0;
    for node in &region.nodes {
        let status = node.cluster().await.status(v1::StatusRequest {}).await.unwrap().into_inner();
        highest = highest.max(status.partitions.iter().map(|p| p.term).max().unwrap_or(0));
    }
    highest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_raft_traffic_is_refused_and_the_region_keeps_serving() {
    let region = TestRegion::start(3, 1).await;
    let target = (region.nodes[0].address.clone(), region.nodes[0].internal_address.clone());
    let security = region.security_dir();
    let ca = security.join("ca.pem");
    let term_before = highest_term(&region).await;

    // The public port does not serve the Raft transport at all, nor campaigns.
    let refused = send_vote(anonymous_channel(&target.0), 1).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    let refused = send_campaign(anonymous_channel(&target.0)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    // The node-to-node port speaks only TLS.
    assert!(send_vote(anonymous_channel(&target.1), 1).await.is_err());
    assert!(send_campaign(anonymous_channel(&target.1)).await.is_err());
    // TLS without a client certificate: the handshake is refused.
    assert!(send_vote(tls_channel(&target.1, &ca, None, 1), 1).await.is_err());
    assert!(send_install_snapshot(tls_channel(&target.1, &ca, None, 1), 1).await.is_err());
    // A certificate for node 2 of region "test", from a CA of the attacker's own.
    let rogue = region.dir.path().join("rogue");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args(["certs", "--region", "test", "--nodes", "2", "--dir"])
        .arg(&rogue)
        .output()
        .unwrap();
    assert!(made.status.success());
    let rogue_identity = (rogue.join("node-2.pem"), rogue.join("node-2.key"));
    let forged = tls_channel(&target.1, &ca, Some((&rogue_identity.0, &rogue_identity.1)), 1);
    assert!(send_append_entries(forged.clone(), 2).await.is_err());
    assert!(send_install_snapshot(forged, 2).await.is_err());

    // Node 2's real certificate, claiming to be node 3.
    let member = (security.join("node-2.pem"), security.join("node-2.key"));
    let as_member = tls_channel(&target.1, &ca, Some((&member.0, &member.1)), 1);
    let refused = send_append_entries(as_member.clone(), 3).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("node 2 sent a Raft message as node 3"), "{refused:?}");
    let refused = send_install_snapshot(as_member.clone(), 3).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = send_vote(as_member, 3).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // A real certificate of the region's CA for node 9, which is no member: its votes are refused.
    region.make_node_certificate(9);
    let outsider = (security.join("node-9.pem"), security.join("node-9.key"));
    let as_outsider = tls_channel(&target.1, &ca, Some((&outsider.0, &outsider.1)), 1);
    let refused = send_vote(as_outsider.clone(), 9).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("node 9 is not a member of group 0"), "{refused:?}");
    let refused = send_campaign(as_outsider).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // Nothing took: the terms are where they were, and the region appends and reads as before.
    assert!(highest_term(&region).await < term_before + 5, "a forged term was taken");
    let mut client = region.nodes[1].store().await;
    client.append(append("after-forgery", None, &[1, 2])).await.unwrap();
    assert_eq!(stream_ids(&mut client, "after-forgery").await, vec![1, 2]);
    region.wait_for_leaders().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_api_needs_a_valid_token_and_changes_nothing_without_one() {
    let region = TestRegion::start(1, 1).await;
    let address = region.nodes[0].address.clone();
    let mut anonymous = EventStoreClient::new(anonymous_channel(&address));
    let refused = anonymous.append(append("no-token", None, &[1])).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(reason(&refused), "UNAUTHENTICATED");
    let refused = ClusterClient::new(anonymous_channel(&address))
        .remove_node(v1::NodeRequest { node_id: 1, groups: vec![] })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // A token signed with another key.
    let other = tempfile::tempdir().unwrap();
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args(["certs", "--region", "test", "--dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(made.status.success());
    let foreign = std::fs::read_to_string(other.path().join("admin.token")).unwrap();
    let channel =
        fjord_bench::launcher::channel(&address, &fjord_proto::auth::BearerToken::new(&foreign).unwrap()).await;
    let refused = EventStoreClient::new(channel).append(append("no-token", None, &[1])).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("signature"), "{refused:?}");

    let mut client = region.nodes[0].store().await;
    assert!(stream_ids(&mut client, "no-token").await.is_empty(), "a refused append wrote something");
}
