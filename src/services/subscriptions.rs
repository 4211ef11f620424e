//! `Subscribe`: following this node's applied log. A subscription is a cursor per partition — the offset
//! after the last one it examined — and one task that moves it: it reads what is applied past the cursor
//! from storage a page at a time (on the blocking pool), filters it, and sends what matches; once every
//! partition is read up to its applied tail it sleeps until something is applied. History and live events
//! come through the same cursor, so the seam between them has no gap and no duplicate, and a consumer that
//! falls behind simply reads from disk again. Every message carries the cursor (`next_offsets`): resumed
//! from it, a subscription goes on exactly where it was, on this node or any other (offsets are the same on
//! every replica). Only applied — committed — events are served, so a follower serves them as well as the
//! leader.
//!
//! Memory per subscription is bounded by its response channel (a message or two of at most the read page
//! bytes); a consumer that reads nothing holds that and a task, and is ended after the idle timeout. The
//! task never touches the write path: subscribers cannot slow appends beyond the storage reads they cost.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use fjord_log::Direction;
use fjord_log::Limits;
use fjord_log::LogStore;
use fjord_log::Offset;
use fjord_log::ReadBarrier;
use fjord_log::RecordedEvent;
use fjord_log::Revision;
use fjord_proto::v1;
use fjord_raft::GroupId;
use fjord_raft::damage::DamageReports;
use fjord_raft::groups::Groups;
use prost::Message;
use tokio::sync::Semaphore;
use tokio::sync::watch;
use tonic::Code;
use tonic::Request;
use tonic::Status;

use crate::pb;
use crate::security::access::authorize;
use crate::security::tokens::Operation;
use crate::services::routing::Leader;
use crate::services::routing::Router;
use crate::services::routing::event_store_client;
use crate::services::routing::forwarded;
use crate::services::stored::served;
use crate::services::streaming;
use crate::services::streaming::ResponseSender;
use crate::services::streaming::Responses;

/// Most event types one filter may name.
pub const MAX_FILTER_TYPES: usize = 64;
/// Records a subscription examines in one storage read, matching or not: bounds the time a sparse filter
/// holds a blocking thread before its cursor (and the next checkpoint) moves.
const RECORDS_PER_READ: u64 = 4096;
/// How long a subscription starting past a partition's applied end here waits for this node to apply that
/// far (it may be a follower a little behind the node the cursor came from) before it is refused.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// The checkpoint interval when the request names none, and the bounds of one it names.
const DEFAULT_CHECKPOINT: Duration = Duration::from_millis(1000);
const MIN_CHECKPOINT: Duration = Duration::from_millis(10);
const MAX_CHECKPOINT: Duration = Duration::from_secs(60);

/// How subscriptions are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionLimits {
    /// Subscriptions the node serves at once; more are refused with `RESOURCE_EXHAUSTED`.
    pub max_subscriptions: usize,
    /// Bytes of events per message (a message holds at least one event, however large).
    pub message_bytes: usize,
    /// How long a subscription waits for a consumer that reads nothing before it is ended.
    pub idle_timeout: Duration,
}

/// The subscriptions of one node.
pub struct Subscriptions {
    router: Router,
    groups: Arc<Groups>,
    store: Arc<LogStore>,
    applied: watch::Receiver<u64>,
    limits: SubscriptionLimits,
    slots: Arc<Semaphore>,
}

impl Subscriptions {
    /// Subscriptions over `groups`' partitions, bounded by `limits`. Starts a task per partition that
    /// forwards its applied-tail changes to one node-wide signal every subscription waits on.
    pub fn new(router: Router, limits: SubscriptionLimits) -> Self {
        let groups = router.groups().clone();
        let store = groups.log_store().clone();
        let (signal, applied) = watch::channel(0u64);
        let signal = Arc::new(signal);
        for log in store.partitions() {
            let (mut tail, signal) = (log.watch_tail(), signal.clone());
            tokio::spawn(async move {
                while tail.changed().await.is_ok() {
                    signal.send_modify(|changes| *changes = changes.wrapping_add(1));
                }
            });
        }
        let slots = Arc::new(Semaphore::new(limits.max_subscriptions));
        Subscriptions { router, groups, store, applied, limits, slots }
    }

