//! Named subscriptions (consumer groups), through the Rust client against real `fjord server` processes:
//! a consumer that goes mid-batch leaves its unacknowledged events to the next and none it acknowledged;
//! what is not acknowledged in time comes again and is parked after its last delivery, listed and
//! replayable; consumers split the partitions and take over from one that leaves; the checkpoint is in the
//! log and outlives its coordinator's node; bad requests are refused with a reason and change nothing.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use fjord_client::Client;
use fjord_client::Consumer;
use fjord_client::EventData;
use fjord_client::Expected;
use fjord_proto::v1;

use crate::common::TestRegion;
use crate::subscriptions::client_of;

/// (partition, offset) of a delivered event.
fn position(consumed: &v1::ConsumedEvent) -> (u32, u64) {
    let position = consumed.event.as_ref().unwrap().position.unwrap();
    (position.partition, position.offset)
}

/// Appends `count` events to streams `job-0` … `job-6`.
async fn append_jobs(client: &Client, from: u64, count: u64) {
    for n in from..from + count {
        let event = EventData::json("JobQueued", format!("{{\"n\":{n}}}").as_bytes());
        client.append(&format!("job-{}", n % 7), Expected::Any, vec![event]).await.unwrap();
    }
}

/// The positions of every `job-…` event the region holds.
async fn job_positions(region: &TestRegion) -> BTreeSet<(u32, u64)> {
    region.assert_replicas_identical().await;
    let mut positions = BTreeSet::new();
    for partition in 0..region.partitions {
        for event in region.local_partition(region.nodes[0].id, partition).await {
            if event.stream.starts_with("job-") {
                positions.insert((partition, event.position.unwrap().offset));
            }
        }
    }
    positions
}

fn create(name: &str, ack_timeout_ms: u32, max_deliveries: u32, max_in_flight: u32) -> v1::CreateSubscriptionRequest {
    v1::CreateSubscriptionRequest {
        name: name.to_owned(),
        filter: Some(v1::SubscriptionFilter { category: "job".into(), ..Default::default() }),
        start: Some(v1::create_subscription_request::Start::FromBeginning(v1::Empty {})),
        settings: Some(v1::SubscriptionSettings { ack_timeout_ms, max_deliveries, max_in_flight }),
    }
}

/// The next events `consumer` gets, within `patience`.
async fn next(consumer: &mut Consumer, patience: Duration) -> Vec<v1::ConsumedEvent> {
    tokio::time::timeout(patience, consumer.next()).await.expect("the consumer got events in time").unwrap()
}

