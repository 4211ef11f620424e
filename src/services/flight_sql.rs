//! Arrow Flight SQL on the public plane: ADBC, JDBC's Flight SQL driver and pyarrow run statements and
//! prepared statements, list tables and read answers as Arrow, behind the same tokens as every gRPC call
//! (the bearer header; or a Basic login whose password is the token, which the handshake answers with the
//! bearer header to use). A query runs only when its ticket is read (`DoGet`), where the caller's token
//! decides what it sees and the answer streams batch by batch; `GetFlightInfo` only plans it for its
//! schema. Handles and tickets carry the statement itself (and bound parameters), so the service keeps no
//! state per client. `x-fjord-wait-for: <consistency token>` on a `DoGet` is read-your-writes; every
//! answer's headers say how fresh it is (`x-fjord-applied`, a consistency token of the answer's cut).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::FlightData;
use arrow_flight::FlightDescriptor;
use arrow_flight::FlightEndpoint;
use arrow_flight::FlightInfo;
use arrow_flight::HandshakeRequest;
use arrow_flight::HandshakeResponse;
use arrow_flight::IpcMessage;
use arrow_flight::SchemaAsIpc;
use arrow_flight::Ticket;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::ActionClosePreparedStatementRequest;
use arrow_flight::sql::ActionCreatePreparedStatementRequest;
use arrow_flight::sql::ActionCreatePreparedStatementResult;
use arrow_flight::sql::CommandGetCatalogs;
use arrow_flight::sql::CommandGetDbSchemas;
use arrow_flight::sql::CommandGetSqlInfo;
use arrow_flight::sql::CommandGetTableTypes;
use arrow_flight::sql::CommandGetTables;
use arrow_flight::sql::CommandPreparedStatementQuery;
use arrow_flight::sql::CommandStatementQuery;
use arrow_flight::sql::CommandStatementUpdate;
use arrow_flight::sql::DoPutPreparedStatementResult;
use arrow_flight::sql::ProstMessageExt;
use arrow_flight::sql::SqlInfo;
use arrow_flight::sql::TicketStatementQuery;
use arrow_flight::sql::metadata::SqlInfoData;
use arrow_flight::sql::metadata::SqlInfoDataBuilder;
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::server::PeekableFlightDataStream;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Field;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::ScalarValue;
use fjord_proto::auth::AUTHORIZATION_KEY;
use fjord_proto::auth::BEARER_PREFIX;
use fjord_query::ConsistencyToken;
use fjord_query::Prepared;
use fjord_query::QueryEngine;
use fjord_query::QueryError;
use fjord_query::QueryRequest;
use fjord_query::StreamScope;
use futures::Stream;
use futures::StreamExt;
use futures::TryStreamExt;
use prost::Message;
use serde::Deserialize;
use serde::Serialize;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::security::access::authorize_query;
use crate::security::access::may_define_views;
use crate::security::access::token_of;
use crate::services::query::query_status;

/// The header a `DoGet` carries a consistency token in (its text form, as `fjord append` prints it).
pub const WAIT_FOR_HEADER: &str = "x-fjord-wait-for";
/// The request header that refuses an answer from views staler than it, in milliseconds.
pub const MAX_STALENESS_HEADER: &str = "x-fjord-max-staleness-ms";
/// The header an answer says how fresh it is in: a consistency token of the offsets it stops before.
pub const APPLIED_HEADER: &str = "x-fjord-applied";
/// The header naming the node that answered.
pub const NODE_HEADER: &str = "x-fjord-node";
/// The most bytes of bound parameters (as Arrow IPC) one prepared statement carries: its handle, with the
/// statement (at most `max_query_bytes`, 64 KiB by default) and these in base64, must fit the 64 KiB the
/// service's messages may take beyond a query's text.
const MAX_PARAMETER_BYTES: usize = 32 * 1024;

/// The Flight SQL service of one node.
pub struct FlightSql {
    engine: Arc<QueryEngine>,
    node_id: u64,
    region: String,
    info: SqlInfoData,
}

