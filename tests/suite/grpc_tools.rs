//! What gRPC tools rely on, asked as they ask it: server reflection in both versions (grpcurl asks v1 and
//! falls back to v1alpha; Postman, evans and Python's grpcio-reflection ask v1alpha) lists every public
//! service and describes its files (never the node-to-node transport), and the standard health service
//! reports the event store serving once the node knows every partition's leader. Both answer anyone: no
//! token is sent here.

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1;
use tonic_reflection::pb::v1alpha;

use crate::common::TestRegion;
use crate::common::anonymous_channel;

const PUBLIC_SERVICES: [&str; 2] = ["fjord.v1.EventStore", "fjord.v1.Cluster"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_in_both_versions_and_health_answer_like_grpcurl_expects() {
    let region = TestRegion::start(1, 1).await;
    let channel = anonymous_channel(&region.nodes[0].address);

    let mut reflection = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let asks = [
        v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        v1::server_reflection_request::MessageRequest::FileContainingSymbol("fjord.v1.Cluster".to_owned()),
    ];
    let requests = asks.map(|ask| v1::ServerReflectionRequest { host: String::new(), message_request: Some(ask) });
    let mut answers = reflection.server_reflection_info(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(listed)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1 reflection did not list services");
    };
    let names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
    for service in PUBLIC_SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(names.iter().any(|n| n == service), "{service} is not listed: {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains("internal")), "the node-to-node transport is advertised: {names:?}");
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1 reflection did not describe fjord.v1.Cluster");
    };
    assert!(!files.file_descriptor_proto.is_empty());

    let mut legacy = v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let list = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut answers = legacy.server_reflection_info(tokio_stream::iter([list])).await.unwrap().into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(listed)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha reflection did not list services");
    };
    for service in PUBLIC_SERVICES {
        assert!(listed.service.iter().any(|s| s.name == service), "{service} is not listed by v1alpha");
    }

    // Ready: the region has a leader for every partition.
    assert_eq!(event_store_health(channel).await, ServingStatus::Serving);
}

/// What `grpc.health.v1` says of the event store, once it says anything (a node just started may not have
/// reported yet).
async fn event_store_health(channel: tonic::transport::Channel) -> ServingStatus {
    let mut health = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let check = HealthCheckRequest { service: "fjord.v1.EventStore".to_owned() };
        match health.check(check).await {
            Ok(answer) => return ServingStatus::try_from(answer.into_inner().status).unwrap(),
            Err(status) => assert!(tokio::time::Instant::now() < deadline, "no health answer: {status:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_knows_no_leader_is_not_ready() {
    let mut region = TestRegion::start(1, 1).await;
    // A node outside the region's membership: it serves, but no partition of it has a leader it knows.
    let address = region.spawn_extra_node(9).address.clone();
    assert_eq!(event_store_health(anonymous_channel(&address)).await, ServingStatus::NotServing);
}
