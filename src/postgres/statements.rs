//! Running statements: the simple query protocol (a text of one or more statements, as psql sends it) and
//! the extended one (parse, describe, bind, execute: how drivers run statements with parameters), both on
//! the node's engine with the session's scope and consistency token. Session commands (`SET`, `BEGIN`…)
//! never reach the engine.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ScalarValue;
use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use fjord_query::Prepared;
use fjord_query::QueryEngine;
use fjord_query::QueryError;
use fjord_query::QueryRequest;
use futures::Sink;
use futures::SinkExt;
use pgwire::api::ClientInfo;
use pgwire::api::ClientPortalStore;
use pgwire::api::DEFAULT_NAME;
use pgwire::api::PgWireConnectionState;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::portal::Portal;
use pgwire::api::portal::PortalExecutionState;
use pgwire::api::query::ExtendedQueryHandler;
use pgwire::api::query::SimpleQueryHandler;
use pgwire::api::query::send_execution_response;
use pgwire::api::query::send_query_response;
use pgwire::api::query::send_ready_for_query;
use pgwire::api::results::FieldInfo;
use pgwire::api::results::Response;
use pgwire::api::results::Tag;
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::Entry;
use pgwire::api::store::PortalStore;
use pgwire::error::PgWireError;
use pgwire::error::PgWireResult;
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::extendedquery::Execute;
use pgwire::messages::response::EmptyQueryResponse;
use pgwire::messages::response::TransactionStatus;
use pgwire::messages::simplequery::Query;

use super::encode;
use super::session::Session;
use super::session::SessionCommand;

/// Microseconds from the Unix epoch to Postgres's (2000-01-01), for binary timestamps.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A statement a client parsed: a session command, or a query with its description.
#[derive(Debug, Clone)]
pub(super) enum Statement {
    /// `SET`, `BEGIN`…
    Session(SessionCommand),
    /// A query for the engine.
    Query {
        /// Its text.
        sql: String,
        /// Its parameters' types and its answer's schema.
        prepared: Prepared,
    },
}

/// Runs the statements of every connection on the node's engine.
pub(super) struct Statements {
    engine: Arc<QueryEngine>,
    region: String,
    parser: Arc<Parser>,
}

impl Statements {
    /// Statements run on `engine`, on a node of `region` (a consistency token must be this region's).
    pub(super) fn new(engine: Arc<QueryEngine>, region: String) -> Self {
        let parser = Arc::new(Parser { engine: engine.clone() });
        Statements { engine, region, parser }
    }

    /// Runs `sql` (one statement) with `params` for `session`, its answer in `format`.
    async fn run(
        &self,
        session: &Session,
        sql: &str,
        params: Vec<ScalarValue>,
        format: &Format,
    ) -> Result<Response, QueryError> {
        if let Some(command) = SessionCommand::parse(sql)? {
            command.apply(session);
            return Ok(command.response());
        }
        let wait_for = match session.wait_for() {
            Some(token) => token.offsets_in(&self.region)?.clone(),
            None => Default::default(),
        };
        let (may_define_views, max_staleness) = (session.may_define_views, session.max_staleness());
        let request = QueryRequest {
            wait_for,
            params,
            may_define_views,
            max_staleness,
            ..QueryRequest::new(sql, session.scope.clone())
        };
        let result = self.engine.query(request).await?;
        if let Some(command) = result.command {
            return Ok(Response::Execution(Tag::new(command)));
        }
        encode::rows(result.stream, format, sql.to_owned()).map(Response::Query).map_err(|error| match error {
            PgWireError::UserError(info) => QueryError::Execution(info.message),
            other => QueryError::Internal(other.to_string()),
        })
    }
}

#[async_trait]
impl SimpleQueryHandler for Statements {
    /// A text of several statements runs them one at a time, each answer sent before the next statement
    /// starts (pgwire's default would start them all first, each holding a place among the node's
    /// queries); one statement takes pgwire's way, through [`Self::do_query`].
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = split_statements(&query.query);
        if statements.len() <= 1 {
            return self._on_query(client, query).await;
        }
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        let session = Session::of(&*client)?;
        client.set_state(PgWireConnectionState::QueryInProgress);
        let mut transaction = client.transaction_status();
        for sql in statements {
            let response = self.run(&session, &sql, Vec::new(), &Format::UnifiedText).await;
            // Postgres stops a text of statements at its first error.
            let failed = response.is_err();
            let response =
                response.unwrap_or_else(|error| Response::Error(Box::new(error_info(encode::pg_error(error, &sql)))));
            transaction = send_response(client, response, transaction, true).await?;
            if failed {
                break;
            }
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(transaction);
        send_ready_for_query(client, transaction).await
    }

    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = Session::of(&*client)?;
        let response = self.run(&session, query, Vec::new(), &Format::UnifiedText).await;
        Ok(vec![response.unwrap_or_else(|error| Response::Error(Box::new(error_info(encode::pg_error(error, query)))))])
    }
}