impl FlightSql {
    /// The service over `engine`, on node `node_id` of `region`.
    pub fn new(engine: Arc<QueryEngine>, node_id: u64, region: String) -> Self {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "Fjord");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        // No transactions (0: none), no cancellation: queries only read and have a time limit.
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        info.append(SqlInfo::FlightSqlServerCancel, false);
        info.append(SqlInfo::FlightSqlServerStatementTimeout, engine.limits().timeout_ms as i32 / 1000);
        info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        let info = info.build().expect("a fixed set of well-typed SqlInfo values");
        FlightSql { engine, node_id, region, info }
    }

    /// Runs `handle`'s statement for the caller of `request` and streams its answer, with how fresh it is.
    async fn answer<T>(&self, handle: StatementHandle, request: &Request<T>) -> Result<Response<DoGetStream>, Status> {
        let scope = authorize_query(request)?;
        let wait_for = match request.metadata().get(WAIT_FOR_HEADER) {
            Some(value) => {
                let text = value.to_str().map_err(|_| status(QueryError::BadToken("not ASCII".to_owned())))?;
                let token: ConsistencyToken = text.parse().map_err(status)?;
                token.offsets_in(&self.region).map_err(status)?.clone()
            }
            None => Default::default(),
        };
        let max_staleness = match request.metadata().get(MAX_STALENESS_HEADER) {
            Some(value) => {
                let milliseconds = value.to_str().ok().and_then(|text| text.trim().parse::<u64>().ok());
                let bad = || QueryError::BadParameter(format!("{MAX_STALENESS_HEADER}: milliseconds, e.g. 500"));
                Some(Duration::from_millis(milliseconds.ok_or_else(bad).map_err(status)?))
            }
            None => None,
        };
        let params = handle.parameters()?;
        // What GetFlightInfo advertised: for a statement without parameters, the schema its run streams
        // (both plan it the same way); with parameters, the unbound plan's, which the answer is made to fit.
        let advertised = if params.is_empty() {
            None
        } else {
            Some(self.engine.prepare(&handle.sql, &scope).await.map_err(status)?.schema)
        };
        let may_define_views = may_define_views(request);
        let request =
            QueryRequest { wait_for, params, may_define_views, max_staleness, ..QueryRequest::new(handle.sql, scope) };
        let result = self.engine.query(request).await.map_err(status)?;
        let advertised = advertised.unwrap_or_else(|| result.stream.schema());
        let applied =
            ConsistencyToken { region: self.region.clone(), offsets: result.cut.offsets().iter().copied().collect() };
        let schema = advertised.clone();
        let batches = result
            .stream
            .map(move |batch| batch.map_err(status).and_then(|batch| as_advertised(batch, &schema)))
            .map_err(FlightError::from);
        let encoded = FlightDataEncoderBuilder::new().with_schema(advertised).build(batches).map_err(Status::from);
        let mut response = Response::new(Box::pin(encoded) as DoGetStream);
        let headers = response.metadata_mut();
        headers.insert(APPLIED_HEADER, header_value(&applied.to_string())?);
        headers.insert(NODE_HEADER, header_value(&self.node_id.to_string())?);
        Ok(response)
    }

    /// Runs `sql`, a statement that answers no rows (a view statement), for the caller of `request`.
    async fn run_command<T>(&self, sql: String, scope: StreamScope, request: &Request<T>) -> Result<(), Status> {
        let may_define_views = may_define_views(request);
        let result = self
            .engine
            .query(QueryRequest { may_define_views, ..QueryRequest::new(sql, scope) })
            .await
            .map_err(status)?;
        match result.command {
            Some(_) => Ok(()),
            None => Err(Status::invalid_argument("a statement that answers rows: run it as a query")),
        }
    }

    /// Runs a view statement (`sql`, `prepared`) now, once, for the caller of `request`: its `FlightInfo` has
    /// no endpoint, as its answer has no rows to fetch.
    async fn command_info(
        &self,
        sql: String,
        scope: StreamScope,
        prepared: &Prepared,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.run_command(sql, scope, &request).await?;
        let info = FlightInfo::new().try_with_schema(&prepared.schema).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(info.with_descriptor(request.into_inner())))
    }

    /// A `FlightInfo` whose one endpoint's ticket is `ticket`, for an answer of `schema`.
    fn flight_info(schema: &Schema, ticket: Vec<u8>, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
        let info = FlightInfo::new().try_with_schema(schema).map_err(|e| Status::internal(e.to_string()))?;
        Ok(info.with_endpoint(endpoint).with_descriptor(descriptor))
    }

    /// The `FlightInfo` of a metadata command, answered with `schema`; its ticket is the command itself.
    fn metadata_info<C: ProstMessageExt>(
        request: Request<FlightDescriptor>,
        command: &C,
        schema: &Schema,
    ) -> Result<Response<FlightInfo>, Status> {
        authorize_query(&request)?;
        Ok(Response::new(Self::flight_info(schema, command.as_any().encode_to_vec(), request.into_inner())?))
    }

    /// Streams one metadata batch (tables, catalogs…) as Flight data.
    fn metadata_answer<E: std::fmt::Display>(batch: Result<RecordBatch, E>) -> Result<Response<DoGetStream>, Status> {
        let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
        let schema = batch.schema();
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::iter([Ok(batch)]))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    /// The tables a caller of `request` can query, with their schemas.
    async fn tables<T>(&self, request: &Request<T>) -> Result<Vec<(String, SchemaRef)>, Status> {
        let scope = authorize_query(request)?;
        self.engine.tables(&scope).await.map_err(status)
    }
}

