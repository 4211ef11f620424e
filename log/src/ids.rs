//! The numbers that cross crate lines, each its own type so one cannot be passed for another: a
//! partition's id, an offset in a partition, a revision in a stream. Each serializes as the bare number
//! it wraps, so wire and disk formats do not change.

use serde::Deserialize;
use serde::Serialize;

macro_rules! number {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(value: $inner) -> Self {
                $name(value)
            }
        }

        impl From<$name> for $inner {
            fn from(value: $name) -> Self {
                value.0
            }
        }
    };
}

number!(
    /// A partition: `hash(stream) mod P`, one Raft group.
    PartitionId(u32)
);

number!(
    /// A position in a partition: dense from 0, never reused.
    Offset(u64)
);

number!(
    /// A position in a stream: dense from 0.
    Revision(u64)
);

impl Offset {
    /// The offset after this one.
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl Revision {
    /// The revision after this one.
    pub fn next(self) -> Revision {
        Revision(self.0 + 1)
    }
}
