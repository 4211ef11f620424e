//! etcd 3.4 through its gRPC KV API (the subset in `bench/proto/etcdserverpb/kv.proto`): writer `w` puts
//! keys `bench/<w>/<n>` through member `w mod n`; a batch of events is one transaction of puts, which etcd
//! commits as one Raft entry.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use tonic::transport::Channel;

/// etcd's generated client types.
mod pb {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;

/// A channel per member and a key counter.
pub(crate) struct Etcd {
    channels: Vec<Channel>,
    next_key: AtomicU64,
}

impl Etcd {
    /// Connects (lazily) to every member.
    pub(crate) async fn connect(addresses: &[String]) -> anyhow::Result<Self> {
        let channels = addresses
            .iter()
            .map(|address| Ok(Channel::from_shared(format!("http://{address}"))?.connect_lazy()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!channels.is_empty(), "no etcd member address");
        Ok(Etcd { channels, next_key: AtomicU64::new(0) })
    }

    /// Puts `events` under fresh keys of `writer`: one put, or one transaction for a batch.
    pub(crate) async fn append(&self, writer: usize, events: &[Vec<u8>]) -> anyhow::Result<()> {
        let mut client = KvClient::new(self.channels[writer % self.channels.len()].clone());
        let mut puts = events.iter().map(|event| pb::PutRequest {
            key: format!("bench/{writer}/{}", self.next_key.fetch_add(1, Ordering::Relaxed)).into_bytes(),
            value: event.clone(),
            ..Default::default()
        });
        if events.len() == 1 {
            if let Some(put) = puts.next() {
                client.put(put).await?;
            }
            return Ok(());
        }
        let success =
            puts.map(|put| pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(put)) }).collect();
        client.txn(pb::TxnRequest { success, failure: Vec::new() }).await?;
        Ok(())
    }
}