    /// Starts the subscription `request` asks for, after checking it (filter, start, grant): its messages.
    pub async fn start(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Responses<v1::SubscribeResponse>, Status> {
        let filter = Filter::parse(request.get_ref().filter.clone().unwrap_or_default(), self.groups.limits())?;
        authorize(&request, Operation::Subscribe, filter.scope_name())?;
        let request = request.into_inner();
        let partitions = self.partitions_of(&filter);
        let interval = match request.checkpoint_interval_ms {
            0 => DEFAULT_CHECKPOINT,
            ms => Duration::from_millis(ms.into()).clamp(MIN_CHECKPOINT, MAX_CHECKPOINT),
        };
        let cursor = self.start_cursor(request.start, &filter, &partitions).await?;
        self.spawn_follower(filter, cursor, interval)
    }

    /// Follows the events `filter` matches from `cursor` for the node itself (a named subscription's
    /// coordinator, which checked the filter and the caller when the subscription was made). It takes a
    /// place among the node's subscriptions like any other.
    pub async fn follow(
        &self,
        filter: v1::SubscriptionFilter,
        cursor: BTreeMap<GroupId, u64>,
    ) -> Result<Responses<v1::SubscribeResponse>, Status> {
        let filter = Filter::parse(filter, self.groups.limits())?;
        self.wait_until_applied(&cursor).await?;
        self.spawn_follower(filter, cursor, DEFAULT_CHECKPOINT)
    }

    /// Starts the task that moves `cursor` and sends what `filter` matches.
    fn spawn_follower(
        &self,
        filter: Filter,
        cursor: BTreeMap<GroupId, u64>,
        interval: Duration,
    ) -> Result<Responses<v1::SubscribeResponse>, Status> {
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            pb::status(
                Code::ResourceExhausted,
                "TOO_MANY_SUBSCRIPTIONS",
                format!(
                    "this node is serving {} subscriptions already; retry later or elsewhere",
                    self.limits.max_subscriptions
                ),
            )
        })?;
        let (sender, responses) = streaming::channel(self.limits.idle_timeout, permit);
        let follower = Follower {
            store: self.store.clone(),
            damage: self.groups.damage().clone(),
            filter: Arc::new(filter),
            cursor,
            next_revision: None,
            applied: self.applied.clone(),
            limits: self.limits,
            interval,
        };
        tokio::spawn(follower.run(sender));
        Ok(responses)
    }

    /// Each followed partition's first offset, as `start` says.
    async fn start_cursor(
        &self,
        start: Option<v1::subscribe_request::Start>,
        filter: &Filter,
        partitions: &[GroupId],
    ) -> Result<BTreeMap<GroupId, u64>, Status> {
        use v1::subscribe_request::Start;
        match start {
            None => Err(invalid_start("say where to start: from_beginning, from_end, from_offsets or from_revision")),
            Some(Start::FromBeginning(_)) => Ok(partitions.iter().map(|&p| (p, 0)).collect()),
            Some(Start::FromEnd(_)) => {
                let mut cursor = BTreeMap::new();
                for &partition in partitions {
                    cursor.insert(partition, self.committed_end(partition).await?);
                }
                self.wait_until_applied(&cursor).await?;
                Ok(cursor)
            }
            Some(Start::FromOffsets(given)) => {
                let count = self.store.partition_count();
                if let Some(unknown) = given.offsets.keys().find(|p| **p >= count) {
                    return Err(invalid_start(format!("partition {unknown} does not exist; there are {count}")));
                }
                let cursor: BTreeMap<GroupId, u64> =
                    partitions.iter().map(|&p| (p, given.offsets.get(&p).copied().unwrap_or(0))).collect();
                self.wait_until_applied(&cursor).await?;
                Ok(cursor)
            }
            Some(Start::FromRevision(revision)) => {
                let Scope::Stream(stream) = &filter.scope else {
                    return Err(invalid_start("from_revision needs a filter on one stream"));
                };
                let partition = self.groups.group_of(stream);
                let offset = self.offset_of_revision(partition, stream, revision).await?;
                Ok(BTreeMap::from([(partition, offset)]))
            }
        }
    }

    /// Where `partition` ends as its leader has it once it has confirmed it still leads (a linearizable
    /// read of its applied end): every event acknowledged before the subscription started lies below it,
    /// wherever the subscription is served.
    pub async fn committed_end(&self, partition: GroupId) -> Result<u64, Status> {
        match self.router.leader(partition, &tonic::metadata::MetadataMap::new()).await? {
            Leader::Local => {
                self.groups.wait_readable(partition).await.map_err(pb::barrier_error)?;
                Ok(self.store.partition(partition).map_err(pb::log_error)?.next_offset().0)
            }
            Leader::Remote(channel) => {
                let request = v1::ReadPartitionRequest {
                    partition,
                    from_offset: u64::MAX,
                    limit: 1,
                    consistency: v1::ReadConsistency::Linearizable as i32,
                };
                let mut pages = event_store_client(channel).read_partition(forwarded(request)).await?.into_inner();
                let mut end = 0;
                while let Some(page) = pages.message().await? {
                    end = end.max(page.as_of_offset);
                }
                Ok(end)
            }
        }
    }

    /// Checks a filter as a client sent it; the partitions it follows, and the stream (or name prefix) a
    /// token must grant `subscribe` on (`None`: every stream).
    pub fn check_filter(&self, filter: v1::SubscriptionFilter) -> Result<(Vec<GroupId>, Option<String>), Status> {
        let filter = Filter::parse(filter, self.groups.limits())?;
        Ok((self.partitions_of(&filter), filter.scope_name().map(str::to_owned)))
    }

    /// The partitions `filter` follows: its stream's, or all.
    fn partitions_of(&self, filter: &Filter) -> Vec<GroupId> {
        match &filter.scope {
            Scope::Stream(stream) => vec![self.groups.group_of(stream)],
            _ => (0..self.store.partition_count()).collect(),
        }
    }

    /// Waits (a while) until this node has applied every partition up to `cursor`.
    async fn wait_until_applied(&self, cursor: &BTreeMap<GroupId, u64>) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        let mut applied = self.applied.clone();
        loop {
            let behind = cursor.iter().find_map(|(&partition, &offset)| {
                let end = self.store.partition(partition).map_or(0, |log| log.next_offset().0);
                (offset > end).then_some((partition, offset, end))
            });
            let Some((partition, offset, end)) = behind else { return Ok(()) };
            if tokio::time::timeout_at(deadline, applied.changed()).await.is_err() {
                return Err(pb::status(
                    Code::OutOfRange,
                    "START_PAST_END",
                    format!(
                        "offset {offset} of partition {partition} is past what this node has applied ({end}) and \
                         it did not get there in {} s",
                        CATCH_UP_WAIT.as_secs()
                    ),
                ));
            }
        }
    }

    /// The offset of `stream`'s event at `revision`, or the partition's applied end if `revision` is the
    /// stream's next one (the subscription starts live).
    async fn offset_of_revision(&self, partition: GroupId, stream: &str, revision: u64) -> Result<u64, Status> {
        let log = self.store.partition(partition).map_err(pb::log_error)?.clone();
        let damage = self.groups.damage().clone();
        let stream = stream.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let end = log.next_offset().0;
            let first = log.read_stream(&stream, Revision(revision), Direction::Forward, 1).next();
            let next_revision = log.stream_head(&stream).map_err(pb::log_error)?.map_or(0, |head| head.revision.0 + 1);
            match first {
                Some(event) => served(event, partition, &damage).map(|event| event.offset.0),
                None if revision == next_revision => Ok(end),
                None => Err(invalid_start(format!(
                    "stream {stream:?} has no revision {revision}: its next revision is {next_revision}"
                ))),
            }
        });
        found.await.map_err(|error| Status::internal(error.to_string()))?
    }
}

