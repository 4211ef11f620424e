//! `fjord tail`: a subscription printed as it arrives (through `fjord-client`, which resumes it on another
//! node when one fails), one line per event — readable by default, JSON with `--json` — until Ctrl-C. On a
//! terminal, stderr says how far a catch-up has to go and when it has gone live.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context;
use fjord_client::Start;
use fjord_client::v1;
use serde_json::json;

use crate::client::ClientArgs;
use crate::client::client_failed;
use crate::client::printable;

/// Flags of `fjord tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// More nodes of the region (`host:port,…`), to go on from when `--server` fails.
    #[arg(long, value_delimiter = ',')]
    also: Vec<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Where to start: `start`, `end`, `revision:N` (with --stream), or per partition `P:OFFSET,…` (a
    /// position a JSON line printed).
    #[arg(long, default_value = "start")]
    from: String,
}

/// Which events a subscription takes: the flags `fjord tail` and `fjord subscription create` share.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Only this stream.
    #[arg(long, group = "scope")]
    stream: Option<String>,
    /// Only streams whose names start with this.
    #[arg(long, group = "scope")]
    prefix: Option<String>,
    /// Only streams of this category (the name before its first '-').
    #[arg(long, group = "scope")]
    category: Option<String>,
    /// Only events of this type (repeat for more).
    #[arg(long = "type")]
    types: Vec<String>,
}

impl FilterArgs {
    /// The filter as the API carries it.
    pub fn to_wire(&self) -> v1::SubscriptionFilter {
        v1::SubscriptionFilter {
            stream: self.stream.clone().unwrap_or_default(),
            stream_prefix: self.prefix.clone().unwrap_or_default(),
            category: self.category.clone().unwrap_or_default(),
            event_types: self.types.clone(),
        }
    }
}

impl TailArgs {
    /// Prints events until Ctrl-C, or until the region cannot be reached for the client's retry time.
    pub async fn run(self) -> anyhow::Result<()> {
        let start = parse_start(&self.from)?;
        let client = self.client.fjord_client(&self.also)?;
        let mut subscription = client.subscribe(self.filter.to_wire(), start);
        let mut progress = Progress::new();
        loop {
            let delivery = tokio::select! {
                delivery = subscription.next() => delivery.map_err(client_failed)?,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            progress.show(&delivery);
            let mut out = std::io::stdout().lock();
            let printed =
                delivery.events.iter().try_for_each(|event| self.print(&mut out, event, &delivery.next_offsets));
            match printed.and_then(|()| out.flush()) {
                Ok(()) => {}
                // The reader went (`fjord tail | head`): done, not an error.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(error) => return Err(error.into()),
            }
        }
    }

    fn print(
        &self,
        out: &mut impl Write,
        event: &v1::RecordedEvent,
        next_offsets: &BTreeMap<u32, u64>,
    ) -> std::io::Result<()> {
        let position = event.position.unwrap_or_default();
        let data = String::from_utf8_lossy(&event.data);
        if self.client.json {
            // Where to resume after this event: its offset + 1 in its partition, the others as delivered.
            let mut resume = next_offsets.clone();
            resume.insert(position.partition, position.offset + 1);
            let resume: Vec<String> = resume.iter().map(|(p, o)| format!("{p}:{o}")).collect();
            let line = json!({"stream": event.stream, "revision": position.revision, "partition": position.partition,
                "offset": position.offset, "type": event.r#type, "data": data,
                "timestamp_micros": event.timestamp_micros, "resume_from": resume.join(",")});
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", readable_line(event))?;
        }
        Ok(())
    }
}

/// An event as one readable line: `partition/offset  stream@revision  type  data`.
pub fn readable_line(event: &v1::RecordedEvent) -> String {
    let position = event.position.unwrap_or_default();
    format!(
        "{}/{}  {}@{}  {}  {}",
        position.partition,
        position.offset,
        printable(&event.stream),
        position.revision,
        printable(&event.r#type),
        printable(&String::from_utf8_lossy(&event.data))
    )
}

/// Catch-up progress on a terminal's stderr: how many events the subscription still has to look at on the
/// serving node, every few seconds while it is behind, and once when it has caught up and goes live.
struct Progress {
    to_terminal: bool,
    shown: Option<std::time::Instant>,
    live: bool,
}

impl Progress {
    fn new() -> Self {
        use std::io::IsTerminal;
        Progress { to_terminal: std::io::stderr().is_terminal(), shown: None, live: false }
    }

    fn show(&mut self, delivery: &fjord_client::Delivery) {
        if !self.to_terminal {
            return;
        }
        let behind: u64 = delivery
            .as_of_offsets
            .iter()
            .map(|(partition, end)| end.saturating_sub(delivery.next_offsets.get(partition).copied().unwrap_or(0)))
            .sum();
        if behind == 0 {
            if !self.live {
                eprintln!("tail: caught up on {}; following live (Ctrl-C to stop)", delivery.node);
                self.live = true;
            }
            return;
        }
        self.live = false;
        if self.shown.is_none_or(|shown| shown.elapsed() >= std::time::Duration::from_secs(2)) {
            eprintln!("tail: catching up on {}: {behind} events still to look at", delivery.node);
            self.shown = Some(std::time::Instant::now());
        }
    }
}

/// `--from`: `start`, `end`, `revision:N`, or `P:OFFSET,…`.
fn parse_start(from: &str) -> anyhow::Result<Start> {
    let bad = || format!("--from {from:?}: start, end, revision:N, or partition offsets P:OFFSET,…");
    Ok(match from {
        "start" => Start::Beginning,
        "end" => Start::End,
        _ => match from.strip_prefix("revision:") {
            Some(revision) => Start::Revision(revision.parse().with_context(bad)?),
            None => Start::Offsets(
                from.split(',')
                    .map(|pair| {
                        let (partition, offset) = pair.split_once(':').with_context(bad)?;
                        Ok((partition.parse().with_context(bad)?, offset.parse().with_context(bad)?))
                    })
                    .collect::<anyhow::Result<_>>()?,
            ),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_takes_start_end_a_revision_or_offsets() {
        assert_eq!(parse_start("start").unwrap(), Start::Beginning);
        assert_eq!(parse_start("end").unwrap(), Start::End);
        assert_eq!(parse_start("revision:7").unwrap(), Start::Revision(7));
        assert_eq!(parse_start("0:5,3:9").unwrap(), Start::Offsets(BTreeMap::from([(0, 5), (3, 9)])));
        for bad in ["", "revision:x", "0:", "1", "0:1,zz"] {
            assert!(parse_start(bad).is_err(), "{bad}");
        }
    }
}
