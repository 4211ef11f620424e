//! A 3-node region of real `fjord server` processes on loopback, driven through real gRPC clients.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use fjord_proto::v1;
use fjord_proto::v1::expected_revision::Kind;
use tokio::sync::Mutex;

use crate::common::TestRegion;
use crate::common::append;
use crate::common::read_stream;
use crate::common::reason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_and_reads_through_every_node() {
    let region = TestRegion::start(3, 4).await;
    let mut id = 1u128;
    for round in 0..4 {
        for node in &region.nodes {
            let stream = format!("order-{round}{}", node.id);
            let response = node.store().await.append(append(&stream, None, &[id, id + 1])).await.unwrap().into_inner();
            assert_eq!(response.positions.len(), 2);
            assert_eq!(response.revision, 1);
            let token = response.token.unwrap();
            assert_eq!(token.region, "test");
            id += 2;
        }
    }
    for node in &region.nodes {
        let mut client = node.store().await;
        for round in 0..4 {
            for writer in 1..=3 {
                let events = read_stream(&mut client, &format!("order-{round}{writer}")).await.unwrap();
                assert_eq!(events.iter().map(|e| e.position.unwrap().revision).collect::<Vec<_>>(), vec![0, 1]);
            }
        }
        let head = client
            .get_stream(v1::GetStreamRequest { stream: "order-01".to_owned(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(head.exists);
        assert_eq!(head.revision, 1);
    }
    region.assert_replicas_identical().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_reach_the_client_and_write_nothing() {
    let region = TestRegion::start(3, 2).await;
    let mut client = region.nodes[1].store().await;
    let big = |bytes: usize| {
        let mut request = append("s-1", None, &[1]);
        request.events[0].data = vec![b'x'; bytes];
        request
    };
    let mut cases: Vec<(&str, v1::AppendRequest)> = vec![
        ("empty stream name", append("", None, &[1])),
        ("stream name too long", append(&"s".repeat(256), None, &[1])),
        ("whitespace in stream name", append("order 1", None, &[1])),
        ("no events", append("s-1", None, &[])),
        ("duplicate ids", append("s-1", None, &[5, 5])),
        ("event data over 1 MiB", big(1024 * 1024 + 1)),
    ];
    let mut no_type = append("s-1", None, &[1]);
    no_type.events[0].r#type = String::new();
    cases.push(("empty type", no_type));
    let mut bad_id = append("s-1", None, &[1]);
    bad_id.events[0].id = vec![1, 2, 3];
    cases.push(("id not 16 bytes", bad_id));
    let mut metadata = append("s-1", None, &[1]);
    metadata.events[0].metadata.insert("k".to_owned(), "v".repeat(64 * 1024));
    cases.push(("metadata over 64 KiB", metadata));
    let mut too_much = append("s-1", None, &[1, 2, 3, 4, 5]);
    for event in &mut too_much.events {
        event.data = vec![b'x'; 1024 * 1024];
    }
    cases.push(("append over 4 MiB", too_much));
    for (what, request) in cases {
        let status = client.append(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(reason(&status), "INVALID_ARGUMENT", "{what}");
    }
    for node in &region.nodes {
        for partition in 0..2 {
            assert!(region.local_partition(node.id, partition).await.is_empty(), "node {} wrote something", node.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expected_revision_is_failed_precondition_with_the_current_revision() {
    let region = TestRegion::start(3, 2).await;
    let mut client = region.nodes[0].store().await;
    client.append(append("s-1", Some(Kind::NoStream(v1::Empty {})), &[1, 2, 3])).await.unwrap();
    let status = client.append(append("s-1", Some(Kind::Exact(0)), &[4])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&status), "WRONG_EXPECTED_REVISION");
    assert_eq!(status.metadata().get("fjord-current-revision").unwrap(), "2");
    assert!(status.message().contains("stream s-1 is at revision 2, expected revision 0"), "{}", status.message());
    let reused = client.append(append("s-1", None, &[1])).await.map(|r| r.into_inner().deduplicated);
    assert!(reused.unwrap(), "the same id with the same content is a retry");
    let mut changed = append("s-1", None, &[1]);
    changed.events[0].data = b"{\"other\":1}".to_vec();
    let status = client.append(changed).await.unwrap_err();
    assert_eq!(reason(&status), "EVENT_ID_REUSED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_contention_exactly_one_writer_wins_each_revision() {
    let region = TestRegion::start(3, 2).await;
    let wins: Arc<Mutex<BTreeMap<u64, u128>>> = Arc::default();
    let revisions = 15u64;
    let mut writers = Vec::new();
    for writer in 0..6u128 {
        let node = &region.nodes[(writer % 3) as usize];
        let mut client = node.store().await;
        let wins = wins.clone();
        writers.push(tokio::spawn(async move {
            for revision in 0..revisions {
                let id = (writer << 64) | (u128::from(revision) + 1);
                let expected = if revision == 0 { Kind::NoStream(v1::Empty {}) } else { Kind::Exact(revision - 1) };
                match client.append(append("contended-1", Some(expected), &[id])).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        assert_eq!(response.revision, revision);
                        assert!(wins.lock().await.insert(revision, id).is_none(), "two winners at {revision}");
                    }
                    Err(status) => assert_eq!(reason(&status), "WRONG_EXPECTED_REVISION", "{status:?}"),
                }
                // Everyone moves on once someone has won this revision.
                while !wins.lock().await.contains_key(&revision) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let wins = wins.lock().await.clone();
    assert_eq!(wins.keys().copied().collect::<Vec<_>>(), (0..revisions).collect::<Vec<_>>());
    let events = read_stream(&mut region.nodes[2].store().await, "contended-1").await.unwrap();
    let stored: Vec<u128> = events.iter().map(|e| uuid::Uuid::from_slice(&e.id).unwrap().as_u128()).collect();
    assert_eq!(stored, wins.values().copied().collect::<Vec<_>>());
    let distinct: BTreeSet<_> = stored.iter().collect();
    assert_eq!(distinct.len(), stored.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_before_they_are_converted_and_write_nothing() {
    let region = TestRegion::start(3, 1).await;
    let mut client = region.nodes[1].store().await;

    // Metadata counts toward the per-append total: 100 events of 1 KiB data and 40 KiB metadata (4.2 MB).
    let mut heavy = append("s-1", None, &(1..=100).collect::<Vec<_>>());
    for event in &mut heavy.events {
        event.data = vec![b'x'; 1024];
        event.metadata.insert("trace".to_owned(), "x".repeat(40 * 1024));
    }
    let status = client.append(heavy).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("data and metadata"), "{status:?}");

    // More events than an append may carry: refused by count, before any event is converted.
    let mut many = append("s-1", None, &[]);
    many.events = vec![v1::ProposedEvent { r#type: "T".to_owned(), ..Default::default() }; 20_000];
    let status = client.append(many).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("20000 events"), "{status:?}");

    // 10,000 empty events and a 60 MiB metadata map: far over what the limits could let through, refused
    // before it is decoded (the decode limit sits just above the append limit, not at 64 MiB).
    let mut huge = append("s-1", None, &[]);
    huge.events = vec![v1::ProposedEvent::default(); 10_000];
    huge.events[0].metadata = (0..60).map(|i| (format!("k{i}"), "v".repeat(1024 * 1024))).collect();
    let status = client.append(huge).await.unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    // Nothing was written, and the node still serves.
    for node in &region.nodes {
        assert!(region.local_partition(node.id, 0).await.is_empty(), "node {} wrote something", node.id);
    }
    client.append(append("s-1", None, &[1])).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_does_not_decode_is_invalid_argument_not_a_retryable_internal_error() {
    let region = TestRegion::start(1, 1).await;
    // A `NodeRequest` (field 1 a number) sent as an `Append` (field 1 a string): it cannot be decoded.
    let channel = crate::common::channel(&region.nodes[0].address, &region.nodes[0].token).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<v1::NodeRequest, v1::AppendResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/fjord.v1.EventStore/Append");
    let request = tonic::Request::new(v1::NodeRequest { node_id: 5, groups: vec![] });
    let status = grpc.unary(request, path, codec).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("undecodable"), "{status:?}");
}