fn invalid_start(message: impl Into<String>) -> Status {
    pb::status(Code::InvalidArgument, "INVALID_START", message)
}

fn invalid_filter(message: impl Into<String>) -> Status {
    pb::status(Code::InvalidArgument, "INVALID_FILTER", message)
}

/// Which streams a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    All,
    Stream(String),
    Prefix(String),
    Category(String),
}

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter {
    scope: Scope,
    /// Every type when empty.
    types: BTreeSet<String>,
}

impl Filter {
    /// Checks a filter as a client sent it: at most one of stream, prefix and category, each a valid stream
    /// name (fragment), and at most [`MAX_FILTER_TYPES`] valid event types.
    fn parse(filter: v1::SubscriptionFilter, limits: &Limits) -> Result<Filter, Status> {
        let named: Vec<(&str, String)> =
            [("stream", filter.stream), ("stream_prefix", filter.stream_prefix), ("category", filter.category)]
                .into_iter()
                .filter(|(_, value)| !value.is_empty())
                .collect();
        if named.len() > 1 {
            let fields: Vec<&str> = named.iter().map(|(field, _)| *field).collect();
            return Err(invalid_filter(format!(
                "a filter names one of stream, stream_prefix and category, not {fields:?}"
            )));
        }
        let scope = match named.into_iter().next() {
            None => Scope::All,
            Some((field, value)) => {
                limits.validate_stream(&value).map_err(|e| invalid_filter(format!("{field}: {e}")))?;
                match field {
                    "stream" => Scope::Stream(value),
                    "stream_prefix" => Scope::Prefix(value),
                    _ if value.contains('-') => {
                        return Err(invalid_filter(format!(
                            "category {value:?} holds a '-': a category ends at the first"
                        )));
                    }
                    _ => Scope::Category(value),
                }
            }
        };
        if filter.event_types.len() > MAX_FILTER_TYPES {
            return Err(invalid_filter(format!(
                "{} event types; a filter names at most {MAX_FILTER_TYPES}",
                filter.event_types.len()
            )));
        }
        let max = limits.max_event_type_bytes;
        if let Some(bad) =
            filter.event_types.iter().find(|t| t.is_empty() || t.len() > max || t.chars().any(char::is_control))
        {
            return Err(invalid_filter(format!("event type {bad:?} is not 1 to {max} printable bytes")));
        }
        Ok(Filter { scope, types: filter.event_types.into_iter().collect() })
    }

