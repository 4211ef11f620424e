//! Subscriptions, through the Rust client (`fjord-client`) against real `fjord server` processes: history
//! then live with nothing missed or repeated, across a leader's death; filters that select exactly what a
//! full scan with the same predicate selects; checkpoints that move a filtered consumer's position; and bad
//! requests refused with a clear error.

use std::collections::BTreeMap;
use std::time::Duration;

use fjord_client::Client;
use fjord_client::Delivery;
use fjord_client::EventData;
use fjord_client::Expected;
use fjord_client::Start;
use fjord_client::Subscription;
use fjord_proto::v1;

use crate::common::TestRegion;

/// A client of every node of `region` with its admin token, trying node number `first` first.
pub(crate) fn client_of(region: &TestRegion, first: usize) -> Client {
    let mut addresses: Vec<String> = region.nodes.iter().map(|node| node.address.clone()).collect();
    let first = first % addresses.len();
    addresses.rotate_left(first);
    Client::new(addresses, Some(&region.admin_token())).unwrap()
}

fn event(event_type: &str, n: u64) -> EventData {
    EventData::json(event_type, format!("{{\"n\":{n}}}").as_bytes())
}

/// Each partition's events as the region holds them once every node agrees, read from the first node.
async fn committed(region: &TestRegion) -> BTreeMap<u32, Vec<v1::RecordedEvent>> {
    region.assert_replicas_identical().await;
    let mut partitions = BTreeMap::new();
    for partition in 0..region.partitions {
        partitions.insert(partition, region.local_partition(region.nodes[0].id, partition).await);
    }
    partitions
}

/// What a subscription delivered, by partition, in delivery order.
#[derive(Default)]
struct Received {
    events: BTreeMap<u32, Vec<v1::RecordedEvent>>,
    last: Option<Delivery>,
}

impl Received {
    /// Takes deliveries until `done` says so; panics after `patience`.
    async fn until(&mut self, subscription: &mut Subscription, patience: Duration, done: impl Fn(&Received) -> bool) {
        let deadline = tokio::time::Instant::now() + patience;
        while !done(self) {
            let delivery = tokio::time::timeout_at(deadline, subscription.next())
                .await
                .expect("the subscription delivered everything in time")
                .unwrap();
            for event in &delivery.events {
                let partition = event.position.unwrap().partition;
                self.events.entry(partition).or_default().push(event.clone());
            }
            self.last = Some(delivery);
        }
    }

