//! Answers and errors as Postgres sends them: Arrow columns become Postgres types (text or binary, as the
//! client asks; `arrow-pg` encodes the values), a query's failure becomes an ErrorResponse with its
//! SQLSTATE, and a syntax error says where in the statement it is.

use std::sync::Arc;

use arrow_pg::datatypes::arrow_schema_to_pg_fields;
use arrow_pg::datatypes::encode_recordbatch;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::CastOptions;
use datafusion::arrow::compute::cast_with_options;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::datatypes::SchemaRef;
use fjord_query::QueryError;
use fjord_query::QueryStream;
use futures::StreamExt;
use pgwire::api::portal::Format;
use pgwire::api::results::FieldInfo;
use pgwire::api::results::QueryResponse;
use pgwire::error::ErrorInfo;
use pgwire::error::PgWireError;

/// `error` as the client sees it: its SQLSTATE and message, and for a syntax error its position.
pub(super) fn pg_error(error: QueryError, sql: &str) -> PgWireError {
    let mut info = ErrorInfo::new("ERROR".to_owned(), error.sqlstate().to_owned(), error.to_string());
    if let QueryError::Syntax(message) = &error {
        info.position = syntax_position(sql, message).map(|position| position.to_string());
    }
    PgWireError::UserError(Box::new(info))
}

/// Where a parser's message (`… at Line: 2, Column: 7`) puts the error, as Postgres counts it: the
/// 1-based character position in the whole statement.
fn syntax_position(sql: &str, message: &str) -> Option<usize> {
    let at = message.rfind("Line: ")?;
    let (line, column) = message[at + "Line: ".len()..].split_once(", Column: ")?;
    let line: usize = line.trim().parse().ok()?;
    let column: usize = column.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()?;
    let before: usize = sql.split('\n').take(line.checked_sub(1)?).map(|text| text.chars().count() + 1).sum();
    Some(before + column)
}

/// The type a column of `data_type` is sent as: unsigned 64-bit values (offsets, revisions) as signed
/// ones, which every driver reads as an integer (Postgres has no unsigned types; `numeric` would arrive as
/// a decimal); everything else as it is.
fn sent_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::UInt64 => DataType::Int64,
        other => other.clone(),
    }
}

/// The schema a Postgres client is sent (see [`sent_type`]).
pub(super) fn pg_schema(schema: &Schema) -> SchemaRef {
    let fields =
        schema.fields().iter().map(|field| field.as_ref().clone().with_data_type(sent_type(field.data_type())));
    Arc::new(Schema::new(fields.collect::<Vec<_>>()))
}

/// The Postgres type of a value of `data_type` as a client is sent it ([`sent_type`]; unknown or
/// unmapped: `text`, which the engine casts from).
pub(super) fn pg_type(data_type: Option<&DataType>) -> pgwire::api::Type {
    let sent = data_type.map_or(DataType::Utf8, sent_type);
    arrow_pg::datatypes::into_pg_type(&sent).unwrap_or(pgwire::api::Type::TEXT)
}

/// The row description of an answer with `schema`, each column in the format the client asked for.
pub(super) fn row_description(schema: &Schema, format: &Format) -> Result<Vec<FieldInfo>, PgWireError> {
    arrow_schema_to_pg_fields(&pg_schema(schema), format, None)
}

/// A running query's answer as Postgres rows, streamed batch by batch.
pub(super) fn rows(query: QueryStream, format: &Format, sql: String) -> Result<QueryResponse, PgWireError> {
    let fields = Arc::new(row_description(&query.schema(), format)?);
    let schema = pg_schema(&query.schema());
    let batch_fields = fields.clone();
    let rows = query.flat_map(move |batch| {
        let encoded = batch
            .map_err(|error| pg_error(error, &sql))
            .and_then(|batch| as_pg_batch(batch, &schema))
            .map(|batch| encode_recordbatch(batch_fields.clone(), batch));
        match encoded {
            Ok(rows) => futures::stream::iter(rows.collect::<Vec<_>>()),
            Err(error) => futures::stream::iter(vec![Err(error)]),
        }
    });
    Ok(QueryResponse::new(fields, rows))
}

/// `batch` with its unsigned 64-bit columns as signed ones (a value past `i64::MAX` is an error, never a
/// wrapped number).
fn as_pg_batch(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, PgWireError> {
    if batch.schema().fields().iter().all(|field| field.data_type() != &DataType::UInt64) {
        return Ok(batch);
    }
    let checked = CastOptions { safe: false, ..CastOptions::default() };
    let columns = batch
        .columns()
        .iter()
        .map(|column| match column.data_type() {
            DataType::UInt64 => cast_with_options(column, &DataType::Int64, &checked),
            _ => Ok(column.clone()),
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|columns| RecordBatch::try_new(schema.clone(), columns));
    columns.map_err(|error| pg_error(QueryError::Execution(error.to_string()), ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_points_into_the_statement() {
        let sql = "SELECT 1\nFROM events WHER x";
        assert_eq!(syntax_position(sql, "Expected: end of statement, found: x at Line: 2, Column: 18"), Some(27));
        assert_eq!(
            syntax_position("SELEC 1", "Expected: an SQL statement, found: SELEC at Line: 1, Column: 1"),
            Some(1)
        );
        assert_eq!(syntax_position("x", "no position here"), None);
    }
}
