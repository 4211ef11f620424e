//! `fjord-projections`: views. Their definitions, kept in the region's `$views` stream ([`definition`]);
//! the SQL they are written in ([`sql`]) and its compilation into the steps of an incremental fold
//! ([`plan`]); the fold of events, decoded once into Arrow ([`batch`], [`schema`]), into a view's Arrow
//! state ([`fold`]); checkpoints that store state and applied offsets atomically ([`checkpoint`]); and the
//! node's views, each folding as the log grows, rebuilt in the background and swapped in when a definition
//! changes ([`views`]). The streams a reader or a view may see are a [`scope::StreamScope`].
//!
//! It builds on `fjord-log` and DataFusion, never on Raft or the query layer: the node hands it a
//! [`views::DefinitionLog`] to write definitions through, and the query layer reads views as tables.

pub mod batch;
pub mod checkpoint;
pub mod definition;
pub mod error;
pub mod fold;
#[cfg(test)]
mod fold_tests;
pub mod plan;
pub mod schema;
pub mod scope;
pub mod sql;
pub mod views;

pub use definition::ViewDefinition;
pub use error::ViewError;
pub use scope::StreamScope;
pub use views::DefinitionLog;
pub use views::Progress;
pub use views::Version;
pub use views::ViewEntry;
pub use views::Views;
pub use views::ViewsConfig;