/// What `DoGet` streams.
type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// What a ticket or a prepared statement's handle carries: the statement and the values bound to its
/// parameters. The caller's token, not the handle, decides what a query sees, so a forged handle gains
/// nothing.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StatementHandle {
    sql: String,
    /// The bound parameters: one row, as an Arrow IPC stream in base64 (empty: none bound).
    #[serde(default)]
    parameters: String,
}

impl StatementHandle {
    fn encode(&self) -> Result<Vec<u8>, Status> {
        serde_json::to_vec(self).map_err(|e| Status::internal(e.to_string()))
    }

    fn decode(bytes: &[u8]) -> Result<Self, Status> {
        serde_json::from_slice(bytes).map_err(|_| Status::invalid_argument("not a statement handle of this service"))
    }

    /// The bound values, `$1` first.
    fn parameters(&self) -> Result<Vec<ScalarValue>, Status> {
        if self.parameters.is_empty() {
            return Ok(Vec::new());
        }
        let bad = |why: String| status(QueryError::BadParameter(why));
        let bytes = BASE64.decode(&self.parameters).map_err(|e| bad(e.to_string()))?;
        let mut reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| bad(e.to_string()))?;
        let batch =
            reader.next().ok_or_else(|| bad("no parameter values".to_owned()))?.map_err(|e| bad(e.to_string()))?;
        batch
            .columns()
            .iter()
            .map(|column| ScalarValue::try_from_array(column, 0).map_err(|e| bad(e.to_string())))
            .collect()
    }
}

/// `batch` under the schema its `FlightInfo` advertised: a client (ADBC) refuses an answer whose schema
/// differs even in a column's nullability, and planning with bound parameters can decide that differently.
fn as_advertised(batch: RecordBatch, advertised: &SchemaRef) -> Result<RecordBatch, Status> {
    if batch.schema() == *advertised {
        return Ok(batch);
    }
    RecordBatch::try_new(advertised.clone(), batch.columns().to_vec())
        .map_err(|e| Status::internal(format!("the answer does not fit the schema it advertised: {e}")))
}

fn status(error: QueryError) -> Status {
    query_status(error)
}