    /// The stream (or name prefix) a token must grant `subscribe` on; `None`: every stream.
    fn scope_name(&self) -> Option<&str> {
        match &self.scope {
            Scope::All => None,
            Scope::Stream(name) | Scope::Prefix(name) | Scope::Category(name) => Some(name),
        }
    }

    /// Whether the filter takes `event`. The whole log (no scope) leaves out the region's own streams (`$…`:
    /// named subscriptions' records), which a filter naming them still gets.
    fn matches(&self, event: &RecordedEvent) -> bool {
        let in_scope = match &self.scope {
            Scope::All => !event.stream.starts_with('$'),
            Scope::Stream(stream) => event.stream == *stream,
            Scope::Prefix(prefix) => event.stream.starts_with(prefix.as_str()),
            Scope::Category(category) => event.stream.split('-').next() == Some(category.as_str()),
        };
        in_scope && (self.types.is_empty() || self.types.contains(&event.event_type))
    }
}

/// One subscription's task: its cursor and what it needs to move it.
struct Follower {
    store: Arc<LogStore>,
    damage: Arc<DamageReports>,
    filter: Arc<Filter>,
    /// Per followed partition, the offset after the last one examined.
    cursor: BTreeMap<GroupId, u64>,
    /// A one-stream subscription's next revision, once found: it reads through the stream index.
    next_revision: Option<u64>,
    applied: watch::Receiver<u64>,
    limits: SubscriptionLimits,
    interval: Duration,
}

impl Follower {
    /// Reads and sends until the consumer goes, stops reading for the idle timeout, or storage fails.
    async fn run(mut self, sender: ResponseSender<v1::SubscribeResponse>) {
        // The first message says where the subscription starts, whatever matches: a consumer that loses
        // the node before any event still resumes from here (`from_end` resolved, not asked again).
        if !self.send(&sender, Vec::new()).await {
            return;
        }
        let mut last_sent = tokio::time::Instant::now();
        loop {
            self.applied.borrow_and_update();
            let mut read_any = false;
            for partition in self.cursor.keys().copied().collect::<Vec<_>>() {
                let Ok(log) = self.store.partition(partition) else { continue };
                let end = log.next_offset().0;
                if self.cursor[&partition] >= end {
                    continue;
                }
                read_any = true;
                let (events, next) = match self.read(partition, end).await {
                    Ok(read) => read,
                    Err(status) => return streaming::finish(&sender, Err(status), self.limits.idle_timeout).await,
                };
                self.cursor.insert(partition, next);
                // Matching events go at once; with none, a checkpoint when one is due (a sparse filter's
                // catch-up moves the resume point too).
                if !events.is_empty() || tokio::time::Instant::now() >= last_sent + self.interval {
                    if !self.send(&sender, events).await {
                        return;
                    }
                    last_sent = tokio::time::Instant::now();
                }
            }
            if read_any {
                continue;
            }
            // Caught up everywhere: a checkpoint if one is due, then sleep until something is applied.
            let due = last_sent + self.interval;
            if tokio::time::Instant::now() >= due {
                if !self.send(&sender, Vec::new()).await {
                    return;
                }
                last_sent = tokio::time::Instant::now();
                continue;
            }
            tokio::select! {
                changed = self.applied.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(due) => {}
                () = sender.closed() => return,
            }
        }
    }

