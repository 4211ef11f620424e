//! What the region stores of a named subscription, in its own log, as JSON events (readable with `fjord
//! read`):
//!
//! - its state stream, `$subscription-<name>`, whose last event says all there is to know: `Created` (the
//!   definition), `Checkpoint` (the definition and the progress: per partition the offset below which every
//!   matching event is acknowledged or parked, and the parked and replaying events), or `Deleted`. Every
//!   append to it expects the revision its writer last read, so two coordinators can never both write:
//!   the second is refused and stops.
//! - the registry, `$subscriptions`, a `Created` or `Deleted` event per change, naming the subscription:
//!   what `ListSubscriptions` folds.
//!
//! A name deleted and created again gets a new incarnation; nothing of the old one carries over.

use std::collections::BTreeMap;

use fjord_log::ProposedEvent;
use fjord_proto::v1;
use serde::Deserialize;
use serde::Serialize;
use tonic::Code;
use tonic::Status;

use crate::pb;

/// The registry stream: one event per subscription created or deleted.
pub(crate) const REGISTRY_STREAM: &str = "$subscriptions";
/// Longest subscription name, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 128;
/// Most parked events one subscription keeps; an event that runs out of deliveries past this stays in
/// flight (delivered again after each ack timeout) until some are replayed.
pub(crate) const MAX_PARKED: usize = 10_000;

/// Event types of the records.
const CREATED: &str = "SubscriptionCreated";
const CHECKPOINT: &str = "SubscriptionCheckpoint";
const DELETED: &str = "SubscriptionDeleted";

/// The state stream of subscription `name`.
pub(crate) fn state_stream(name: &str) -> String {
    format!("$subscription-{name}")
}

/// Checks a subscription name: 1 to [`MAX_NAME_BYTES`] of `A-Z a-z 0-9 . _ -`.
pub(crate) fn validate_name(name: &str) -> Result<(), Status> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME_BYTES || !name.chars().all(fine) {
        return Err(pb::status(
            Code::InvalidArgument,
            "INVALID_SUBSCRIPTION_NAME",
            format!("subscription name {name:?} is not 1 to {MAX_NAME_BYTES} of A-Z a-z 0-9 . _ -"),
        ));
    }
    Ok(())
}

/// The refusal for a name with no subscription.
pub(crate) fn not_found(name: &str) -> Status {
    pb::status(Code::NotFound, "SUBSCRIPTION_NOT_FOUND", format!("there is no subscription named {name:?}"))
}

/// How a subscription delivers, with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Settings {
    /// Milliseconds a delivered event may go unacknowledged before it is delivered again.
    pub(crate) ack_timeout_ms: u32,
    /// Deliveries after which an event still unacknowledged is parked.
    pub(crate) max_deliveries: u32,
    /// Unacknowledged events one consumer holds at most.
    pub(crate) max_in_flight: u32,
}

impl Settings {
    /// Most unacknowledged events one consumer may hold.
    const MAX_IN_FLIGHT: u32 = 100_000;
    /// Longest ack timeout: a day.
    const MAX_ACK_TIMEOUT_MS: u32 = 86_400_000;

    /// The settings a client asked for, defaults for what it left at 0, refused when out of bounds.
    pub(crate) fn from_wire(wire: Option<v1::SubscriptionSettings>) -> Result<Settings, Status> {
        let wire = wire.unwrap_or_default();
        let or = |value: u32, default: u32| if value == 0 { default } else { value };
        let settings = Settings {
            ack_timeout_ms: or(wire.ack_timeout_ms, 30_000),
            max_deliveries: or(wire.max_deliveries, 10),
            max_in_flight: or(wire.max_in_flight, 1000),
        };
        if settings.ack_timeout_ms < 100 || settings.ack_timeout_ms > Self::MAX_ACK_TIMEOUT_MS {
            return Err(invalid_settings(format!(
                "ack_timeout_ms {} is not 100 to {}",
                settings.ack_timeout_ms,
                Self::MAX_ACK_TIMEOUT_MS
            )));
        }
        if settings.max_deliveries > 1000 {
            return Err(invalid_settings(format!("max_deliveries {} is over 1000", settings.max_deliveries)));
        }
        if settings.max_in_flight > Self::MAX_IN_FLIGHT {
            return Err(invalid_settings(format!(
                "max_in_flight {} is over {}",
                settings.max_in_flight,
                Self::MAX_IN_FLIGHT
            )));
        }
        Ok(settings)
    }

    /// As the API shows them.
    pub(crate) fn to_wire(self) -> v1::SubscriptionSettings {
        v1::SubscriptionSettings {
            ack_timeout_ms: self.ack_timeout_ms,
            max_deliveries: self.max_deliveries,
            max_in_flight: self.max_in_flight,
        }
    }
}

fn invalid_settings(message: String) -> Status {
    pb::status(Code::InvalidArgument, "INVALID_SETTINGS", message)
}

