//! Limits on what one append may carry, and the stateless validation that enforces them.
//!
//! Validation runs where a request enters the system, before anything is written or replicated; the apply
//! step never re-checks limits, so nodes with different limits still apply identically.

use std::collections::HashSet;

use serde::Deserialize;
use serde::Serialize;

use crate::error::InvalidInput;
use crate::event::AppendRequest;
use crate::event::ProposedEvent;

/// The largest stream name, event type or content type the record format can hold, in bytes.
pub const FORMAT_MAX_NAME_BYTES: usize = 255;

/// Limits on appends. Every field has a default; a config file may lower or raise them within the format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest stream name in bytes (1 to 255).
    pub max_stream_name_bytes: usize,
    /// Longest event type in bytes (1 to 255).
    pub max_event_type_bytes: usize,
    /// Largest `data` of one event, in bytes.
    pub max_event_data_bytes: usize,
    /// Largest sum of `data` and metadata (keys and values) over one append, in bytes: what the append costs
    /// in a Raft entry, so entries stay within what the transport carries. (`max_append_data_bytes`, its name
    /// before metadata counted, is still read.)
    #[serde(alias = "max_append_data_bytes")]
    pub max_append_bytes: usize,
    /// Largest metadata of one event (keys and values together), in bytes.
    pub max_metadata_bytes: usize,
    /// Most events in one append.
    pub max_events_per_append: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stream_name_bytes: 255,
            max_event_type_bytes: 255,
            max_event_data_bytes: 1024 * 1024,
            max_append_bytes: 4 * 1024 * 1024,
            max_metadata_bytes: 64 * 1024,
            max_events_per_append: 10_000,
        }
    }
}