    /// Reads `partition` from the cursor towards `end`: the matching events (up to the message bytes) and
    /// the offset after the last record examined. A one-stream subscription reads the stream's events only,
    /// through its index; any other reads the partition's records in order.
    async fn read(&mut self, partition: GroupId, end: u64) -> Result<(Vec<v1::RecordedEvent>, u64), Status> {
        let log = self.store.partition(partition).map_err(pb::log_error)?.clone();
        if let Some(read) = self.read_recent(&log, partition, end) {
            return Ok(read);
        }
        let (filter, damage, from) = (self.filter.clone(), self.damage.clone(), self.cursor[&partition]);
        let (message_bytes, known_revision) = (self.limits.message_bytes, self.next_revision);
        let read =
            tokio::task::spawn_blocking(move || -> Result<(Vec<v1::RecordedEvent>, u64, Option<u64>), Status> {
                let mut page = Page { events: Vec::new(), bytes: 0, message_bytes };
                if let Scope::Stream(stream) = &filter.scope {
                    let revision = match known_revision {
                        Some(revision) => revision,
                        None => first_revision_at(&log, stream, from).map_err(pb::log_error)?,
                    };
                    let (mut next, mut revision_after) = (end, revision);
                    let mut examined = 0;
                    for event in log.read_stream(stream, Revision(revision), Direction::Forward, RECORDS_PER_READ) {
                        let event = served(event, partition, &damage)?;
                        if event.offset.0 >= end {
                            break;
                        }
                        examined += 1;
                        revision_after = event.revision.0 + 1;
                        let offset = event.offset.0;
                        if page.add(&filter, event, partition) || examined == RECORDS_PER_READ {
                            next = offset + 1;
                            break;
                        }
                    }
                    return Ok((page.events, next, Some(revision_after)));
                }
                let mut next = from;
                for event in log.read_partition(Offset(from), (end - from).min(RECORDS_PER_READ)) {
                    let event = served(event, partition, &damage)?;
                    next = event.offset.0 + 1;
                    if page.add(&filter, event, partition) {
                        break;
                    }
                }
                Ok((page.events, next, None))
            });
        let (events, next, revision) = read.await.map_err(|error| Status::internal(error.to_string()))??;
        self.next_revision = revision;
        Ok((events, next))
    }

    /// What `read` would, from the events the partition applied last if it still holds the cursor there (a
    /// caught-up subscription: no store read, no blocking task); `None` if it does not.
    fn read_recent(
        &mut self,
        log: &fjord_log::PartitionLog,
        partition: GroupId,
        end: u64,
    ) -> Option<(Vec<v1::RecordedEvent>, u64)> {
        let from = self.cursor[&partition];
        let recent = log.recent_events(Offset(from), Offset(end), usize::try_from(RECORDS_PER_READ).ok()?)?;
        let mut page = Page { events: Vec::new(), bytes: 0, message_bytes: self.limits.message_bytes };
        let mut next = from;
        for event in recent {
            next = event.offset.0 + 1;
            if let Scope::Stream(stream) = &self.filter.scope
                && event.stream == *stream
            {
                self.next_revision = Some(event.revision.0 + 1);
            }
            if self.filter.matches(&event) && page.add(&self.filter, RecordedEvent::clone(&event), partition) {
                break;
            }
        }
        Some((page.events, next))
    }