/// A filter as stored (the API's `SubscriptionFilter`, checked when the subscription was created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(crate) struct StoredFilter {
    /// Exactly this stream, when not empty.
    pub(crate) stream: String,
    /// Streams starting with this, when not empty.
    pub(crate) stream_prefix: String,
    /// Streams of this category, when not empty.
    pub(crate) category: String,
    /// Only these event types, when not empty.
    pub(crate) event_types: Vec<String>,
}

impl StoredFilter {
    /// The filter as the API carries it.
    pub(crate) fn to_wire(&self) -> v1::SubscriptionFilter {
        v1::SubscriptionFilter {
            stream: self.stream.clone(),
            stream_prefix: self.stream_prefix.clone(),
            category: self.category.clone(),
            event_types: self.event_types.clone(),
        }
    }

    /// The filter the API carried.
    pub(crate) fn from_wire(wire: v1::SubscriptionFilter) -> StoredFilter {
        StoredFilter {
            stream: wire.stream,
            stream_prefix: wire.stream_prefix,
            category: wire.category,
            event_types: wire.event_types,
        }
    }
}

/// Where a subscription was asked to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StartAt {
    /// Every partition's first event.
    Beginning,
    /// Each partition's end when it was created.
    End,
}

/// What a subscription is: everything but its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Definition {
    /// Its name.
    pub(crate) name: String,
    /// Which creation of the name this is.
    pub(crate) incarnation: uuid::Uuid,
    /// Which events it delivers.
    pub(crate) filter: StoredFilter,
    /// Where it was asked to start.
    pub(crate) start_at: StartAt,
    /// Per partition, the offset it started at.
    #[serde(with = "partition_offsets")]
    pub(crate) start: BTreeMap<u32, u64>,
    /// How it delivers.
    pub(crate) settings: Settings,
    /// When it was created, microseconds since the Unix epoch.
    pub(crate) created_micros: i64,
}

impl Definition {
    /// Whether `other` asks for the same subscription (a create retried): all but what the first creation
    /// resolved (its incarnation, start offsets and time).
    pub(crate) fn same_request(&self, other: &Definition) -> bool {
        (&self.name, &self.filter, self.start_at, self.settings)
            == (&other.name, &other.filter, other.start_at, other.settings)
    }

    /// As `DescribeSubscription` shows it, before any progress is added.
    pub(crate) fn to_info(&self) -> v1::SubscriptionInfo {
        v1::SubscriptionInfo {
            name: self.name.clone(),
            filter: Some(self.filter.to_wire()),
            settings: Some(self.settings.to_wire()),
            start_offsets: self.start.clone().into_iter().collect(),
            checkpoint: self.start.clone().into_iter().collect(),
            created_micros: self.created_micros,
            ..Default::default()
        }
    }
}

/// An event a subscription parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ParkedPosition {
    /// Its partition.
    pub(crate) partition: u32,
    /// Its offset.
    pub(crate) offset: u64,
    /// How often it was delivered.
    pub(crate) deliveries: u32,
    /// When it was parked, microseconds since the Unix epoch.
    pub(crate) parked_micros: i64,
}

/// How far a subscription has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(crate) struct Progress {
    /// Per partition: every matching event below it is acknowledged or parked.
    #[serde(with = "partition_offsets")]
    pub(crate) frontier: BTreeMap<u32, u64>,
    /// Events parked, oldest first.
    pub(crate) parked: Vec<ParkedPosition>,
    /// Parked events being delivered again (below the frontier, so kept here until acknowledged), as
    /// (partition, offset).
    pub(crate) replaying: Vec<(u32, u64)>,
}

/// One event of a state stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub(crate) enum StateRecord {
    /// The subscription was created.
    Created {
        /// What it is.
        definition: Definition,
    },
    /// Its progress, as its coordinator stored it.
    Checkpoint {
        /// What it is.
        definition: Definition,
        /// How far it got.
        progress: Progress,
    },
    /// It was deleted.
    Deleted {
        /// Its name.
        name: String,
        /// The incarnation deleted.
        incarnation: uuid::Uuid,
    },
}

impl StateRecord {
    /// The record as an event to append.
    pub(crate) fn to_event(&self) -> ProposedEvent {
        let event_type = match self {
            StateRecord::Created { .. } => CREATED,
            StateRecord::Checkpoint { .. } => CHECKPOINT,
            StateRecord::Deleted { .. } => DELETED,
        };
        json_event(event_type, self)
    }

    /// The record a stored event holds.
    pub(crate) fn from_event(data: &[u8]) -> Result<StateRecord, Status> {
        serde_json::from_slice(data).map_err(|error| {
            pb::status(Code::DataLoss, "UNREADABLE_SUBSCRIPTION", format!("a subscription record: {error}"))
        })
    }

    /// The live subscription this record leaves, if any: its definition and progress.
    pub(crate) fn live(self) -> Option<(Definition, Progress)> {
        match self {
            StateRecord::Created { definition } => {
                let progress = Progress { frontier: definition.start.clone(), ..Progress::default() };
                Some((definition, progress))
            }
            StateRecord::Checkpoint { definition, progress } => Some((definition, progress)),
            StateRecord::Deleted { .. } => None,
        }
    }
}

