//! The record encoding: one [`RecordedEvent`] as bytes, the same in RocksDB, in segments and on the wire, so
//! a replica's copy of an offset is byte-identical to the leader's. Layout in log/FORMAT.md ("Record").
//!
//! Decoding never trusts its input: every length is bounds-checked and a CRC32C covers the whole record.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::error::Error;
use crate::error::Result;
use crate::event::RecordedEvent;
use crate::ids::Offset;
use crate::ids::Revision;

/// The record format version this code writes.
pub const RECORD_VERSION: u8 = 1;

/// Encodes `event` into `out` (appending). Fails only if a name is longer than the format's 255 bytes or a
/// length does not fit in 32 bits, which validation prevents.
pub fn encode_record(event: &RecordedEvent, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    out.push(RECORD_VERSION);
    out.extend_from_slice(&event.offset.0.to_le_bytes());
    out.extend_from_slice(&event.revision.0.to_le_bytes());
    out.extend_from_slice(&event.timestamp_micros.to_le_bytes());
    out.extend_from_slice(event.id.as_bytes());
    put_short(out, "stream", &event.stream)?;
    put_short(out, "event type", &event.event_type)?;
    put_short(out, "content type", &event.content_type)?;
    put_len(out, event.metadata.len())?;
    for (key, value) in &event.metadata {
        put_long(out, key.as_bytes())?;
        put_long(out, value.as_bytes())?;
    }
    put_long(out, &event.data)?;
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Encodes `event` into a new buffer.
pub fn record_bytes(event: &RecordedEvent) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64 + event.stream.len() + event.event_type.len() + event.data.len());
    encode_record(event, &mut out)?;
    Ok(out)
}

/// Checks a stored record's CRC32C (its last four bytes) without decoding it; returns the bytes it covers.
pub(crate) fn verify_record_crc(bytes: &[u8]) -> Result<&[u8]> {
    let Some(body_len) = bytes.len().checked_sub(4) else {
        return Err(Error::corrupt("record", format!("{} bytes is shorter than a checksum", bytes.len())));
    };
    let (body, crc) = bytes.split_at(body_len);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(Error::Checksum {
            what: "record",
            detail: format!("crc32c is {computed:#010x}, stored {stored:#010x}"),
        });
    }
    Ok(body)
}

/// Decodes one record, checking its CRC32C and every length. `bytes` must be exactly one record.
pub fn decode_record(bytes: &[u8]) -> Result<RecordedEvent> {
    let view = view_record(bytes)?;
    Ok(RecordedEvent {
        id: view.id,
        stream: view.stream.to_owned(),
        event_type: view.event_type.to_owned(),
        content_type: view.content_type.to_owned(),
        data: view.data.to_vec(),
        metadata: view.metadata()?,
        offset: view.offset,
        revision: view.revision,
        timestamp_micros: view.timestamp_micros,
    })
}

/// One record's fields, borrowed from its stored bytes: what a scan reads without copying the fields it
/// does not use. Made only by [`view_record`], which has checked the CRC32C and every length.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    /// The event's offset in its partition.
    pub offset: Offset,
    /// The event's revision in its stream.
    pub revision: Revision,
    /// The commit time, microseconds since the Unix epoch.
    pub timestamp_micros: i64,
    /// The idempotency key given at append.
    pub id: Uuid,
    /// The stream.
    pub stream: &'a str,
    /// The event's type.
    pub event_type: &'a str,
    /// The data's content type.
    pub content_type: &'a str,
    /// The data.
    pub data: &'a [u8],
    /// The metadata pairs, still encoded ([`RecordView::metadata`] decodes them).
    metadata_pairs: u32,
    metadata_bytes: &'a [u8],
}

impl RecordView<'_> {
    /// The metadata, decoded.
    pub fn metadata(&self) -> Result<BTreeMap<String, String>> {
        let mut r = Reader::new(self.metadata_bytes);
        let mut metadata = BTreeMap::new();
        for _ in 0..self.metadata_pairs {
            let key = r.long_str()?;
            let value = r.long_str()?;
            metadata.insert(key.to_owned(), value.to_owned());
        }
        r.finish()?;
        Ok(metadata)
    }
}

/// Views one record, checking its CRC32C and every length. `bytes` must be exactly one record.
pub fn view_record(bytes: &[u8]) -> Result<RecordView<'_>> {
    let body = verify_record_crc(bytes)?;
    let mut r = Reader::new(body);
    let version = r.u8()?;
    if version != RECORD_VERSION {
        return Err(Error::corrupt("record", format!("unknown record version {version}")));
    }
    let offset = Offset(r.u64()?);
    let revision = Revision(r.u64()?);
    let timestamp_micros = r.i64()?;
    let id = Uuid::from_bytes(r.array::<16>()?);
    let stream = r.short_str()?;
    let event_type = r.short_str()?;
    let content_type = r.short_str()?;
    let metadata_pairs = r.u32()?;
    let metadata_start = r.position();
    for _ in 0..metadata_pairs {
        r.long_str()?;
        r.long_str()?;
    }
    let metadata_bytes = &body[metadata_start..r.position()];
    let data = r.long_bytes()?;
    r.finish()?;
    Ok(RecordView {
        offset,
        revision,
        timestamp_micros,
        id,
        stream,
        event_type,
        content_type,
        data,
        metadata_pairs,
        metadata_bytes,
    })
}