/// Sends `response` to the client (its row description too when `describe`), streaming a query's rows as
/// they come; the transaction status after it.
async fn send_response<C>(
    client: &mut C,
    response: Response,
    transaction: TransactionStatus,
    describe: bool,
) -> PgWireResult<TransactionStatus>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    Ok(match response {
        Response::Query(answer) => {
            send_query_response(client, answer, describe).await?;
            transaction
        }
        Response::Execution(tag) => {
            send_execution_response(client, tag).await?;
            transaction
        }
        Response::TransactionStart(tag) => {
            send_execution_response(client, tag).await?;
            transaction.to_in_transaction_state()
        }
        Response::TransactionEnd(tag) => {
            send_execution_response(client, tag).await?;
            transaction.to_idle_state()
        }
        Response::Error(error) => {
            client.feed(PgWireBackendMessage::ErrorResponse((*error).into())).await?;
            transaction.to_error_state()
        }
        Response::EmptyQuery => {
            client.feed(PgWireBackendMessage::EmptyQueryResponse(EmptyQueryResponse::new())).await?;
            transaction
        }
        // Statements here never copy.
        Response::CopyIn(_) | Response::CopyOut(_) | Response::CopyBoth(_) => {
            return Err(PgWireError::ApiError("COPY is not supported".into()));
        }
    })
}

#[async_trait]
impl ExtendedQueryHandler for Statements {
    type Statement = Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    /// An `Execute` of a portal not run yet, for all its rows (what drivers send) streams the answer to the
    /// client as it comes, where pgwire's default gathers every row first; anything else (a row limit, a
    /// suspended portal) takes pgwire's way.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal = match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal))
                if message.max_rows == 0
                    && matches!(client.state(), PgWireConnectionState::ReadyForQuery)
                    && matches!(*portal.state().lock().await, PortalExecutionState::Initial) =>
            {
                portal
            }
            _ => return self._on_execute(client, message).await,
        };
        client.set_state(PgWireConnectionState::QueryInProgress);
        let response = ExtendedQueryHandler::do_query(self, client, &portal, 0).await?;
        *portal.state().lock().await = PortalExecutionState::Finished;
        let transaction = send_response(client, response, client.transaction_status(), false).await?;
        if matches!(transaction, TransactionStatus::Idle) {
            // As pgwire does: the unnamed portal ends with its transaction.
            client.portal_store().rm_portal(DEFAULT_NAME);
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(transaction);
        Ok(())
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Statement>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = Session::of(&*client)?;
        match &portal.statement.statement {
            Statement::Session(command) => {
                command.apply(&session);
                Ok(command.response())
            }
            Statement::Query { sql, prepared } => {
                let params = bind_parameters(portal, prepared).map_err(|error| encode::pg_error(error, sql))?;
                self.run(&session, sql, params, &portal.result_column_format)
                    .await
                    .map_err(|error| encode::pg_error(error, sql))
            }
        }
    }
}

/// Parses statements for the extended protocol: plans each query (with the session's scope) to describe
/// its parameters and answer before any is bound.
pub(super) struct Parser {
    engine: Arc<QueryEngine>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Statement;

    async fn parse_sql<C>(&self, client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = Session::of(&*client)?;
        if let Some(command) = SessionCommand::parse(sql).map_err(|error| encode::pg_error(error, sql))? {
            return Ok(Some(Statement::Session(command)));
        }
        let prepared = self.engine.prepare(sql, &session.scope).await.map_err(|error| encode::pg_error(error, sql))?;
        Ok(Some(Statement::Query { sql: sql.to_owned(), prepared }))
    }

    fn get_parameter_types(&self, statement: &Statement) -> PgWireResult<Vec<Type>> {
        let Statement::Query { prepared, .. } = statement else { return Ok(Vec::new()) };
        Ok(prepared.parameter_types.iter().map(|data_type| encode::pg_type(data_type.as_ref())).collect())
    }

    fn get_result_schema(&self, statement: &Statement, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        let Statement::Query { prepared, .. } = statement else { return Ok(Vec::new()) };
        encode::row_description(&prepared.schema, format.unwrap_or(&Format::UnifiedText))
    }
}

