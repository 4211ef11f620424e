//! A view version's checkpoint: its state and the offsets it folded, in one file, so the two are saved
//! together or not at all. The file is written beside its old self, synced, renamed over it and the
//! directory synced: a crash leaves the old checkpoint or the new one, never a mix.
//!
//! Layout (little-endian): the magic `FJVIEW01`; the header's length (u32), the header (JSON: the
//! definition, the offsets, the body's length and CRC-32C) and the header's CRC-32C (u32); then the body,
//! the state as an Arrow IPC stream. A file whose magic, lengths or checksums do not hold is refused
//! ([`ViewError::Checkpoint`]); the caller then folds the view again from the log.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read as _;
use std::io::Write as _;
use std::path::Path;
use std::path::PathBuf;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use serde::Deserialize;
use serde::Serialize;

use crate::definition::ViewDefinition;
use crate::error::ViewError;

const MAGIC: &[u8; 8] = b"FJVIEW01";
/// The largest header read back, bytes: a header is a definition and its offsets.
const MAX_HEADER_BYTES: u32 = 16 * 1024 * 1024;
/// The checkpoint's file name in its view version's directory.
const FILE_NAME: &str = "checkpoint";

/// What a checkpoint's header says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    definition: ViewDefinition,
    /// Per partition, the offset of the next event to fold.
    offsets: BTreeMap<u32, u64>,
    /// Whether the version had caught up with the log once (it serves readers).
    caught_up: bool,
    body_bytes: u64,
    body_crc32c: u32,
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Checkpoint {
    /// The version it is of.
    pub definition: ViewDefinition,
    /// Per partition, the offset of the next event to fold.
    pub offsets: BTreeMap<u32, u64>,
    /// Whether the version had caught up with the log once.
    pub caught_up: bool,
    /// The state, as the fold gave it.
    pub batches: Vec<RecordBatch>,
}

/// The directory of a view version's files under `views_dir`.
pub fn version_dir(views_dir: &Path, definition: &ViewDefinition) -> PathBuf {
    views_dir.join(format!("{}.{}", definition.name, definition.version))
}

/// Saves `batches` (of `schema`) and `offsets` as `definition`'s checkpoint in `dir`; returns the bytes
/// written.
pub fn save(
    dir: &Path,
    definition: &ViewDefinition,
    offsets: &BTreeMap<u32, u64>,
    caught_up: bool,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<u64, ViewError> {
    let path = dir.join(FILE_NAME);
    let failed = |why: String| ViewError::Checkpoint { path: path.clone(), why };
    let mut body = StreamWriter::try_new(Vec::new(), schema).map_err(|e| failed(e.to_string()))?;
    for batch in batches {
        body.write(batch).map_err(|e| failed(e.to_string()))?;
    }
    body.finish().map_err(|e| failed(e.to_string()))?;
    let body = body.into_inner().map_err(|e| failed(e.to_string()))?;
    let header = Header {
        definition: definition.clone(),
        offsets: offsets.clone(),
        caught_up,
        body_bytes: body.len() as u64,
        body_crc32c: crc32c::crc32c(&body),
    };
    let header = serde_json::to_vec(&header).map_err(|e| failed(e.to_string()))?;
    let header_len = u32::try_from(header.len()).map_err(|_| failed("the header is over 4 GiB".to_owned()))?;
    std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
    let temporary = dir.join(format!("{FILE_NAME}.new"));
    let mut file = File::create(&temporary).map_err(|e| failed(e.to_string()))?;
    let mut write = |bytes: &[u8]| file.write_all(bytes).map_err(|e| failed(e.to_string()));
    write(MAGIC)?;
    write(&header_len.to_le_bytes())?;
    write(&header)?;
    write(&crc32c::crc32c(&header).to_le_bytes())?;
    write(&body)?;
    file.sync_all().map_err(|e| failed(e.to_string()))?;
    std::fs::rename(&temporary, &path).map_err(|e| failed(e.to_string()))?;
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(|e| failed(e.to_string()))?;
    Ok(8 + 4 + header.len() as u64 + 4 + body.len() as u64)
}

/// Reads the checkpoint in `dir`: `None` when there is none, an error when it is damaged.
pub fn load(dir: &Path) -> Result<Option<Checkpoint>, ViewError> {
    let path = dir.join(FILE_NAME);
    let failed = |why: String| ViewError::Checkpoint { path: path.clone(), why };
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(failed(error.to_string())),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| failed(e.to_string()))?;
    let (magic, rest) = bytes.split_at_checked(8).ok_or_else(|| failed("shorter than its magic".to_owned()))?;
    if magic != MAGIC {
        return Err(failed("not a view checkpoint (bad magic)".to_owned()));
    }
    let (length, rest) = rest.split_at_checked(4).ok_or_else(|| failed("no header length".to_owned()))?;
    let length = u32::from_le_bytes(length.try_into().map_err(|_| failed("no header length".to_owned()))?);
    if length > MAX_HEADER_BYTES {
        return Err(failed(format!("a header of {length} bytes, over the limit of {MAX_HEADER_BYTES}")));
    }
    let (header, rest) = rest.split_at_checked(length as usize).ok_or_else(|| failed("truncated header".to_owned()))?;
    let (crc, body) = rest.split_at_checked(4).ok_or_else(|| failed("no header checksum".to_owned()))?;
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| failed("no header checksum".to_owned()))?);
    if crc32c::crc32c(header) != crc {
        return Err(failed("the header's checksum does not match".to_owned()));
    }
    let header: Header = serde_json::from_slice(header).map_err(|e| failed(format!("unreadable header: {e}")))?;
    if body.len() as u64 != header.body_bytes || crc32c::crc32c(body) != header.body_crc32c {
        return Err(failed("the state's length or checksum does not match".to_owned()));
    }
    let reader = StreamReader::try_new(body, None).map_err(|e| failed(e.to_string()))?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| failed(e.to_string()))?;
    Ok(Some(Checkpoint {
        definition: header.definition,
        offsets: header.offsets,
        caught_up: header.caught_up,
        batches,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::DataType;
    use datafusion::arrow::datatypes::Field;
    use datafusion::arrow::datatypes::Schema;

    use super::*;

    #[test]
    fn a_checkpoint_reads_back_and_any_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let definition = ViewDefinition {
            name: "totals".to_owned(),
            version: 2,
            sql: "SELECT count(*) FROM events".to_owned(),
            scope: vec![String::new()],
            defined_micros: 7,
        };
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
        let offsets = BTreeMap::from([(0, 10), (3, 4)]);
        assert!(load(dir.path()).unwrap().is_none());
        save(dir.path(), &definition, &offsets, true, &schema, std::slice::from_ref(&batch)).unwrap();
        let read = load(dir.path()).unwrap().unwrap();
        assert_eq!((read.definition, read.offsets, read.caught_up), (definition, offsets, true));
        assert_eq!(read.batches, vec![batch]);
        let path = dir.path().join(FILE_NAME);
        let good = std::fs::read(&path).unwrap();
        for at in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            std::fs::write(&path, &bad).unwrap();
            assert!(matches!(load(dir.path()), Err(ViewError::Checkpoint { .. })), "a flip at byte {at}");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(matches!(load(dir.path()), Err(ViewError::Checkpoint { .. })));
    }
}
