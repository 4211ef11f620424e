//! NATS JetStream through `async-nats`: one R3 file-storage stream `BENCH` over subjects `bench.>`; writer
//! `w` publishes to `bench.<w>` over the connection to server `w mod n` and waits for the stream's ack.
//! A batch is published back to back and acknowledged when every message's ack has arrived.

use async_nats::jetstream;
use async_nats::jetstream::stream::StorageType;
use bytes::Bytes;

/// A connection per server and the stream, created on connect.
pub(crate) struct Nats {
    contexts: Vec<jetstream::Context>,
}

impl Nats {
    /// Connects to every server and (re)creates the bench stream with three replicas.
    pub(crate) async fn connect(addresses: &[String]) -> anyhow::Result<Self> {
        let mut contexts = Vec::new();
        for address in addresses {
            contexts.push(jetstream::new(async_nats::connect(address.as_str()).await?));
        }
        let context = contexts.first().ok_or_else(|| anyhow::anyhow!("no NATS server address"))?;
        let _ = context.delete_stream("BENCH").await;
        context
            .create_stream(jetstream::stream::Config {
                name: "BENCH".to_owned(),
                subjects: vec!["bench.>".to_owned()],
                storage: StorageType::File,
                num_replicas: addresses.len().min(3),
                ..Default::default()
            })
            .await?;
        Ok(Nats { contexts })
    }

    /// Publishes `events` to `bench.<writer>` and waits for every ack.
    pub(crate) async fn append(&self, writer: usize, events: &[Vec<u8>]) -> anyhow::Result<()> {
        let context = &self.contexts[writer % self.contexts.len()];
        let subject = format!("bench.{writer}");
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            acks.push(context.publish(subject.clone(), Bytes::copy_from_slice(event)).await?);
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }

    /// Reads the whole stream once, in order, through an ordered consumer (the client recreates it should
    /// it miss a message), until `count` messages came; how many bytes of payload they held.
    pub(crate) async fn replay(&self, count: u64) -> anyhow::Result<u64> {
        use async_nats::jetstream::consumer;
        use tokio_stream::StreamExt;
        let context = self.contexts.first().ok_or_else(|| anyhow::anyhow!("no NATS server"))?;
        let stream = context.get_stream("BENCH").await?;
        let ordered =
            consumer::pull::OrderedConfig { deliver_policy: consumer::DeliverPolicy::All, ..Default::default() };
        let mut messages = stream.create_consumer(ordered).await?.messages().await?;
        let (mut received, mut bytes) = (0, 0);
        while received < count {
            let message = messages.next().await.ok_or_else(|| anyhow::anyhow!("the ordered consumer ended"))??;
            bytes += message.payload.len() as u64;
            received += 1;
        }
        Ok(bytes)
    }
}