/// The statements of a simple query's text, each as its own text: one statement keeps the client's text
/// exactly (so an error's position points into it); text that does not parse goes to the engine whole,
/// which says why.
fn split_statements(text: &str) -> Vec<String> {
    match DFParser::parse_sql_with_dialect(text, &PostgreSqlDialect {}) {
        Ok(statements) if statements.len() > 1 => statements.iter().map(ToString::to_string).collect(),
        _ => vec![text.to_owned()],
    }
}

/// The values a `Bind` gave a query's parameters. Text values go to the engine as text, which casts them
/// to each parameter's type; binary ones are decoded by their Postgres type.
fn bind_parameters(portal: &Portal<Statement>, prepared: &Prepared) -> Result<Vec<ScalarValue>, QueryError> {
    (0..portal.parameter_len())
        .map(|index| {
            let Some(bytes) = &portal.parameters[index] else { return Ok(ScalarValue::Null) };
            let number = index + 1;
            if portal.parameter_format.is_text(index) {
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| QueryError::BadParameter(format!("parameter ${number} is not UTF-8 text")))?;
                return Ok(ScalarValue::from(text));
            }
            let declared = portal.statement.parameter_types.get(index).cloned().flatten();
            let inferred = prepared.parameter_types.get(index).cloned().flatten();
            let pg_type = declared.unwrap_or_else(|| encode::pg_type(inferred.as_ref()));
            binary_value(bytes, &pg_type)
                .ok_or_else(|| QueryError::BadParameter(format!("parameter ${number}: not a binary {pg_type} value")))?
        })
        .collect()
}

/// A binary-format parameter of Postgres type `pg_type`: `None` if the bytes are not one, an error if
/// Fjord takes values of that type only as text.
fn binary_value(bytes: &[u8], pg_type: &Type) -> Option<Result<ScalarValue, QueryError>> {
    let value = match *pg_type {
        Type::BOOL => ScalarValue::Boolean(Some(*<&[u8; 1]>::try_from(bytes).ok()? != [0])),
        Type::INT2 => ScalarValue::Int16(Some(i16::from_be_bytes(bytes.try_into().ok()?))),
        Type::INT4 => ScalarValue::Int32(Some(i32::from_be_bytes(bytes.try_into().ok()?))),
        Type::INT8 => ScalarValue::Int64(Some(i64::from_be_bytes(bytes.try_into().ok()?))),
        Type::FLOAT4 => ScalarValue::Float32(Some(f32::from_be_bytes(bytes.try_into().ok()?))),
        Type::FLOAT8 => ScalarValue::Float64(Some(f64::from_be_bytes(bytes.try_into().ok()?))),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            ScalarValue::from(std::str::from_utf8(bytes).ok()?)
        }
        Type::BYTEA => ScalarValue::Binary(Some(bytes.to_vec())),
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let micros = i64::from_be_bytes(bytes.try_into().ok()?).checked_add(POSTGRES_EPOCH_MICROS)?;
            let zone = (*pg_type == Type::TIMESTAMPTZ).then(|| Arc::from("UTC"));
            ScalarValue::TimestampMicrosecond(Some(micros), zone)
        }
        _ => {
            return Some(Err(QueryError::BadParameter(format!(
                "binary parameters of type {pg_type} are not taken; send the value as text"
            ))));
        }
    };
    Some(Ok(value))
}

/// The error a failed statement of a simple query sends.
fn error_info(error: PgWireError) -> pgwire::error::ErrorInfo {
    match error {
        PgWireError::UserError(info) => *info,
        other => pgwire::error::ErrorInfo::new("ERROR".to_owned(), "XX000".to_owned(), other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_of_statements_is_split_and_one_statement_kept_as_written() {
        assert_eq!(split_statements("select  1"), ["select  1"]);
        assert_eq!(split_statements("SELECT 1; SELECT 'a;b'"), ["SELECT 1", "SELECT 'a;b'"]);
        assert_eq!(split_statements("SELEC nonsense; x"), ["SELEC nonsense; x"]);
    }

    #[test]
    fn binary_parameters_decode_by_their_type() {
        assert_eq!(binary_value(&7i64.to_be_bytes(), &Type::INT8).unwrap().unwrap(), ScalarValue::Int64(Some(7)));
        assert_eq!(binary_value(b"order-1", &Type::TEXT).unwrap().unwrap(), ScalarValue::from("order-1"));
        assert!(binary_value(&[1, 2], &Type::INT8).is_none());
        assert!(matches!(binary_value(&[0; 16], &Type::UUID), Some(Err(QueryError::BadParameter(_)))));
        let epoch = binary_value(&(-POSTGRES_EPOCH_MICROS).to_be_bytes(), &Type::TIMESTAMPTZ).unwrap().unwrap();
        assert_eq!(epoch, ScalarValue::TimestampMicrosecond(Some(0), Some(Arc::from("UTC"))));
    }
}