impl Limits {
    /// Checks that the limits themselves make sense; returns a description of the first that does not.
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in
            [("max_stream_name_bytes", self.max_stream_name_bytes), ("max_event_type_bytes", self.max_event_type_bytes)]
        {
            if value == 0 || value > FORMAT_MAX_NAME_BYTES {
                return Err(format!("{name} is {value}; it must be 1 to {FORMAT_MAX_NAME_BYTES}"));
            }
        }
        if self.max_events_per_append == 0 {
            return Err("max_events_per_append must be at least 1".to_owned());
        }
        if self.max_event_data_bytes > u32::MAX as usize || self.max_metadata_bytes > u32::MAX as usize {
            return Err("max_event_data_bytes and max_metadata_bytes must fit in 32 bits".to_owned());
        }
        Ok(())
    }

    /// Validates a stream name: 1 to `max_stream_name_bytes` bytes of printable UTF-8 without whitespace.
    pub fn validate_stream(&self, stream: &str) -> Result<(), InvalidInput> {
        let max = self.max_stream_name_bytes;
        if stream.is_empty() {
            return Err(InvalidInput::StreamNameEmpty { max });
        }
        if stream.len() > max {
            return Err(InvalidInput::StreamNameTooLong { len: stream.len(), max });
        }
        if let Some((at, _)) = stream.char_indices().find(|(_, c)| c.is_whitespace() || c.is_control()) {
            return Err(InvalidInput::StreamNameNotPrintable { stream: stream.to_owned(), at });
        }
        Ok(())
    }

    /// Validates a whole append: the stream, every event, and the totals.
    pub fn validate_append(&self, request: &AppendRequest) -> Result<(), InvalidInput> {
        self.validate_stream(&request.stream)?;
        let count = request.events.len();
        if count == 0 {
            return Err(InvalidInput::EmptyAppend);
        }
        if count > self.max_events_per_append {
            return Err(InvalidInput::TooManyEvents { count, max: self.max_events_per_append });
        }
        let mut seen = HashSet::with_capacity(count);
        for (index, event) in request.events.iter().enumerate() {
            self.validate_event(index, event)?;
            if !seen.insert(event.id) {
                return Err(InvalidInput::DuplicateEventId { id: event.id });
            }
        }
        let total = request.payload_bytes();
        if total > self.max_append_bytes {
            return Err(InvalidInput::AppendTooLarge { len: total, max: self.max_append_bytes });
        }
        Ok(())
    }

    /// The largest encoded append request a transport should decode: the append limit plus room for every
    /// event's envelope (a 16-byte id, a type and a content type at their longest, field framing) and 64 KiB
    /// of slack for the rest of the framing. A larger request is refused before it is decoded, so no request
    /// costs much more memory than a valid one. (An append under the payload limit whose metadata is
    /// thousands of tiny pairs can still exceed it: it is refused as too large, and writes nothing.)
    pub fn max_append_request_bytes(&self) -> usize {
        const EVENT_ENVELOPE_BYTES: usize = 16 + 2 * FORMAT_MAX_NAME_BYTES + 64;
        self.max_append_bytes + self.max_events_per_append * EVENT_ENVELOPE_BYTES + 64 * 1024
    }

    fn validate_event(&self, index: usize, event: &ProposedEvent) -> Result<(), InvalidInput> {
        if event.id.is_nil() {
            return Err(InvalidInput::NilEventId { index });
        }
        let max = self.max_event_type_bytes;
        if event.event_type.is_empty() {
            return Err(InvalidInput::EventTypeEmpty { index, max });
        }
        if event.event_type.len() > max {
            return Err(InvalidInput::EventTypeTooLong { index, len: event.event_type.len(), max });
        }
        if event.event_type.chars().any(char::is_control) {
            return Err(InvalidInput::EventTypeNotPrintable { index });
        }
        if event.content_type.len() > FORMAT_MAX_NAME_BYTES {
            return Err(InvalidInput::ContentTypeTooLong {
                index,
                len: event.content_type.len(),
                max: FORMAT_MAX_NAME_BYTES,
            });
        }
        if event.data.len() > self.max_event_data_bytes {
            return Err(InvalidInput::EventDataTooLarge {
                index,
                len: event.data.len(),
                max: self.max_event_data_bytes,
            });
        }
        let metadata: usize = event.metadata.iter().map(|(key, value)| key.len() + value.len()).sum();
        if metadata > self.max_metadata_bytes {
            return Err(InvalidInput::MetadataTooLarge { index, len: metadata, max: self.max_metadata_bytes });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::event::ExpectedRevision;

    fn append(stream: &str, events: Vec<ProposedEvent>) -> AppendRequest {
        AppendRequest { stream: stream.to_owned(), expected: ExpectedRevision::Any, events }
    }

    fn event() -> ProposedEvent {
        ProposedEvent::json("OrderPlaced", b"{}".to_vec())
    }

    #[test]
    fn accepts_a_plain_append() {
        assert_eq!(Limits::default().validate_append(&append("order-42", vec![event(), event()])), Ok(()));
    }

    #[test]
    fn stream_name_rules() {
        let limits = Limits::default();
        assert_eq!(limits.validate_stream(""), Err(InvalidInput::StreamNameEmpty { max: 255 }));
        let long = "a".repeat(256);
        assert_eq!(limits.validate_stream(&long), Err(InvalidInput::StreamNameTooLong { len: 256, max: 255 }));
        assert_eq!(limits.validate_stream(&"a".repeat(255)), Ok(()));
        assert!(matches!(limits.validate_stream("order 42"), Err(InvalidInput::StreamNameNotPrintable { at: 5, .. })));
        assert!(matches!(limits.validate_stream("order\u{7}"), Err(InvalidInput::StreamNameNotPrintable { .. })));
        assert!(matches!(limits.validate_stream("a\u{3000}b"), Err(InvalidInput::StreamNameNotPrintable { .. })));
        assert_eq!(limits.validate_stream("bestellung-ä-42"), Ok(()));
        let tight = Limits { max_stream_name_bytes: 4, ..Limits::default() };
        assert_eq!(tight.validate_stream("order"), Err(InvalidInput::StreamNameTooLong { len: 5, max: 4 }));
    }

    #[test]
    fn event_type_rules() {
        let limits = Limits::default();
        let mut e = event();
        e.event_type = String::new();
        assert_eq!(
            limits.validate_append(&append("s", vec![e.clone()])),
            Err(InvalidInput::EventTypeEmpty { index: 0, max: 255 })
        );
        e.event_type = "t".repeat(256);
        assert_eq!(
            limits.validate_append(&append("s", vec![event(), e.clone()])),
            Err(InvalidInput::EventTypeTooLong { index: 1, len: 256, max: 255 })
        );
        e.event_type = "a\nb".to_owned();
        assert_eq!(
            limits.validate_append(&append("s", vec![e])),
            Err(InvalidInput::EventTypeNotPrintable { index: 0 })
        );
    }

    #[test]
    fn content_type_is_bounded_by_the_format() {
        let mut e = event();
        e.content_type = "x".repeat(256);
        assert_eq!(
            Limits::default().validate_append(&append("s", vec![e])),
            Err(InvalidInput::ContentTypeTooLong { index: 0, len: 256, max: 255 })
        );
    }

    #[test]
    fn data_limits() {
        let limits = Limits::default();
        let mut big = event();
        big.data = vec![0; 1024 * 1024 + 1];
        assert_eq!(
            limits.validate_append(&append("s", vec![big])),
            Err(InvalidInput::EventDataTooLarge { index: 0, len: 1024 * 1024 + 1, max: 1024 * 1024 })
        );
        let events: Vec<_> = (0..5)
            .map(|_| {
                let mut e = event();
                e.data = vec![0; 1024 * 1024];
                e
            })
            .collect();
        assert_eq!(
            limits.validate_append(&append("s", events)),
            Err(InvalidInput::AppendTooLarge { len: 5 * 1024 * 1024, max: 4 * 1024 * 1024 })
        );
    }

    #[test]
    fn metadata_counts_toward_the_append_total() {
        // 100 events of 1 KiB data and 40 KiB metadata each: 4.1 MB, over the 4 MiB limit by metadata alone.
        let events: Vec<_> = (0..100)
            .map(|_| {
                let mut e = event();
                e.data = vec![b' '; 1024];
                e.metadata.insert("trace".to_owned(), "x".repeat(40 * 1024));
                e
            })
            .collect();
        let len = 100 * (1024 + 5 + 40 * 1024);
        assert_eq!(
            Limits::default().validate_append(&append("s", events)),
            Err(InvalidInput::AppendTooLarge { len, max: 4 * 1024 * 1024 })
        );
    }

    #[test]
    fn the_decode_limit_sits_just_above_the_append_limit() {
        let limits = Limits::default();
        let decode = limits.max_append_request_bytes();
        assert!(decode > limits.max_append_bytes + limits.max_events_per_append * 16, "room for every event's id");
        assert!(decode < 16 * 1024 * 1024, "{decode} bytes: far below the transport's 64 MiB");
    }

    #[test]
    fn metadata_limit_counts_keys_and_values() {
        let mut e = event();
        e.metadata.insert("k".repeat(32 * 1024), "v".repeat(32 * 1024 + 1));
        assert_eq!(
            Limits::default().validate_append(&append("s", vec![e])),
            Err(InvalidInput::MetadataTooLarge { index: 0, len: 64 * 1024 + 1, max: 64 * 1024 })
        );
    }

    #[test]
    fn append_shape_rules() {
        let limits = Limits { max_events_per_append: 2, ..Limits::default() };
        assert_eq!(limits.validate_append(&append("s", vec![])), Err(InvalidInput::EmptyAppend));
        assert_eq!(
            limits.validate_append(&append("s", vec![event(), event(), event()])),
            Err(InvalidInput::TooManyEvents { count: 3, max: 2 })
        );
        let e = event();
        assert_eq!(
            limits.validate_append(&append("s", vec![e.clone(), e.clone()])),
            Err(InvalidInput::DuplicateEventId { id: e.id })
        );
        let mut nil = event();
        nil.id = Uuid::nil();
        assert_eq!(limits.validate_append(&append("s", vec![nil])), Err(InvalidInput::NilEventId { index: 0 }));
    }

    #[test]
    fn limits_themselves_are_checked() {
        assert!(Limits::default().check().is_ok());
        assert!(Limits { max_stream_name_bytes: 0, ..Limits::default() }.check().is_err());
        assert!(Limits { max_event_type_bytes: 256, ..Limits::default() }.check().is_err());
        assert!(Limits { max_events_per_append: 0, ..Limits::default() }.check().is_err());
    }
}
