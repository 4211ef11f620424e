//! `fjord subscription`: named subscriptions (consumer groups) of a running region — create, list,
//! describe, delete, the parked events and their replay, and `consume`, a consumer that prints what it
//! gets and acknowledges it once printed. Readable output by default, `--json` for scripts.

use std::io::Write;

use anyhow::Context;
use fjord_client::v1;
use serde_json::json;

use crate::client::ClientArgs;
use crate::client::client_failed;
use crate::client::printable;
use crate::tail::FilterArgs;
use crate::tail::readable_line;

/// Flags of `fjord subscription`.
#[derive(Debug, clap::Args)]
pub struct SubscriptionArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    action: Action,
}

/// What `fjord subscription` does.
#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Create a named subscription.
    Create {
        /// Its name: 1 to 128 of A-Z a-z 0-9 . _ -
        name: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Where it starts: `start` (every event) or `end` (what is appended from now on).
        #[arg(long, default_value = "start")]
        from: String,
        /// Milliseconds a delivered event may go unacknowledged before it is delivered again (0: 30000).
        #[arg(long, default_value_t = 0)]
        ack_timeout_ms: u32,
        /// Deliveries after which an unacknowledged event is parked (0: 10).
        #[arg(long, default_value_t = 0)]
        max_deliveries: u32,
        /// Unacknowledged events one consumer holds at most (0: 1000).
        #[arg(long, default_value_t = 0)]
        max_in_flight: u32,
    },
    /// List the named subscriptions.
    List,
    /// Show one: its definition, checkpoint, lag and consumers.
    Describe {
        /// Its name.
        name: String,
    },
    /// Delete one.
    Delete {
        /// Its name.
        name: String,
    },
    /// List the events one has parked.
    Parked {
        /// Its name.
        name: String,
        /// The most to list (0: the server's most, 1000).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Deliver every parked event again.
    Replay {
        /// Its name.
        name: String,
    },
    /// Consume one: print each event and acknowledge it once printed, until Ctrl-C.
    Consume {
        /// Its name.
        name: String,
        /// This consumer's name, shown by `describe` (default: the server makes one up).
        #[arg(long, default_value = "")]
        consumer: String,
        /// Stop after this many events (0: never).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
}

impl SubscriptionArgs {
    /// Does what was asked and prints the answer.
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.client.fjord_client(&[])?;
        let json = self.client.json;
        match self.action {
            Action::Create { name, filter, from, ack_timeout_ms, max_deliveries, max_in_flight } => {
                use v1::create_subscription_request::Start;
                let start = match from.as_str() {
                    "start" => Start::FromBeginning(v1::Empty {}),
                    "end" => Start::FromEnd(v1::Empty {}),
                    other => anyhow::bail!("--from {other:?}: start or end"),
                };
                let request = v1::CreateSubscriptionRequest {
                    name,
                    filter: Some(filter.to_wire()),
                    start: Some(start),
                    settings: Some(v1::SubscriptionSettings { ack_timeout_ms, max_deliveries, max_in_flight }),
                };
                let info = client.create_subscription(request).await.map_err(client_failed)?;
                print_info(&info, json)
            }
            Action::List => {
                let listed = client.list_subscriptions().await.map_err(client_failed)?;
                if json {
                    listed.iter().try_for_each(|info| print_info(info, true))
                } else {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{:<32} {:<32} {:>10} {:>8}", "NAME", "FILTER", "LAG", "PARKED")?;
                    for info in &listed {
                        let (name, filter) = (printable(&info.name), filter_text(info));
                        writeln!(out, "{name:<32} {filter:<32} {:>10} {:>8}", lag(info), info.parked)?;
                    }
                    Ok(())
                }
            }
            Action::Describe { name } => {
                let info = client.describe_subscription(&name).await.map_err(client_failed)?;
                print_info(&info, json)
            }
            Action::Delete { name } => {
                client.delete_subscription(&name).await.map_err(client_failed)?;
                println!("deleted {}", printable(&name));
                Ok(())
            }
            Action::Parked { name, limit } => {
                let parked = client.list_parked(&name, limit).await.map_err(client_failed)?;
                let mut out = std::io::stdout().lock();
                for parked in &parked.events {
                    let event = parked.event.clone().unwrap_or_default();
                    if json {
                        let position = event.position.unwrap_or_default();
                        let line = json!({"stream": event.stream, "partition": position.partition,
                            "offset": position.offset, "revision": position.revision, "type": event.r#type,
                            "deliveries": parked.deliveries, "parked_micros": parked.parked_micros});
                        writeln!(out, "{line}")?;
                    } else {
                        writeln!(out, "{}  (delivered {} times)", readable_line(&event), parked.deliveries)?;
                    }
                }
                if !json && parked.total > parked.events.len() as u64 {
                    writeln!(out, "… {} parked in all", parked.total)?;
                }
                Ok(())
            }
            Action::Replay { name } => {
                let replayed = client.replay_parked(&name).await.map_err(client_failed)?;
                println!("{replayed} parked events of {} are delivered again", printable(&name));
                Ok(())
            }
            Action::Consume { name, consumer, count } => consume(&client, &name, &consumer, count, json).await,
        }
    }
}

