//! SQL as a test asks it: `Query.Sql` over gRPC, its Arrow IPC answer gathered with its freshness.

use std::io::Cursor;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::ipc::reader::StreamReader;
use fjord_bench::launcher::channel;
use fjord_proto::auth::BearerToken;
use fjord_proto::v1;
use fjord_proto::v1::query_client::QueryClient;

/// An answer: its batches and freshness.
pub(crate) struct Answer {
    pub(crate) batches: Vec<RecordBatch>,
    pub(crate) freshness: v1::Freshness,
}

impl Answer {
    pub(crate) fn count(&self) -> i64 {
        self.batches.iter().find(|b| b.num_rows() > 0).map_or(0, |b| b.column(0).as_primitive::<Int64Type>().value(0))
    }

    pub(crate) fn strings(&self, column: usize) -> Vec<String> {
        self.batches
            .iter()
            .flat_map(|b| {
                b.column(column).as_string::<i32>().iter().map(|v| v.unwrap_or("NULL").to_owned()).collect::<Vec<_>>()
            })
            .collect()
    }
}

pub(crate) async fn sql(
    address: &str,
    token: &BearerToken,
    statement: &str,
    wait_for: Option<v1::ConsistencyToken>,
) -> Result<Answer, tonic::Status> {
    let mut client = QueryClient::new(channel(address, token).await);
    let request = v1::SqlRequest { sql: statement.to_owned(), wait_for, max_staleness_ms: 0 };
    let mut responses = client.sql(request).await?.into_inner();
    let (mut bytes, mut freshness) = (Vec::new(), None);
    while let Some(response) = responses.message().await? {
        freshness = freshness.or(response.freshness);
        bytes.extend(response.arrow_ipc);
    }
    let reader = StreamReader::try_new(Cursor::new(bytes), None).expect("an Arrow IPC stream");
    let batches = reader.collect::<Result<Vec<_>, _>>().expect("whole batches, then the end marker");
    Ok(Answer { batches, freshness: freshness.expect("the first message says how fresh the answer is") })
}