/// Takes and acknowledges everything `consumer` gets until `done`; what it got, by position.
async fn consume_until(
    consumer: &mut Consumer,
    got: &mut BTreeMap<(u32, u64), v1::ConsumedEvent>,
    done: impl Fn(&BTreeMap<(u32, u64), v1::ConsumedEvent>) -> bool,
) {
    while !done(got) {
        let events = next(consumer, Duration::from_secs(30)).await;
        consumer.ack(&events).await.unwrap();
        for consumed in events {
            assert!(got.insert(position(&consumed), consumed).is_none(), "an acknowledged event came again");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_gone_mid_batch_leaves_its_unacknowledged_events_and_none_it_acknowledged() {
    let region = TestRegion::start(3, 2).await;
    let admin = client_of(&region, 0);
    append_jobs(&admin, 0, 10).await;
    let all = job_positions(&region).await;
    admin.create_subscription(create("jobs", 30_000, 10, 1000)).await.unwrap();

    // A consumer is handed every event, acknowledges half of its first batch and is gone: its client and
    // connection dropped, as a killed process's are.
    let acknowledged: BTreeSet<(u32, u64)> = {
        let first = client_of(&region, 1);
        let mut consumer = first.consume("jobs", "first");
        let batch = next(&mut consumer, Duration::from_secs(30)).await;
        let half = &batch[..batch.len().div_ceil(2)];
        consumer.ack(half).await.unwrap();
        // Everything was handed to it, and the acknowledgements arrived, once the rest is in flight.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while admin.describe_subscription("jobs").await.unwrap().in_flight != (all.len() - half.len()) as u64 {
            assert!(tokio::time::Instant::now() < deadline, "the acknowledgements arrived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        half.iter().map(position).collect()
    };

    let second = client_of(&region, 2);
    let mut consumer = second.consume("jobs", "second");
    let mut got = BTreeMap::new();
    let rest = all.len() - acknowledged.len();
    consume_until(&mut consumer, &mut got, |got| got.len() >= rest).await;
    let got_positions: BTreeSet<(u32, u64)> = got.keys().copied().collect();
    assert!(got_positions.is_disjoint(&acknowledged), "an acknowledged event was delivered again");
    assert_eq!(got_positions.union(&acknowledged).copied().collect::<BTreeSet<_>>(), all);
    // The gone consumer held them all: each comes a second time.
    assert!(got.values().all(|consumed| consumed.delivery == 2), "{got:?}");

    let info = admin.describe_subscription("jobs").await.unwrap();
    assert_eq!(info.consumers.len(), 1, "{info:?}");
    assert_eq!(info.consumers[0].consumer, "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_not_acknowledged_in_time_comes_again_then_is_parked_listed_and_replayed() {
    let region = TestRegion::start(3, 2).await;
    let admin = client_of(&region, 0);
    append_jobs(&admin, 0, 1).await;
    admin.create_subscription(create("retries", 300, 3, 100)).await.unwrap();
    let mut consumer = client_of(&region, 1).consume("retries", "");
    // Never acknowledged: delivered three times, 300 ms apart, then parked.
    for delivery in 1..=3 {
        let events = next(&mut consumer, Duration::from_secs(20)).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].delivery, delivery);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let parked = loop {
        let parked = admin.list_parked("retries", 0).await.unwrap();
        if parked.total == 1 {
            break parked;
        }
        assert!(tokio::time::Instant::now() < deadline, "the event was parked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(parked.events[0].deliveries, 3);
    assert_eq!(parked.events[0].event.as_ref().unwrap().stream, "job-0");
    // Parked, it is not delivered again; a new event is.
    append_jobs(&admin, 1, 1).await;
    let events = next(&mut consumer, Duration::from_secs(20)).await;
    assert_eq!(events[0].event.as_ref().unwrap().stream, "job-1");
    consumer.ack(&events).await.unwrap();

    assert_eq!(admin.replay_parked("retries").await.unwrap(), 1);
    let events = next(&mut consumer, Duration::from_secs(20)).await;
    assert_eq!((events[0].event.as_ref().unwrap().stream.as_str(), events[0].delivery), ("job-0", 1));
    consumer.ack(&events).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = admin.describe_subscription("retries").await.unwrap();
        let ends: u64 = info.as_of_offsets.values().sum();
        let checkpoint: u64 = info.checkpoint.values().sum();
        if info.parked == 0 && info.in_flight == 0 && checkpoint == ends {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "everything was acknowledged: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a consumer task got: each message's events with the partitions the consumer had then.
type Got = tokio::sync::mpsc::UnboundedReceiver<(Vec<u32>, Vec<v1::ConsumedEvent>)>;

/// A consumer of `name` in a task of its own (with its own client), acknowledging everything it gets.
fn consuming(region: &TestRegion, node: usize, name: &str, consumer: &str) -> (tokio::task::JoinHandle<()>, Got) {
    let client = client_of(region, node);
    let (name, consumer) = (name.to_owned(), consumer.to_owned());
    let (sender, got) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut consumer = client.consume(&name, &consumer);
        loop {
            let events = consumer.next().await.unwrap();
            consumer.ack(&events).await.unwrap();
            if sender.send((consumer.partitions().to_vec(), events)).is_err() {
                return;
            }
        }
    });
    (task, got)
}

/// Waits until `name` has consumers with these partitions, as its coordinator says.
async fn wait_for_assignment(admin: &Client, name: &str, expected: &[Vec<u32>]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = admin.describe_subscription(name).await.unwrap();
        let mut dealt: Vec<Vec<u32>> = info.consumers.iter().map(|c| c.partitions.clone()).collect();
        dealt.sort();
        if dealt == expected {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "partitions dealt as {expected:?}: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Takes from `got` until `count` events came; each must be of a partition its consumer had.
async fn collect(got: &mut Got, into: &mut BTreeMap<(u32, u64), v1::ConsumedEvent>, count: usize) {
    while into.len() < count {
        let (partitions, events) = tokio::time::timeout(Duration::from_secs(30), got.recv())
            .await
            .expect("the consumer got every event in time")
            .unwrap();
        for consumed in events {
            assert!(partitions.contains(&position(&consumed).0), "an event of a partition it does not have");
            assert!(into.insert(position(&consumed), consumed).is_none(), "an event came twice");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_split_the_partitions_and_one_takes_over_when_the_other_leaves() {
    let region = TestRegion::start(3, 4).await;
    let admin = client_of(&region, 0);
    admin.create_subscription(create("split", 30_000, 10, 1000)).await.unwrap();
    let (first_task, mut first) = consuming(&region, 1, "split", "first");
    wait_for_assignment(&admin, "split", &[vec![0, 1, 2, 3]]).await;
    let (second_task, mut second) = consuming(&region, 2, "split", "second");
    wait_for_assignment(&admin, "split", &[vec![0, 2], vec![1, 3]]).await;

    append_jobs(&admin, 0, 60).await;
    let all = job_positions(&region).await;
    let expected_of = |partitions: [u32; 2]| all.iter().filter(|(p, _)| partitions.contains(p)).count();
    let (mut got_first, mut got_second) = (BTreeMap::new(), BTreeMap::new());
    collect(&mut first, &mut got_first, expected_of([0, 2])).await;
    collect(&mut second, &mut got_second, expected_of([1, 3])).await;
    let delivered: BTreeSet<(u32, u64)> = got_first.keys().chain(got_second.keys()).copied().collect();
    assert_eq!(delivered, all, "each event once, to the consumer of its partition");

    // The second leaves (its task, client and connection gone): the first gets every partition, and what
    // is appended next.
    second_task.abort();
    wait_for_assignment(&admin, "split", &[vec![0, 1, 2, 3]]).await;
    append_jobs(&admin, 60, 20).await;
    let all = job_positions(&region).await;
    collect(&mut first, &mut got_first, all.len() - got_second.len()).await;
    let delivered: BTreeSet<(u32, u64)> = got_first.keys().chain(got_second.keys()).copied().collect();
    assert_eq!(delivered, all);
    first_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_is_in_the_log_and_outlives_its_coordinators_node() {
    let mut region = TestRegion::start(3, 2).await;
    let admin = client_of(&region, 0);
    append_jobs(&admin, 0, 30).await;
    let all = job_positions(&region).await;
    admin.create_subscription(create("durable", 30_000, 10, 1000)).await.unwrap();
    let mut consumer = client_of(&region, 1).consume("durable", "before");
    let mut acknowledged = BTreeMap::new();
    consume_until(&mut consumer, &mut acknowledged, |got| got.len() >= all.len()).await;
    // The coordinator stores its checkpoint in the subscription's state stream: wait for the record that
    // says everything is acknowledged (its frontier past every event).
    let state = "$subscription-durable";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let records = admin.read_stream(state, 0, 0).await.unwrap();
        let last: serde_json::Value = serde_json::from_slice(&records.last().unwrap().data).unwrap();
        let frontier: BTreeMap<u32, u64> =
            serde_json::from_value(last["progress"]["frontier"].clone()).unwrap_or_default();
        if all.iter().all(|(partition, offset)| frontier.get(partition).is_some_and(|next| next > offset)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the checkpoint was stored: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(consumer);

    // SIGKILL the leader of the state stream's partition, where the coordinator ran.
    let mut store = region.nodes[0].store().await;
    let partition = store.get_stream(v1::GetStreamRequest { stream: state.to_owned(), consistency: 0 });
    let partition = partition.await.unwrap().into_inner().partition;
    let coordinator_node = region.leaders().await.unwrap()[&partition];
    region.node(coordinator_node).kill();
    region.wait_for_leaders().await;

    append_jobs(&admin, 30, 5).await;
    let survivor = region.nodes.iter().position(|node| node.id != coordinator_node).unwrap();
    let mut consumer = client_of(&region, survivor).consume("durable", "after");
    let mut after = BTreeMap::new();
    consume_until(&mut consumer, &mut after, |got| got.len() >= 5).await;
    let stored: BTreeSet<(u32, u64)> = acknowledged.keys().copied().collect();
    assert!(after.keys().all(|position| !stored.contains(position)), "nothing acknowledged and stored came again");
    assert!(after.values().all(|e| e.event.as_ref().unwrap().r#type == "JobQueued"));
    region.node(coordinator_node).restart();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_named_subscription_requests_are_refused_with_a_reason_and_change_nothing() {
    let region = TestRegion::start(3, 2).await;
    let admin = client_of(&region, 0);
    let reason = |error: fjord_client::ClientError| match error {
        fjord_client::ClientError::Failed { code, reason, .. } => (code, reason.unwrap_or_default()),
        other => panic!("{other}"),
    };
    use tonic::Code;
    let not_found = (Code::NotFound, "SUBSCRIPTION_NOT_FOUND".to_owned());
    assert_eq!(reason(admin.describe_subscription("absent").await.unwrap_err()), not_found);
    assert_eq!(reason(admin.delete_subscription("absent").await.unwrap_err()), not_found);
    assert_eq!(reason(admin.replay_parked("absent").await.unwrap_err()), not_found);
    assert_eq!(reason(admin.consume("absent", "").next().await.unwrap_err()), not_found);

    let mut bad_name = create("has space", 0, 0, 0);
    let mut no_start = create("fine", 0, 0, 0);
    no_start.start = None;
    let mut two_scopes = create("fine", 0, 0, 0);
    two_scopes.filter =
        Some(v1::SubscriptionFilter { stream: "a-1".into(), category: "a".into(), ..Default::default() });
    bad_name.settings = None;
    for (request, expected) in [
        (bad_name, "INVALID_SUBSCRIPTION_NAME"),
        (no_start, "INVALID_START"),
        (two_scopes, "INVALID_FILTER"),
        (create("fine", 10, 0, 0), "INVALID_SETTINGS"),
    ] {
        let refused = admin.create_subscription(request.clone()).await.unwrap_err();
        assert_eq!(reason(refused), (Code::InvalidArgument, expected.to_owned()), "{request:?}");
    }
    assert!(admin.list_subscriptions().await.unwrap().is_empty(), "nothing was created");

    // A create retried is answered with what it made; another definition under the name is refused.
    let made = admin.create_subscription(create("jobs", 0, 0, 0)).await.unwrap();
    assert_eq!(admin.create_subscription(create("jobs", 0, 0, 0)).await.unwrap(), made);
    let refused = admin.create_subscription(create("jobs", 5000, 0, 0)).await.unwrap_err();
    assert_eq!(reason(refused), (Code::AlreadyExists, "SUBSCRIPTION_EXISTS".to_owned()));

    // The region's own streams are not for clients to write.
    let forged = admin
        .append("$subscription-jobs", Expected::Any, vec![EventData::json("SubscriptionDeleted", b"{}")])
        .await
        .unwrap_err();
    assert_eq!(reason(forged), (Code::InvalidArgument, "RESERVED_STREAM".to_owned()));

    // A token that may subscribe to orders only neither sees nor consumes the jobs subscription.
    let orders =
        Client::new([region.nodes[1].address.clone()], Some(&region.issue_token("orders", "subscribe:order-")))
            .unwrap();
    assert!(orders.list_subscriptions().await.unwrap().is_empty());
    assert_eq!(reason(orders.describe_subscription("jobs").await.unwrap_err()).0, Code::PermissionDenied);
    assert_eq!(reason(orders.consume("jobs", "").next().await.unwrap_err()).0, Code::PermissionDenied);

    let listed = admin.list_subscriptions().await.unwrap();
    assert_eq!(listed.iter().map(|info| info.name.as_str()).collect::<Vec<_>>(), vec!["jobs"]);
    admin.delete_subscription("jobs").await.unwrap();
    assert!(admin.list_subscriptions().await.unwrap().is_empty());
    assert_eq!(reason(admin.describe_subscription("jobs").await.unwrap_err()), not_found);
    // The name is free again.
    admin.create_subscription(create("jobs", 5000, 0, 0)).await.unwrap();
}