    fn count(&self) -> usize {
        self.events.values().map(Vec::len).sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_started_during_load_receives_exactly_the_committed_events_in_order() {
    let region = TestRegion::start(3, 2).await;
    let writer = client_of(&region, 0);
    let writing = tokio::spawn(async move {
        for n in 0..300u64 {
            writer.append(&format!("load-{}", n % 7), Expected::Any, vec![event("Loaded", n)]).await.unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Started mid-load on a follower or the leader alike: it serves its applied state.
    let mut subscription = client_of(&region, 1).subscribe(v1::SubscriptionFilter::default(), Start::Beginning);
    let mut received = Received::default();
    received.until(&mut subscription, Duration::from_secs(30), |r| r.count() >= 100).await;
    writing.await.unwrap();
    let committed = committed(&region).await;
    let total: usize = committed.values().map(Vec::len).sum();
    assert_eq!(total, 300);
    received.until(&mut subscription, Duration::from_secs(30), |r| r.count() >= total).await;
    for (partition, events) in &committed {
        assert_eq!(received.events.get(partition).unwrap_or(&Vec::new()), events, "partition {partition}");
    }
    // Nothing more arrives: a checkpoint at the end says so.
    let last = received.last.as_ref().unwrap();
    for (partition, events) in &committed {
        assert_eq!(last.next_offsets[partition], events.len() as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_lose_nothing_and_repeat_nothing_when_the_leader_is_killed() {
    let mut region = TestRegion::start(3, 1).await;
    let mut subscriptions: Vec<Subscription> =
        (0..5).map(|n| client_of(&region, n).subscribe(v1::SubscriptionFilter::default(), Start::Beginning)).collect();
    let writer = client_of(&region, 0);
    let writing = tokio::spawn(async move {
        for n in 0..400u64 {
            writer.append(&format!("kill-{}", n % 5), Expected::Any, vec![event("Written", n)]).await.unwrap();
        }
    });
    let mut received: Vec<Received> = (0..5).map(|_| Received::default()).collect();
    for (subscription, received) in subscriptions.iter_mut().zip(&mut received) {
        received.until(subscription, Duration::from_secs(30), |r| r.count() >= 50).await;
    }
    let leader = region.leaders().await.unwrap()[&0];
    region.node(leader).kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    region.node(leader).restart();
    writing.await.unwrap();
    let committed = committed(&region).await;
    assert_eq!(committed[&0].len(), 400, "every append was acknowledged once");
    for (n, (subscription, received)) in subscriptions.iter_mut().zip(&mut received).enumerate() {
        received.until(subscription, Duration::from_secs(60), |r| r.count() >= 400).await;
        assert_eq!(received.events[&0], committed[&0], "subscriber {n}: every committed event once, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_selects_exactly_what_a_full_scan_with_the_same_predicate_selects() {
    let region = TestRegion::start(3, 2).await;
    let client = client_of(&region, 0);
    let streams = ["order", "order-1", "order-2", "orders-1", "payment-1", "order-3"];
    for n in 0..120u64 {
        let stream = streams[n as usize % streams.len()];
        let event_type = if n % 3 == 0 { "Placed" } else { "Shipped" };
        client.append(stream, Expected::Any, vec![event(event_type, n)]).await.unwrap();
    }
    let committed = committed(&region).await;
    let filters = [
        (
            v1::SubscriptionFilter {
                category: "order".into(),
                event_types: vec!["Placed".into()],
                ..Default::default()
            },
            (|e: &v1::RecordedEvent| (e.stream == "order" || e.stream.starts_with("order-")) && e.r#type == "Placed")
                as fn(&v1::RecordedEvent) -> bool,
        ),
        (v1::SubscriptionFilter { stream_prefix: "order".into(), ..Default::default() }, |e| {
            e.stream.starts_with("order")
        }),
        (v1::SubscriptionFilter { stream: "order-2".into(), ..Default::default() }, |e| e.stream == "order-2"),
        (v1::SubscriptionFilter { event_types: vec!["Shipped".into()], ..Default::default() }, |e| {
            e.r#type == "Shipped"
        }),
    ];
    for (filter, predicate) in filters {
        let expected: BTreeMap<u32, Vec<v1::RecordedEvent>> = committed
            .iter()
            .map(|(p, events)| (*p, events.iter().filter(|e| predicate(e)).cloned().collect::<Vec<_>>()))
            .filter(|(_, events)| !events.is_empty())
            .collect();
        let mut subscription = client.subscribe(filter.clone(), Start::Beginning);
        let mut received = Received::default();
        // Done once its position reaches the end of every partition it follows.
        received
            .until(&mut subscription, Duration::from_secs(30), |r| {
                r.last
                    .as_ref()
                    .is_some_and(|last| last.next_offsets.iter().all(|(p, next)| *next == committed[p].len() as u64))
            })
            .await;
        assert_eq!(received.events, expected, "{filter:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_from_the_end_or_a_revision_starts_there_and_checkpoints_keep_moving() {
    let region = TestRegion::start(3, 2).await;
    let client = client_of(&region, 0);
    for n in 0..10 {
        client.append("early-1", Expected::Any, vec![event("Early", n)]).await.unwrap();
    }
    let mut from_end = client.subscribe(v1::SubscriptionFilter::default(), Start::End);
    let mut from_revision =
        client.subscribe(v1::SubscriptionFilter { stream: "early-1".into(), ..Default::default() }, Start::Revision(7));
    // A filter nothing matches still delivers its position as the log grows.
    let mut nothing = client.subscribe(
        v1::SubscriptionFilter { event_types: vec!["NeverWritten".into()], ..Default::default() },
        Start::Beginning,
    );
    let first = from_end.next().await.unwrap();
    assert!(first.events.is_empty(), "the first message only says where it starts");
    for n in 10..20 {
        client.append("early-1", Expected::Any, vec![event("Late", n)]).await.unwrap();
    }
    let mut late = Received::default();
    late.until(&mut from_end, Duration::from_secs(20), |r| r.count() >= 10).await;
    let types: Vec<&str> = late.events.values().flatten().map(|e| e.r#type.as_str()).collect();
    assert_eq!(types, vec!["Late"; 10], "nothing from before the subscription started");
    let mut tail = Received::default();
    tail.until(&mut from_revision, Duration::from_secs(20), |r| r.count() >= 13).await;
    let revisions: Vec<u64> = tail.events.values().flatten().map(|e| e.position.unwrap().revision).collect();
    assert_eq!(revisions, (7..20).collect::<Vec<_>>());
    let partition = tail.events.keys().next().copied().unwrap();
    let mut quiet = Received::default();
    quiet
        .until(&mut nothing, Duration::from_secs(20), |r| {
            r.last.as_ref().is_some_and(|last| last.next_offsets.get(&partition) == Some(&20))
        })
        .await;
    assert_eq!(quiet.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_are_refused_with_a_reason() {
    let region = TestRegion::start(3, 2).await;
    let mut store = region.nodes[0].store().await;
    let subscribe = |filter: v1::SubscriptionFilter, start: Option<v1::subscribe_request::Start>| {
        v1::SubscribeRequest { filter: Some(filter), start, checkpoint_interval_ms: 0 }
    };
    use v1::subscribe_request::Start as Wire;
    let beginning = Some(Wire::FromBeginning(v1::Empty {}));
    let cases = [
        (subscribe(Default::default(), None), tonic::Code::InvalidArgument, "INVALID_START"),
        (
            subscribe(
                v1::SubscriptionFilter { stream: "a-1".into(), category: "a".into(), ..Default::default() },
                beginning.clone(),
            ),
            tonic::Code::InvalidArgument,
            "INVALID_FILTER",
        ),
        (
            subscribe(
                v1::SubscriptionFilter { event_types: vec![String::new()], ..Default::default() },
                beginning.clone(),
            ),
            tonic::Code::InvalidArgument,
            "INVALID_FILTER",
        ),
        (subscribe(Default::default(), Some(Wire::FromRevision(3))), tonic::Code::InvalidArgument, "INVALID_START"),
        (
            subscribe(Default::default(), Some(Wire::FromOffsets(v1::PartitionOffsets { offsets: [(9, 0)].into() }))),
            tonic::Code::InvalidArgument,
            "INVALID_START",
        ),
        (
            subscribe(
                v1::SubscriptionFilter { stream: "absent-1".into(), ..Default::default() },
                Some(Wire::FromRevision(5)),
            ),
            tonic::Code::InvalidArgument,
            "INVALID_START",
        ),
        (
            subscribe(
                Default::default(),
                Some(Wire::FromOffsets(v1::PartitionOffsets { offsets: [(0, 1_000_000)].into() })),
            ),
            tonic::Code::OutOfRange,
            "START_PAST_END",
        ),
    ];
    for (request, code, reason) in cases {
        let refused =
            store.subscribe(request.clone()).await.err().unwrap_or_else(|| panic!("{request:?} was accepted"));
        assert_eq!(
            (refused.code(), crate::common::reason(&refused).as_str()),
            (code, reason),
            "{request:?}: {refused:?}"
        );
    }

    // A token that may subscribe to orders only: not to everything, nor to another prefix.
    let token = region.issue_token("orders-reader", "subscribe:order-");
    let orders = Client::new([region.nodes[0].address.clone()], Some(&token)).unwrap();
    for filter in [
        v1::SubscriptionFilter::default(),
        v1::SubscriptionFilter { stream_prefix: "pay".into(), ..Default::default() },
        v1::SubscriptionFilter { category: "order".into(), ..Default::default() },
    ] {
        let refused = orders.subscribe(filter.clone(), Start::Beginning).next().await.err().unwrap();
        assert_eq!(refused.code(), Some(tonic::Code::PermissionDenied), "{filter:?}: {refused}");
    }
    let allowed = v1::SubscriptionFilter { stream_prefix: "order-4".into(), ..Default::default() };
    orders.subscribe(allowed, Start::Beginning).next().await.unwrap();
}