/// One event of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub(crate) enum RegistryRecord {
    /// A subscription of this name was created.
    Created {
        /// Its name.
        name: String,
    },
    /// The subscription of this name was deleted.
    Deleted {
        /// Its name.
        name: String,
    },
}

impl RegistryRecord {
    /// The record as an event to append.
    pub(crate) fn to_event(&self) -> ProposedEvent {
        let event_type = match self {
            RegistryRecord::Created { .. } => CREATED,
            RegistryRecord::Deleted { .. } => DELETED,
        };
        json_event(event_type, self)
    }

    /// The names a registry's events leave, in order.
    pub(crate) fn fold<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<String>, Status> {
        let mut names = std::collections::BTreeSet::new();
        for data in events {
            match serde_json::from_slice(data) {
                Ok(RegistryRecord::Created { name }) => names.insert(name),
                Ok(RegistryRecord::Deleted { name }) => names.remove(&name),
                Err(error) => {
                    return Err(pb::status(
                        Code::DataLoss,
                        "UNREADABLE_SUBSCRIPTION",
                        format!("a subscription registry record: {error}"),
                    ));
                }
            };
        }
        Ok(names.into_iter().collect())
    }
}

/// Offsets by partition as a JSON object (`{"0": 12}`). serde_json writes integer keys as strings, and an
/// internally tagged enum (the records) reads them back only as strings.
mod partition_offsets {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde::Deserializer;
    use serde::Serialize;
    use serde::Serializer;
    use serde::de::Error;

    pub(super) fn serialize<S: Serializer>(offsets: &BTreeMap<u32, u64>, serializer: S) -> Result<S::Ok, S::Error> {
        offsets.serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<u32, u64>, D::Error> {
        BTreeMap::<String, u64>::deserialize(deserializer)?
            .into_iter()
            .map(|(partition, offset)| Ok((partition.parse().map_err(D::Error::custom)?, offset)))
            .collect()
    }
}

fn json_event(event_type: &str, record: &impl Serialize) -> ProposedEvent {
    // A record is plain data: serializing it cannot fail.
    let data = serde_json::to_vec(record).unwrap_or_default();
    ProposedEvent::json(event_type, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition() -> Definition {
        Definition {
            name: "billing".to_owned(),
            incarnation: uuid::Uuid::now_v7(),
            filter: StoredFilter { category: "order".to_owned(), ..StoredFilter::default() },
            start_at: StartAt::End,
            start: BTreeMap::from([(0, 5), (1, 9)]),
            settings: Settings::from_wire(None).unwrap(),
            created_micros: 1,
        }
    }

    #[test]
    fn a_state_record_reads_back_as_written() {
        let progress = Progress {
            frontier: BTreeMap::from([(0, 7)]),
            parked: vec![ParkedPosition { partition: 1, offset: 3, deliveries: 10, parked_micros: 2 }],
            replaying: vec![(0, 2)],
        };
        let record = StateRecord::Checkpoint { definition: definition(), progress: progress.clone() };
        let event = record.to_event();
        assert_eq!(event.event_type, CHECKPOINT);
        assert_eq!(StateRecord::from_event(&event.data).unwrap(), record);
        assert_eq!(record.live(), Some((definition_like(&event), progress)));
        assert!(StateRecord::from_event(b"{\"record\":\"nonsense\"}").is_err());
    }

    fn definition_like(event: &ProposedEvent) -> Definition {
        match StateRecord::from_event(&event.data).unwrap() {
            StateRecord::Checkpoint { definition, .. } => definition,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_retried_create_is_the_same_request_and_another_filter_is_not() {
        let first = definition();
        let mut retry = definition();
        retry.start = BTreeMap::from([(0, 6), (1, 9)]);
        assert!(first.same_request(&retry));
        retry.filter.category = "invoice".to_owned();
        assert!(!first.same_request(&retry));
    }

    #[test]
    fn the_registry_folds_creates_and_deletes() {
        let events: Vec<Vec<u8>> = [
            RegistryRecord::Created { name: "a".into() },
            RegistryRecord::Created { name: "b".into() },
            RegistryRecord::Deleted { name: "a".into() },
            RegistryRecord::Created { name: "b".into() },
        ]
        .iter()
        .map(|record| record.to_event().data)
        .collect();
        assert_eq!(RegistryRecord::fold(events.iter().map(Vec::as_slice)).unwrap(), vec!["b".to_owned()]);
    }

    #[test]
    fn names_and_settings_are_bounded() {
        assert!(validate_name("billing-v2.eu_1").is_ok());
        for bad in ["", "has space", "slash/ed", &"x".repeat(MAX_NAME_BYTES + 1)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        let wire = |ack_timeout_ms, max_deliveries, max_in_flight| {
            Settings::from_wire(Some(v1::SubscriptionSettings { ack_timeout_ms, max_deliveries, max_in_flight }))
        };
        assert_eq!(
            wire(0, 0, 0).unwrap(),
            Settings { ack_timeout_ms: 30_000, max_deliveries: 10, max_in_flight: 1000 }
        );
        assert!(wire(50, 0, 0).is_err());
        assert!(wire(0, 1001, 0).is_err());
        assert!(wire(0, 0, 100_001).is_err());
    }
}