    /// Sends `events` (none: a checkpoint) with the cursor and this node's applied offsets; false if the
    /// consumer is gone or read nothing for the idle timeout.
    async fn send(&self, sender: &ResponseSender<v1::SubscribeResponse>, events: Vec<v1::RecordedEvent>) -> bool {
        let as_of_offsets =
            self.cursor.keys().map(|&p| (p, self.store.partition(p).map_or(0, |log| log.next_offset().0))).collect();
        let message =
            v1::SubscribeResponse { events, next_offsets: self.cursor.clone().into_iter().collect(), as_of_offsets };
        sender.send_timeout(Some(Ok(message)), self.limits.idle_timeout).await.is_ok()
    }
}

/// The events of one message, up to its byte budget.
struct Page {
    events: Vec<v1::RecordedEvent>,
    bytes: usize,
    message_bytes: usize,
}

impl Page {
    /// Adds `event` if `filter` matches it; true once the page is full.
    fn add(&mut self, filter: &Filter, event: RecordedEvent, partition: GroupId) -> bool {
        if filter.matches(&event) {
            let event = pb::recorded_event(event, partition);
            self.bytes += event.encoded_len();
            self.events.push(event);
        }
        self.bytes >= self.message_bytes
    }
}

/// The first revision of `stream` whose event is at `offset` or later (the stream's next revision if there
/// is none): a binary search of the stream index, one event read per step.
fn first_revision_at(log: &fjord_log::PartitionLog, stream: &str, offset: u64) -> fjord_log::Result<u64> {
    let Some(head) = log.stream_head(stream)? else { return Ok(0) };
    let (mut low, mut high) = (0, head.revision.0 + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        match log.read_stream(stream, Revision(middle), Direction::Forward, 1).next().transpose()? {
            Some(event) if event.offset.0 < offset => low = middle + 1,
            _ => high = middle,
        }
    }
    Ok(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(stream: &str, prefix: &str, category: &str, types: &[&str]) -> Result<Filter, Status> {
        let wire = v1::SubscriptionFilter {
            stream: stream.to_owned(),
            stream_prefix: prefix.to_owned(),
            category: category.to_owned(),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
        };
        Filter::parse(wire, &Limits::default())
    }

    fn event(stream: &str, event_type: &str) -> RecordedEvent {
        RecordedEvent {
            id: uuid::Uuid::now_v7(),
            stream: stream.to_owned(),
            event_type: event_type.to_owned(),
            content_type: String::new(),
            data: Vec::new(),
            metadata: BTreeMap::new(),
            offset: Offset(0),
            revision: Revision(0),
            timestamp_micros: 0,
        }
    }

    #[test]
    fn a_filter_names_one_scope_and_valid_types() {
        for (stream, prefix, category, types) in [
            ("order-1", "order-", "", &[][..]),
            ("", "order-", "order", &[]),
            ("", "", "order-1", &[]),
            ("", "", "", &[""]),
            ("has space", "", "", &[]),
        ] {
            let refused = filter(stream, prefix, category, types).unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument, "{stream} {prefix} {category} {types:?}");
        }
        let many: Vec<String> = (0..=MAX_FILTER_TYPES).map(|n| format!("t{n}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(filter("", "", "", &many).is_err());
        assert!(filter("", "", "", &[]).is_ok());
    }

    #[test]
    fn a_filter_matches_its_scope_and_types() {
        let category = filter("", "", "order", &["Placed"]).unwrap();
        assert!(category.matches(&event("order-1", "Placed")));
        assert!(category.matches(&event("order", "Placed")));
        assert!(!category.matches(&event("orders-1", "Placed")));
        assert!(!category.matches(&event("order-1", "Shipped")));
        let prefix = filter("", "order-1", "", &[]).unwrap();
        assert!(prefix.matches(&event("order-17", "x")) && !prefix.matches(&event("order-2", "x")));
        let stream = filter("order-1", "", "", &[]).unwrap();
        assert!(stream.matches(&event("order-1", "x")) && !stream.matches(&event("order-17", "x")));
        assert!(filter("", "", "", &[]).unwrap().matches(&event("anything", "x")));
        assert!(!filter("", "", "", &[]).unwrap().matches(&event("$subscription-billing", "x")));
        assert!(filter("", "$subscription-", "", &[]).unwrap().matches(&event("$subscription-billing", "x")));
    }
}
