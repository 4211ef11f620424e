//! `fjord dev`: the embedded default. Opens a node's log under `./data`, appends a small order workload,
//! shows what a retry and a conflicting append do, reads everything back and prints it.

use std::sync::Arc;

use anyhow::Context;
use fjord_log::AppendOutcome;
use fjord_log::AppendRequest;
use fjord_log::Appender;
use fjord_log::Direction;
use fjord_log::ExpectedRevision;
use fjord_log::LogStore;
use fjord_log::ProposedEvent;
use fjord_log::RecordedEvent;

use crate::config::Config;

/// Runs the dev workload against the node described by `config` and prints what happens.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let (data_dir, options) = (config.data_dir.clone(), config.store.clone());
    let store = tokio::task::spawn_blocking(move || LogStore::open(&data_dir, &options))
        .await?
        .with_context(|| format!("opening the log store in {}", config.data_dir.display()))?;
    let store = Arc::new(store);
    let appender = Appender::start(&store, config.limits.clone(), config.group_commit.clone())?;
    println!(
        "fjord dev: node log at {} ({} partitions, fsync on every append)",
        config.data_dir.display(),
        store.partition_count()
    );

    let orders = ["order-1001", "order-1002", "order-1003"];
    let mut first_appends = Vec::new();
    for (n, stream) in orders.iter().enumerate() {
        let request = sample_order(stream, n);
        let outcome = appender.append(request.clone()).await?;
        println!("appended {} events to {stream}: {}", request.events.len(), describe(&outcome));
        first_appends.push(request);
    }

    let retry = appender.append(first_appends[0].clone()).await?;
    println!("retried the first append with the same event ids: {}", describe(&retry));

    let conflict = AppendRequest {
        stream: orders[0].to_owned(),
        expected: ExpectedRevision::NoStream,
        events: vec![ProposedEvent::json("OrderPlaced", br#"{"note":"a second creation"}"#.to_vec())],
    };
    match appender.append(conflict).await {
        Ok(outcome) => println!("unexpected: a conflicting append succeeded at {}", describe(&outcome)),
        Err(error) => println!("a conflicting append was refused ({}): {error}", error.reason()),
    }

    for stream in orders {
        let log = store.partition_for(stream).clone();
        let owned = stream.to_owned();
        let events = tokio::task::spawn_blocking(move || {
            log.read_stream(&owned, 0, Direction::Forward, u64::MAX).collect::<fjord_log::Result<Vec<_>>>()
        })
        .await??;
        println!("read back {stream} ({} events):", events.len());
        for event in events.iter().rev().take(4).rev() {
            println!("  {}", describe_event(event));
        }
        if events.len() > 4 {
            println!("  ... and {} earlier events", events.len() - 4);
        }
    }
    let offsets: Vec<String> =
        store.partitions().iter().map(|p| format!("p{}={}", p.partition(), p.next_offset())).collect();
    println!("partition sizes (events): {}", offsets.join(" "));
    println!("appends per fsync so far: {:.1}", appender.stats().appends_per_batch());
    tokio::task::spawn_blocking(move || appender.shutdown()).await?;
    println!("done; run it again to append more, or delete {} to start over", config.data_dir.display());
    Ok(())
}

fn sample_order(stream: &str, n: usize) -> AppendRequest {
    let sku = ["fjord-mug", "kayak-paddle", "wool-socks"][n % 3];
    let mut events = vec![
        ProposedEvent::json("OrderPlaced", format!(r#"{{"customer":"c-{n}","currency":"NOK"}}"#).into_bytes()),
        ProposedEvent::json("ItemAdded", format!(r#"{{"sku":"{sku}","quantity":{}}}"#, n + 1).into_bytes()),
        ProposedEvent::json("OrderShipped", br#"{"carrier":"posten"}"#.to_vec()),
    ];
    for event in &mut events {
        event.metadata.insert("source".to_owned(), "fjord-dev".to_owned());
    }
    AppendRequest { stream: stream.to_owned(), expected: ExpectedRevision::Any, events }
}

fn describe(outcome: &AppendOutcome) -> String {
    let first = outcome.positions[0];
    let last = outcome.positions[outcome.positions.len() - 1];
    format!(
        "partition {} offsets {}..={}, revisions {}..={}{}",
        outcome.partition,
        first.offset,
        last.offset,
        first.revision,
        last.revision,
        if outcome.deduplicated { " (deduplicated: nothing written)" } else { "" }
    )
}

fn describe_event(event: &RecordedEvent) -> String {
    format!(
        "rev {:>3}  offset {:>5}  {:<13} {}",
        event.revision,
        event.offset,
        event.event_type,
        String::from_utf8_lossy(&event.data)
    )
}