fn header_value(text: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, Status> {
    text.parse().map_err(|_| Status::internal("a header value that is not ASCII"))
}

/// `schema` as Flight SQL sends one in a message: Arrow IPC.
fn schema_bytes(schema: &Schema) -> Result<prost::bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: datafusion::arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<tonic::Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        // The interceptor verified the token (bearer, or a Basic login's password): hand it back as the
        // bearer header every later call carries.
        let token = request
            .metadata()
            .get(AUTHORIZATION_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(token_of)
            .ok_or_else(|| Status::unauthenticated("no token"))?;
        let reply = HandshakeResponse { protocol_version: 0, payload: token.clone().into_bytes().into() };
        let replies: Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>> =
            Box::pin(futures::stream::iter([Ok(reply)]));
        let mut response = Response::new(replies);
        response.metadata_mut().insert(AUTHORIZATION_KEY, header_value(&format!("{BEARER_PREFIX}{token}"))?);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let scope = authorize_query(&request)?;
        let prepared = self.engine.prepare(&query.query, &scope).await.map_err(status)?;
        if prepared.command.is_some() {
            return self.command_info(query.query, scope, &prepared, request).await;
        }
        let handle = StatementHandle { sql: query.query, parameters: String::new() }.encode()?;
        let ticket = TicketStatementQuery { statement_handle: handle.into() }.as_any().encode_to_vec();
        Ok(Response::new(Self::flight_info(&prepared.schema, ticket, request.into_inner())?))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let scope = authorize_query(&request)?;
        let handle = StatementHandle::decode(&query.prepared_statement_handle)?;
        let prepared = self.engine.prepare(&handle.sql, &scope).await.map_err(status)?;
        if prepared.command.is_some() {
            return self.command_info(handle.sql, scope, &prepared, request).await;
        }
        let ticket = query.as_any().encode_to_vec();
        Ok(Response::new(Self::flight_info(&prepared.schema, ticket, request.into_inner())?))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Self::metadata_info(request, &query, &schema)
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Self::metadata_info(request, &query, &schema)
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Self::metadata_info(request, &query, &schema)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Self::metadata_info(request, &query, &schema)
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.info).schema();
        Self::metadata_info(request, &query, &schema)
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let handle = StatementHandle::decode(&ticket.statement_handle)?;
        self.answer(handle, &request).await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let handle = StatementHandle::decode(&query.prepared_statement_handle)?;
        self.answer(handle, &request).await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        authorize_query(&request)?;
        let mut builder = query.into_builder();
        builder.append(fjord_query::engine::CATALOG);
        Self::metadata_answer(builder.build())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        authorize_query(&request)?;
        let mut builder = query.into_builder();
        builder.append(fjord_query::engine::CATALOG, fjord_query::engine::SCHEMA);
        Self::metadata_answer(builder.build())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let tables = self.tables(&request).await?;
        let mut builder = query.into_builder();
        for (name, schema) in tables {
            let kind = if name.starts_with("fjord_") { "SYSTEM TABLE" } else { "TABLE" };
            builder
                .append(fjord_query::engine::CATALOG, fjord_query::engine::SCHEMA, name, kind, &schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        Self::metadata_answer(builder.build())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        authorize_query(&request)?;
        let mut builder = query.into_builder();
        builder.append("SYSTEM TABLE");
        builder.append("TABLE");
        Self::metadata_answer(builder.build())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        authorize_query(&request)?;
        Self::metadata_answer(query.into_builder(&self.info).build())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        authorize_query(&request)?;
        let mut handle = StatementHandle::decode(&query.prepared_statement_handle)?;
        let bad = |why: String| status(QueryError::BadParameter(why));
        let mut batches =
            FlightRecordBatchStream::new_from_flight_data(request.into_inner().map_err(FlightError::from));
        // One row of parameters, refused as soon as more arrives: nothing beyond it is held.
        let mut row: Option<RecordBatch> = None;
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|e| bad(e.to_string()))?;
            if batch.num_rows() == 0 {
                continue;
            }
            if row.is_some() || batch.num_rows() > 1 {
                return Err(bad("bind one row of parameters per execution".to_owned()));
            }
            row = Some(batch);
        }
        let parameters = match row {
            None => Vec::new(),
            Some(batch) => {
                let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema())
                    .map_err(|e| bad(e.to_string()))?;
                writer.write(&batch).and_then(|()| writer.finish()).map_err(|e| bad(e.to_string()))?;
                writer.into_inner().map_err(|e| bad(e.to_string()))?
            }
        };
        if parameters.len() > MAX_PARAMETER_BYTES {
            return Err(bad(format!(
                "{} bytes of parameters, over the limit of {MAX_PARAMETER_BYTES}",
                parameters.len()
            )));
        }
        handle.parameters = BASE64.encode(parameters);
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(handle.encode()?.into()) })
    }

    /// An update: the view statements (`CREATE MATERIALIZED VIEW`…), as ADBC's `execute_update` sends them.
    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let scope = authorize_query(&request)?;
        self.run_command(command.query, scope, &request).await?;
        Ok(0)
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let scope = authorize_query(&request)?;
        let prepared = self.engine.prepare(&query.query, &scope).await.map_err(status)?;
        let parameters: Vec<Field> = prepared
            .parameter_types
            .iter()
            .enumerate()
            .map(|(index, data_type)| {
                let data_type = data_type.clone().unwrap_or(datafusion::arrow::datatypes::DataType::Utf8);
                Field::new(format!("${}", index + 1), data_type, true)
            })
            .collect();
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: StatementHandle { sql: query.query, parameters: String::new() }.encode()?.into(),
            dataset_schema: schema_bytes(&prepared.schema)?,
            parameter_schema: schema_bytes(&Schema::new(parameters))?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        // Handles hold no state on the node: closing frees nothing.
        authorize_query(&request).map(|_| ())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
