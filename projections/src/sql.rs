//! The SQL every part of a node speaks: DataFusion with Postgres's dialect (`->>` on JSON, what psql and
//! drivers send) and the JSON functions. The query engine runs queries with it and views are planned with
//! it, so a view's `SELECT` means exactly what the same `SELECT` means as a query.

use std::sync::Arc;

use datafusion::catalog::CatalogProvider;
use datafusion::catalog::CatalogProviderList;
use datafusion::catalog::SchemaProvider;
use datafusion::catalog::TableProvider;
use datafusion::catalog::memory::MemoryCatalogProvider;
use datafusion::catalog::memory::MemoryCatalogProviderList;
use datafusion::catalog::memory::MemorySchemaProvider;
use datafusion::common::config::Dialect;
use datafusion::execution::SessionState;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::SessionConfig;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast;

use crate::error::ViewError;

/// The catalog every table lives in (`fjord.public.events`).
pub const CATALOG: &str = "fjord";
/// The schema every table lives in.
pub const SCHEMA: &str = "public";

/// A session state with `config` (set to Postgres's dialect and the `fjord.public` defaults), the JSON
/// functions, and `runtime` (DataFusion's default runtime when `None`).
pub fn session_state(config: SessionConfig, runtime: Option<Arc<RuntimeEnv>>) -> Result<SessionState, ViewError> {
    let mut config = config.with_information_schema(true).with_default_catalog_and_schema(CATALOG, SCHEMA);
    config.options_mut().sql_parser.dialect = Dialect::PostgreSQL;
    let mut builder = SessionStateBuilder::new().with_config(config).with_default_features();
    if let Some(runtime) = runtime {
        builder = builder.with_runtime_env(runtime);
    }
    let mut state = builder.build();
    datafusion_functions_json::register_all(&mut state).map_err(|error| ViewError::Internal(error.to_string()))?;
    Ok(state)
}

/// Parses `sql`, which must be one `SELECT` (or other query), into its syntax tree.
pub fn parse_query(state: &SessionState, sql: &str) -> Result<ast::Query, ViewError> {
    let statement = state.sql_to_statement(sql, &Dialect::PostgreSQL).map_err(ViewError::planning)?;
    match statement {
        Statement::Statement(inner) => match *inner {
            ast::Statement::Query(query) => Ok(*query),
            other => Err(ViewError::NotMaintainable(format!("a view is defined by a SELECT, not {other}"))),
        },
        other => Err(ViewError::NotMaintainable(format!("a view is defined by a SELECT, not {other}"))),
    }
}

/// A context over `state` whose only table is `events`, provided by `events`: where view definitions
/// are planned.
pub(crate) fn planning_context(
    state: &SessionState,
    events: Arc<dyn TableProvider>,
) -> Result<SessionContext, ViewError> {
    let internal = |error: datafusion::error::DataFusionError| ViewError::Internal(error.to_string());
    let tables = Arc::new(MemorySchemaProvider::new());
    tables.register_table("events".to_owned(), events).map_err(internal)?;
    let catalog = Arc::new(MemoryCatalogProvider::new());
    catalog.register_schema(SCHEMA, tables).map_err(internal)?;
    let catalogs = Arc::new(MemoryCatalogProviderList::new());
    catalogs.register_catalog(CATALOG.to_owned(), catalog);
    let state = SessionStateBuilder::new_from_existing(state.clone()).with_catalog_list(catalogs).build();
    Ok(SessionContext::new_with_state(state))
}
