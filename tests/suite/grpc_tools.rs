//! What gRPC tools rely on, asked as they ask it: server reflection in both versions (grpcurl asks v1 and
//! falls back to v1alpha; Postman, evans and Python's grpcio-reflection ask v1alpha) lists every public
//! service and describes its files, and the standard health service reports the event store serving.

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1;
use tonic_reflection::pb::v1alpha;

use crate::common::TestRegion;
use crate::common::channel;

const PUBLIC_SERVICES: [&str; 2] = ["fjord.v1.EventStore", "fjord.v1.Cluster"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_in_both_versions_and_health_answer_like_grpcurl_expects() {
    let region = TestRegion::start(1, 1).await;
    let channel = channel(&region.nodes[0].address).await;

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

    let mut health = HealthClient::new(channel);
    let check = HealthCheckRequest { service: "fjord.v1.EventStore".to_owned() };
    assert_eq!(health.check(check).await.unwrap().into_inner().status, ServingStatus::Serving as i32);
}
