//! Which partition a stream lives in: `xxh3_64(stream name bytes) mod partitions`.
//!
//! The function is part of the on-disk contract (log/FORMAT.md): changing it would move streams between
//! partitions, so it never changes for a given store.

use xxhash_rust::xxh3::xxh3_64;

/// The partition of `stream` in a store of `partitions` partitions (`partitions` must be at least 1).
pub fn partition_of(stream: &str, partitions: u32) -> u32 {
    let partitions = u64::from(partitions.max(1));
    // The remainder is below `partitions`, which came from a u32, so the conversion cannot fail.
    u32::try_from(xxh3_64(stream.as_bytes()) % partitions).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_stable_and_in_range() {
        // Pinned values: the mapping is part of the storage contract.
        assert_eq!(partition_of("order-42", 1), 0);
        let p = partition_of("order-42", 16);
        assert!(p < 16);
        assert_eq!(p, partition_of("order-42", 16));
        assert_eq!(xxh3_64(b"order-42") % 16, u64::from(p));
    }

    #[test]
    fn spreads_streams() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition_of(&format!("order-{i}"), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }
}
