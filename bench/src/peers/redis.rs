//! Redis streams through the `redis` crate: writer `w` appends with `XADD bench-<w> * d <event>` over one
//! multiplexed connection (as a service would share one); a batch is one pipeline of XADDs, which Redis
//! fsyncs once (`appendfsync always` syncs the AOF before replying to each event-loop round).

use redis::aio::MultiplexedConnection;

/// The shared connection.
pub(crate) struct Redis {
    connection: MultiplexedConnection,
}

impl Redis {
    /// Connects to the (single) server.
    pub(crate) async fn connect(addresses: &[String]) -> anyhow::Result<Self> {
        let address = addresses.first().ok_or_else(|| anyhow::anyhow!("no Redis address"))?;
        let client = redis::Client::open(format!("redis://{address}/"))?;
        Ok(Redis { connection: client.get_multiplexed_async_connection().await? })
    }

    /// Appends `events` to stream `bench-<writer>`.
    pub(crate) async fn append(&self, writer: usize, events: &[Vec<u8>]) -> anyhow::Result<()> {
        let key = format!("bench-{writer}");
        let mut pipeline = redis::pipe();
        for event in events {
            pipeline.cmd("XADD").arg(&key).arg("*").arg("d").arg(event.as_slice());
        }
        let mut connection = self.connection.clone();
        let _ids: Vec<String> = pipeline.query_async(&mut connection).await?;
        Ok(())
    }
}
