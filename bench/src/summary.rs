//! Latency histograms and the shape of a result line.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
}

/// A histogram of microseconds from 1 µs to 100 s, three significant digits.
pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 100_000_000, 3)?)
}

pub(crate) fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).clamp(1, 100_000_000);
    // In bounds by the clamp above.
    let _ = histogram.record(micros);
}

impl Latency {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        Latency {
            p50_us: histogram.value_at_quantile(0.50),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs", self.p50_us, self.p99_us, self.p999_us, self.max_us)
    }
}

/// Runs `measure` once per writer count on one runtime and prints each result: the line `describe` makes of
/// it, or with `json` a JSON line on stdout and that line on stderr.
pub(crate) fn sweep<R, F>(
    writers: &[usize],
    json: bool,
    measure: impl Fn(usize) -> F,
    describe: impl Fn(&R) -> String,
) -> anyhow::Result<()>
where
    R: Serialize,
    F: Future<Output = anyhow::Result<R>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    for &count in writers {
        let result = runtime.block_on(measure(count))?;
        if json {
            writeln!(std::io::stdout().lock(), "{}", serde_json::to_string(&result)?)?;
            writeln!(std::io::stderr().lock(), "{}", describe(&result))?;
        } else {
            writeln!(std::io::stdout().lock(), "{}", describe(&result))?;
        }
    }
    Ok(())
}
