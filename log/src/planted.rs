//! Bugs planted on purpose, so the fault tests can prove their history checker catches what it claims to:
//! each is a real durability or safety bug, switched on by naming it in `FJORD_PLANTED_BUG`.
//!
//! Only debug builds read the variable; in a release build [`planted`] is `false` without looking, so no
//! production binary can be talked into losing data.

/// A bug the fault tests may plant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// The Raft log reports entries persisted without ever syncing the write-ahead log.
    AckBeforeFsync,
    /// The leader acknowledges an append once it has applied it itself, before a majority has the entry.
    AckBeforeMajority,
    /// Apply ignores appends' expected revisions.
    SkipExpectedRevision,
    /// The database replays its write-ahead log to the first bad record and opens without a word (RocksDB's
    /// point-in-time recovery), and nothing holds what it opened against what was made durable.
    TrustPointInTimeReplay,
}

impl PlantedBug {
    /// The name `FJORD_PLANTED_BUG` gives it.
    pub const fn name(self) -> &'static str {
        match self {
            PlantedBug::AckBeforeFsync => "ack-before-fsync",
            PlantedBug::AckBeforeMajority => "ack-before-majority",
            PlantedBug::SkipExpectedRevision => "skip-expected-revision",
            PlantedBug::TrustPointInTimeReplay => "trust-point-in-time-replay",
        }
    }
}

/// Whether `bug` is planted in this process (debug builds only).
pub fn planted(bug: PlantedBug) -> bool {
    #[cfg(debug_assertions)]
    {
        static PLANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let named = PLANTED.get_or_init(|| {
            let named = std::env::var("FJORD_PLANTED_BUG").ok();
            if let Some(name) = &named {
                tracing::warn!(bug = %name, "a bug is planted on purpose (FJORD_PLANTED_BUG): this node is unsafe");
            }
            named
        });
        named.as_deref() == Some(bug.name())
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = bug;
        false
    }
}