/// Prints events as they come, acknowledging each message's once they are printed.
async fn consume(
    client: &fjord_client::Client,
    name: &str,
    consumer: &str,
    count: u64,
    json: bool,
) -> anyhow::Result<()> {
    let mut consumer = client.consume(name, consumer);
    let mut printed = 0;
    loop {
        let events = tokio::select! {
            events = consumer.next() => events.map_err(client_failed)?,
            _ = tokio::signal::ctrl_c() => {
                consumer.close().await;
                return Ok(());
            }
        };
        let take = if count == 0 { events.len() } else { events.len().min((count - printed) as usize) };
        let mut out = std::io::stdout().lock();
        for consumed in &events[..take] {
            let event = consumed.event.clone().unwrap_or_default();
            if json {
                let position = event.position.unwrap_or_default();
                let data = String::from_utf8_lossy(&event.data);
                let line = json!({"stream": event.stream, "partition": position.partition, "offset": position.offset,
                    "revision": position.revision, "type": event.r#type, "data": data, "delivery": consumed.delivery});
                writeln!(out, "{line}")?;
            } else {
                writeln!(out, "{}", readable_line(&event))?;
            }
        }
        out.flush().context("writing the events")?;
        drop(out);
        consumer.ack(&events[..take]).await.map_err(client_failed)?;
        printed += take as u64;
        if count > 0 && printed >= count {
            // Gone only once the acknowledgements are in: what was not printed comes again, to another.
            consumer.close().await;
            return Ok(());
        }
    }
}

fn filter_text(info: &v1::SubscriptionInfo) -> String {
    let filter = info.filter.clone().unwrap_or_default();
    let scope = match (filter.stream.as_str(), filter.stream_prefix.as_str(), filter.category.as_str()) {
        ("", "", "") => "all".to_owned(),
        (stream, "", "") => format!("stream {stream}"),
        ("", prefix, "") => format!("prefix {prefix}"),
        (_, _, category) => format!("category {category}"),
    };
    let types =
        if filter.event_types.is_empty() { String::new() } else { format!(" [{}]", filter.event_types.join(",")) };
    printable(&format!("{scope}{types}")).into_owned()
}

/// Events past the checkpoint, at most (some may not match the filter).
fn lag(info: &v1::SubscriptionInfo) -> u64 {
    info.as_of_offsets
        .iter()
        .map(|(partition, end)| end.saturating_sub(info.checkpoint.get(partition).copied().unwrap_or(0)))
        .sum()
}

fn print_info(info: &v1::SubscriptionInfo, json: bool) -> anyhow::Result<()> {
    let settings = info.settings.unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if json {
        let consumers: Vec<_> = info
            .consumers
            .iter()
            .map(|c| json!({"consumer": c.consumer, "partitions": c.partitions, "in_flight": c.in_flight}))
            .collect();
        let filter = info.filter.clone().unwrap_or_default();
        let line = json!({"name": info.name,
            "filter": {"stream": filter.stream, "stream_prefix": filter.stream_prefix, "category": filter.category,
                "event_types": filter.event_types},
            "ack_timeout_ms": settings.ack_timeout_ms, "max_deliveries": settings.max_deliveries,
            "max_in_flight": settings.max_in_flight, "start_offsets": info.start_offsets, "checkpoint": info.checkpoint,
            "as_of_offsets": info.as_of_offsets, "lag": lag(info), "in_flight": info.in_flight, "parked": info.parked,
            "consumers": consumers, "created_micros": info.created_micros});
        writeln!(out, "{line}")?;
        return Ok(());
    }
    writeln!(out, "name        {}", printable(&info.name))?;
    writeln!(out, "filter      {}", filter_text(info))?;
    writeln!(
        out,
        "delivery    ack timeout {} ms, parked after {} deliveries, at most {} in flight per consumer",
        settings.ack_timeout_ms, settings.max_deliveries, settings.max_in_flight
    )?;
    writeln!(out, "lag         {} events at most, {} in flight, {} parked", lag(info), info.in_flight, info.parked)?;
    let mut checkpoint: Vec<_> = info.checkpoint.iter().collect();
    checkpoint.sort();
    let checkpoint: Vec<String> = checkpoint.iter().map(|(p, o)| format!("{p}:{o}")).collect();
    writeln!(out, "checkpoint  {}", checkpoint.join(","))?;
    if info.consumers.is_empty() {
        writeln!(out, "consumers   none")?;
    }
    for consumer in &info.consumers {
        writeln!(
            out,
            "consumer    {}  partitions {:?}  {} in flight",
            printable(&consumer.consumer),
            consumer.partitions,
            consumer.in_flight
        )?;
    }
    Ok(())
}