fn put_short(out: &mut Vec<u8>, what: &str, value: &str) -> Result<()> {
    let len = u8::try_from(value.len())
        .map_err(|_| Error::Config(format!("{what} of {} bytes does not fit the record format", value.len())))?;
    out.push(len);
    out.extend_from_slice(value.as_bytes());
    Ok(())
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<()> {
    let len = u32::try_from(len).map_err(|_| Error::Config(format!("length {len} does not fit the record format")))?;
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

fn put_long(out: &mut Vec<u8>, value: &[u8]) -> Result<()> {
    put_len(out, value.len())?;
    out.extend_from_slice(value);
    Ok(())
}

/// A bounds-checked little-endian reader over untrusted bytes; every failure is [`Error::Corrupt`].
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0, what: "record" }
    }

    pub(crate) fn named(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, at: 0, what }
    }

    pub(crate) fn position(&self) -> usize {
        self.at
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(len).filter(|&end| end <= self.bytes.len()).ok_or_else(|| {
            Error::corrupt(self.what, format!("needs {len} bytes at {}, has {}", self.at, self.bytes.len() - self.at))
        })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub(crate) fn short_string(&mut self) -> Result<String> {
        Ok(self.short_str()?.to_owned())
    }

    /// A string of at most 255 bytes (its length in one byte), borrowed.
    pub(crate) fn short_str(&mut self) -> Result<&'a str> {
        let len = usize::from(self.u8()?);
        self.str(len)
    }

    /// A string with a 32-bit length, borrowed.
    fn long_str(&mut self) -> Result<&'a str> {
        let len = self.u32()? as usize;
        self.str(len)
    }

    pub(crate) fn long_bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn str(&mut self, len: usize) -> Result<&'a str> {
        let what = self.what;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|e| Error::corrupt(what, format!("invalid UTF-8: {e}")))
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(Error::corrupt(self.what, format!("{} trailing bytes", self.bytes.len() - self.at)))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::collection::btree_map;
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    /// Any valid recorded event (names within the format's 255 bytes).
    pub(crate) fn arb_event() -> impl Strategy<Value = RecordedEvent> {
        (
            any::<u128>(),
            "[a-z]{1,8}-[0-9]{1,4}",
            "[A-Za-z]{1,20}",
            prop_oneof![Just("application/json".to_owned()), Just("application/octet-stream".to_owned())],
            vec(any::<u8>(), 0..300),
            btree_map("[a-z]{1,6}", "[ -~]{0,12}", 0..3),
            any::<u32>(),
            0u64..1000,
            any::<i64>(),
        )
            .prop_map(
                |(id, stream, event_type, content_type, data, metadata, offset, revision, timestamp_micros)| {
                    RecordedEvent {
                        id: Uuid::from_u128(id),
                        stream,
                        event_type,
                        content_type,
                        data,
                        metadata,
                        offset: Offset(u64::from(offset)),
                        revision: Revision(revision),
                        timestamp_micros,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn round_trips(event in arb_event()) {
            let bytes = record_bytes(&event).unwrap();
            prop_assert_eq!(decode_record(&bytes).unwrap(), event);
        }

        #[test]
        fn any_flipped_byte_is_detected(event in arb_event(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = record_bytes(&event).unwrap();
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
            prop_assert!(decode_record(&bytes).is_err());
        }

        /// Fuzz target: bytes under a valid checksum (so the parser, not the CRC, meets them), made of a real
        /// record with bytes overwritten, inserted and cut, or of noise, decode or fail cleanly, never panic or
        /// allocate by a length they claim. More cases on demand: `PROPTEST_CASES=200000`.
        #[test]
        fn fuzz_bytes_under_a_valid_checksum_decode_or_fail_cleanly(
            event in arb_event(),
            edits in prop::collection::vec(any::<crate::fuzzing::Edit>(), 0..8),
            noise in prop::collection::vec(any::<u8>(), 0..64),
            use_noise in any::<bool>(),
        ) {
            let mut body = if use_noise { noise } else { record_bytes(&event).unwrap() };
            body.truncate(body.len().saturating_sub(4));
            crate::fuzzing::damage(&mut body, &edits);
            let crc = crc32c::crc32c(&body);
            body.extend_from_slice(&crc.to_le_bytes());
            if let Ok(decoded) = decode_record(&body) {
                let again = decode_record(&record_bytes(&decoded).unwrap()).unwrap();
                prop_assert_eq!(again, decoded, "what decodes encodes and decodes back to itself");
            }
        }

        #[test]
        fn any_truncation_is_detected(event in arb_event(), cut in any::<prop::sample::Index>()) {
            let bytes = record_bytes(&event).unwrap();
            let cut = cut.index(bytes.len());
            prop_assert!(decode_record(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn names_longer_than_the_format_are_refused() {
        let event = RecordedEvent {
            id: Uuid::from_u128(1),
            stream: "s".repeat(256),
            event_type: "t".to_owned(),
            content_type: String::new(),
            data: vec![],
            metadata: BTreeMap::new(),
            offset: Offset(0),
            revision: Revision(0),
            timestamp_micros: 0,
        };
        assert!(record_bytes(&event).is_err());
    }
}
