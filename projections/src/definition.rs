//! View definitions and where the region keeps them: the `$views` stream. Every `CREATE`, `CREATE OR
//! REPLACE` and `DROP` is one event on that stream, appended through Raft like any other, so every node (and
//! later every edge) folds the same records in the same order into the same [`Registry`]: the same views, of
//! the same versions, defined at the same offsets.

use std::collections::BTreeMap;

use fjord_log::ProposedEvent;
use fjord_log::RecordedEvent;
use serde::Deserialize;
use serde::Serialize;

use crate::error::ViewError;

/// The stream the region's view definitions are kept in.
pub const DEFINITIONS_STREAM: &str = "$views";
/// The longest view name, bytes (Postgres's identifier limit).
pub const MAX_NAME_BYTES: usize = 63;

/// One version of a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDefinition {
    /// The view's name: its table's name in SQL.
    pub name: String,
    /// 1 for the first definition of the name, one more for each `CREATE OR REPLACE` (and a later `CREATE`
    /// after a `DROP`): a version never repeats.
    pub version: u64,
    /// The `SELECT` it is defined by.
    pub sql: String,
    /// The stream prefixes it folds: those the defining token may query (`""`: every stream).
    pub scope: Vec<String>,
    /// When it was defined (the record's commit time), µs since the Unix epoch.
    pub defined_micros: i64,
}

/// A record of the `$views` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DefinitionRecord {
    /// A view is defined, or (with `replace`) redefined.
    Defined {
        /// The view.
        name: String,
        /// Its `SELECT`.
        sql: String,
        /// The stream prefixes it folds.
        scope: Vec<String>,
        /// Whether an existing view of the name is replaced (otherwise the record defines a new one only).
        replace: bool,
    },
    /// A view is dropped.
    Dropped {
        /// The view.
        name: String,
    },
}

impl DefinitionRecord {
    /// The record as an event to append to [`DEFINITIONS_STREAM`].
    pub fn to_event(&self) -> Result<ProposedEvent, ViewError> {
        let event_type = match self {
            DefinitionRecord::Defined { .. } => "ViewDefined",
            DefinitionRecord::Dropped { .. } => "ViewDropped",
        };
        let data = serde_json::to_vec(self).map_err(|error| ViewError::Internal(error.to_string()))?;
        Ok(ProposedEvent {
            id: uuid::Uuid::new_v4(),
            event_type: event_type.to_owned(),
            content_type: "application/json".to_owned(),
            data,
            metadata: BTreeMap::new(),
        })
    }
}

/// Checks that `name` can name a view: lowercase letters, digits and underscores, starting with a letter,
/// at most [`MAX_NAME_BYTES`] (it names files on every node, and SQL folds unquoted names to lowercase).
pub fn check_name(name: &str) -> Result<(), ViewError> {
    let mut bytes = name.bytes();
    let first_is_letter = bytes.next().is_some_and(|byte| byte.is_ascii_lowercase());
    let rest_ok = name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
    match first_is_letter && rest_ok && name.len() <= MAX_NAME_BYTES {
        true => Ok(()),
        false => Err(ViewError::BadName(name.to_owned())),
    }
}

/// The region's views, as the `$views` stream defines them up to a revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    views: BTreeMap<String, ViewDefinition>,
    /// The last version each name had, dropped or not.
    versions: BTreeMap<String, u64>,
    /// The revision of the last record folded (`None`: none yet).
    revision: Option<u64>,
}

impl Registry {
    /// Folds the next record of the stream (`event`, at the revision after [`Self::revision`]). A record
    /// that does not apply (a `CREATE` of a view that exists, a `DROP` of one that does not, a record this
    /// version cannot read) changes nothing but the revision: every node skips it alike.
    pub fn apply(&mut self, event: &RecordedEvent) {
        self.revision = Some(event.revision.0);
        let record = match serde_json::from_slice::<DefinitionRecord>(&event.data) {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(revision = event.revision.0, %error, "a view definition record this node cannot read");
                return;
            }
        };
        match record {
            DefinitionRecord::Defined { name, sql, scope, replace } => {
                if check_name(&name).is_err() || (self.views.contains_key(&name) && !replace) {
                    return;
                }
                let version = self.versions.get(&name).copied().unwrap_or(0) + 1;
                self.versions.insert(name.clone(), version);
                let definition =
                    ViewDefinition { name: name.clone(), version, sql, scope, defined_micros: event.timestamp_micros };
                self.views.insert(name, definition);
            }
            DefinitionRecord::Dropped { name } => {
                self.views.remove(&name);
            }
        }
    }

    /// The views, by name.
    pub fn views(&self) -> &BTreeMap<String, ViewDefinition> {
        &self.views
    }

    /// The revision of the last record folded.
    pub fn revision(&self) -> Option<u64> {
        self.revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(revision: u64, record: &DefinitionRecord) -> RecordedEvent {
        let event = record.to_event().unwrap();
        RecordedEvent {
            stream: DEFINITIONS_STREAM.to_owned(),
            revision: fjord_log::Revision(revision),
            offset: fjord_log::Offset(revision * 3),
            id: event.id,
            event_type: event.event_type,
            content_type: event.content_type,
            data: event.data,
            metadata: event.metadata,
            timestamp_micros: 1_000 + revision as i64,
        }
    }

    #[test]
    fn records_fold_into_versions_that_never_repeat() {
        let define = |name: &str, sql: &str, replace| DefinitionRecord::Defined {
            name: name.to_owned(),
            sql: sql.to_owned(),
            scope: vec![String::new()],
            replace,
        };
        let mut registry = Registry::default();
        let records = [
            define("orders", "SELECT 1", false),
            define("orders", "SELECT 2", false),
            define("orders", "SELECT 3", true),
            DefinitionRecord::Dropped { name: "orders".to_owned() },
            define("orders", "SELECT 4", false),
            define("Bad-Name", "SELECT 5", false),
        ];
        for (revision, record) in records.iter().enumerate() {
            registry.apply(&recorded(revision as u64, record));
        }
        let orders = &registry.views()["orders"];
        assert_eq!((orders.version, orders.sql.as_str()), (3, "SELECT 4"));
        assert_eq!(registry.views().len(), 1);
        assert_eq!(registry.revision(), Some(5));
        let mut garbage = recorded(6, &records[0]);
        garbage.data = b"{not json".to_vec();
        registry.apply(&garbage);
        assert_eq!((registry.views().len(), registry.revision()), (1, Some(6)));
    }

    #[test]
    fn view_names_are_safe_identifiers() {
        for good in ["orders", "revenue_by_category", "v2"] {
            check_name(good).unwrap();
        }
        for bad in ["", "2v", "Orders", "a-b", "../x", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
