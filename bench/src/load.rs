//! How load is offered and what it costs: closed-loop writers (one request in flight each), open-loop
//! writers (requests on a fixed schedule, latency measured from the intended send time, so a stall counts
//! against every request it delays instead of hiding by slowing the sender), and the CPU time of every
//! process taking part.

use std::future::Future;
use std::time::Duration;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::summary::histogram;
use crate::summary::record;

/// When a writer sends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// As soon as the previous request is answered.
    Closed,
    /// On a fixed schedule: this many requests per second, spread evenly over the writers.
    Open {
        /// Requests per second offered by all writers together.
        per_second: f64,
    },
}

/// The measured part of a run: when it starts counting and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// When the writers started.
    pub(crate) start: Instant,
    /// Requests sent before `start + warm_up` are not counted.
    pub(crate) warm_up: Duration,
    /// How long requests are counted after the warm-up.
    pub(crate) measured: Duration,
}

impl Window {
    /// A window starting now.
    pub(crate) fn starting_now(warm_up: Duration, measured: Duration) -> Self {
        Window { start: Instant::now(), warm_up, measured }
    }

    fn end(&self) -> Instant {
        self.start + self.warm_up + self.measured
    }

    fn counts(&self, sent: Instant) -> bool {
        sent >= self.start + self.warm_up
    }
}

/// One writer of `writers`, numbered `writer`: sends with `send` at `pace` until the window ends; returns
/// how many requests it sent after the warm-up and their latencies.
pub(crate) async fn writer_loop<F>(
    window: Window,
    pace: Pace,
    writer: usize,
    writers: usize,
    mut send: impl FnMut() -> F,
) -> anyhow::Result<WriterCount>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let mut latencies = histogram()?;
    let mut counted = 0u64;
    // Open loop: this writer's share of the schedule, offset so the writers interleave evenly.
    let interval = match pace {
        Pace::Closed => None,
        Pace::Open { per_second } => Some(Duration::from_secs_f64(writers as f64 / per_second.max(1e-3))),
    };
    let mut intended = window.start + interval.map_or(Duration::ZERO, |i| i.mul_f64(writer as f64 / writers as f64));
    while intended < window.end() {
        match interval {
            Some(_) => tokio::time::sleep_until(intended.into()).await,
            None => intended = Instant::now(),
        }
        send().await?;
        if window.counts(intended) {
            record(&mut latencies, intended.elapsed());
            counted += 1;
        }
        if let Some(interval) = interval {
            intended += interval;
        }
    }
    Ok((counted, latencies))
}

/// What one writer counted: requests sent after the warm-up, and their latencies.
pub(crate) type WriterCount = (u64, Histogram<u64>);

/// Waits for every writer and merges what they counted: requests after the warm-up and their latencies.
pub(crate) async fn join_writers(
    writers: Vec<tokio::task::JoinHandle<anyhow::Result<WriterCount>>>,
) -> anyhow::Result<WriterCount> {
    let mut latencies = histogram()?;
    let mut requests = 0;
    for writer in writers {
        let (count, histogram) = writer.await??;
        requests += count;
        latencies.add(histogram)?;
    }
    Ok((requests, latencies))
}

/// CPU time (user + system) of a process so far, in seconds; `None` once it has exited.
pub(crate) fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'; utime and stime
    // are fields 14 and 15 of the line, the 12th and 13th after the name.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / clock_ticks_per_second())
}

/// CPU seconds of this process and of the given servers, summed per side.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct CpuSeconds {
    /// The bench's own process (the clients).
    pub(crate) client: f64,
    /// The server processes, together.
    pub(crate) servers: f64,
}

impl CpuSeconds {
    /// The CPU time used so far by this process and by `servers`.
    pub(crate) fn now(servers: &[u32]) -> Self {
        CpuSeconds {
            client: cpu_seconds(None).unwrap_or(0.0),
            servers: servers.iter().filter_map(|pid| cpu_seconds(Some(*pid))).sum(),
        }
    }

    /// The CPU time spent since `earlier`, per million of `events`.
    pub(crate) fn per_million_since(&self, earlier: &CpuSeconds, events: u64) -> CpuSeconds {
        let per_million = |spent: f64| if events == 0 { 0.0 } else { spent / events as f64 * 1e6 };
        CpuSeconds {
            client: per_million(self.client - earlier.client),
            servers: per_million(self.servers - earlier.servers),
        }
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Waits for `writers` (a preload), showing on stderr every two seconds how many of `total` events
/// `appended` says are in and at what rate, then how long it took.
pub(crate) async fn preload_progress(
    writers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    total: u64,
    appended: impl Fn() -> u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut shown = Instant::now();
    for writer in writers {
        while !writer.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if shown.elapsed() >= Duration::from_secs(2) {
                let done = appended().min(total);
                let rate = done as f64 / started.elapsed().as_secs_f64();
                eprintln!("preloading: {done} of {total} events appended ({rate:.0} events/s)");
                shown = Instant::now();
            }
        }
        writer.await??;
    }
    eprintln!("preloaded {total} events in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
