//! What the workspace's fuzz targets share: damage done to real bytes, so a decoder meets inputs that
//! are almost right (the ones its checks must catch) rather than noise its first check refuses.
//!
//! The fuzz targets are proptests named `fuzz_*` in `fjord-log` (records, segments), `fjord-raft` (received
//! snapshots) and `fjord` (append requests as clients send them). CI runs each briefly; for a longer run,
//! `PROPTEST_CASES=200000 cargo test --workspace fuzz_`.

/// One edit to a byte string: at position `at` (taken modulo the length + 1), per `kind` (modulo 3)
/// overwrite the byte there with `byte`, insert `byte` there, or cut the bytes from there on.
pub type Edit = (usize, u8, u8);

/// Applies `edits` to `bytes`, in order.
pub fn damage(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for &(at, byte, kind) in edits {
        let at = at % (bytes.len() + 1);
        match kind % 3 {
            0 if at < bytes.len() => bytes[at] = byte,
            0 => bytes.push(byte),
            1 => bytes.insert(at, byte),
            _ => bytes.truncate(at),
        }
    }
}
