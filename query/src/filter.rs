//! What a scan of `events` can skip: the filters DataFusion pushes down, read as ranges and sets over the
//! log's own keys (partition, offset, stream, type, commit time).
//!
//! Every pushdown is *inexact*: DataFusion still evaluates the whole filter on what the scan returns, so
//! this module only has to be a superset — it narrows what is read and never decides what is answered.

use std::collections::BTreeSet;
use std::ops::Range;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::BinaryExpr;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::Operator;
use datafusion::logical_expr::expr::Between;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::expr::Like;

use fjord_projections::schema;

/// The part of a query's `WHERE` clause a scan of `events` can act on. Each field only ever narrows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventFilter {
    /// Only these partitions (`None`: all).
    pub(crate) partitions: Option<BTreeSet<u32>>,
    /// Only offsets in this range.
    pub(crate) offsets: Range<u64>,
    /// Only these streams (`None`: all): read through the stream index, not the partition.
    pub(crate) streams: Option<BTreeSet<String>>,
    /// Only streams starting with this.
    pub(crate) stream_prefix: Option<String>,
    /// Only these event types (`None`: all).
    pub(crate) types: Option<BTreeSet<String>>,
    /// Only commit times in this range, microseconds since the epoch. Commit times never decrease within a
    /// partition, so a scan seeks to the range's start and stops past its end.
    pub(crate) micros: Range<i64>,
}

impl EventFilter {
    /// The filter that keeps everything.
    pub(crate) fn everything() -> Self {
        EventFilter {
            partitions: None,
            offsets: 0..u64::MAX,
            streams: None,
            stream_prefix: None,
            types: None,
            micros: i64::MIN..i64::MAX,
        }
    }

    /// The filter of a conjunction of pushed-down expressions (the ones it does not understand keep
    /// everything).
    pub(crate) fn of(exprs: &[Expr]) -> Self {
        let mut filter = EventFilter::everything();
        for expr in exprs {
            filter.narrow(expr);
        }
        filter
    }

    /// Whether a scan can use `expr` to read less.
    pub(crate) fn understands(expr: &Expr) -> bool {
        EventFilter::everything().narrow(expr)
    }

    /// Whether the filter can keep nothing at all (an empty range or set).
    pub(crate) fn is_empty(&self) -> bool {
        self.offsets.is_empty()
            || self.micros.is_empty()
            || self.partitions.as_ref().is_some_and(BTreeSet::is_empty)
            || self.streams.as_ref().is_some_and(BTreeSet::is_empty)
            || self.types.as_ref().is_some_and(BTreeSet::is_empty)
    }

    /// Whether `event` passes the parts of the filter a scan checks row by row (stream, prefix, type and
    /// time; partitions and offsets decide what is read).
    pub(crate) fn keeps(&self, stream: &str, event_type: &str, timestamp_micros: i64) -> bool {
        self.streams.as_ref().is_none_or(|streams| streams.contains(stream))
            && self.stream_prefix.as_ref().is_none_or(|prefix| stream.starts_with(prefix.as_str()))
            && self.types.as_ref().is_none_or(|types| types.contains(event_type))
            && self.micros.contains(&timestamp_micros)
    }

    /// Narrows the filter by `expr`; whether it could.
    fn narrow(&mut self, expr: &Expr) -> bool {
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match (column_of(left), literal_of(right)) {
                (Some(column), Some(value)) => self.compare(column, *op, value),
                _ => match (literal_of(left), column_of(right), op.swap()) {
                    (Some(value), Some(column), Some(op)) => self.compare(column, op, value),
                    _ => false,
                },
            },
            Expr::InList(InList { expr, list, negated: false }) => {
                let Some(column) = column_of(expr) else { return false };
                let values: Option<Vec<Literal>> = list.iter().map(literal_of).collect();
                values.is_some_and(|values| self.one_of(column, values))
            }
            Expr::Between(Between { expr, negated: false, low, high }) => {
                match (column_of(expr), literal_of(low), literal_of(high)) {
                    (Some(column), Some(low), Some(high)) => {
                        self.compare(column, Operator::GtEq, low) && self.compare(column, Operator::LtEq, high)
                    }
                    _ => false,
                }
            }
            Expr::Like(Like { negated: false, expr, pattern, escape_char: None, case_insensitive: false }) => {
                match (column_of(expr), literal_of(pattern)) {
                    (Some(schema::STREAM), Some(Literal::Text(pattern))) => match like_prefix(&pattern) {
                        Some(prefix) => {
                            self.narrow_prefix(prefix);
                            true
                        }
                        None => false,
                    },
                    _ => false,
                }
            }
            _ => false,
        }
    }

    fn compare(&mut self, column: &str, op: Operator, value: Literal) -> bool {
        match (column, value) {
            (schema::OFFSET, Literal::Integer(value)) => narrow_range(&mut self.offsets, op, value, value),
            (schema::TIMESTAMP, Literal::Micros { floor, ceil }) => {
                narrow_range(&mut self.micros, op, i128::from(floor), i128::from(ceil))
            }
            (schema::PARTITION | schema::STREAM | schema::TYPE, value) if op == Operator::Eq => {
                self.one_of(column, vec![value])
            }
            _ => false,
        }
    }

    fn one_of(&mut self, column: &str, values: Vec<Literal>) -> bool {
        match column {
            schema::PARTITION => {
                let partitions = values.into_iter().filter_map(|value| match value {
                    // A value out of range matches no partition.
                    Literal::Integer(value) => u32::try_from(value).ok(),
                    _ => None,
                });
                intersect(&mut self.partitions, partitions.collect());
                true
            }
            schema::STREAM | schema::TYPE => {
                let texts: Option<BTreeSet<String>> = values
                    .into_iter()
                    .map(|value| match value {
                        Literal::Text(text) => Some(text),
                        _ => None,
                    })
                    .collect();
                let Some(texts) = texts else { return false };
                intersect(if column == schema::STREAM { &mut self.streams } else { &mut self.types }, texts);
                true
            }
            _ => false,
        }
    }

    fn narrow_prefix(&mut self, prefix: String) {
        self.stream_prefix = Some(match self.stream_prefix.take() {
            // Of two prefixes both must hold: the longer one, if it extends the other; if neither
            // extends the other no stream has both, which an impossible prefix says.
            Some(old) if old.starts_with(&prefix) => old,
            Some(old) if prefix.starts_with(&old) => prefix,
            Some(_) => {
                self.streams = Some(BTreeSet::new());
                prefix
            }
            None => prefix,
        });
    }
}

/// A literal a filter compares with, in the form the log keys take.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Literal {
    Integer(i128),
    Text(String),
    /// A time in microseconds, rounded both ways (a nanosecond time may fall between two).
    Micros {
        floor: i64,
        ceil: i64,
    },
}

fn column_of(expr: &Expr) -> Option<&'static str> {
    let Expr::Column(column) = expr else { return None };
    schema::COLUMNS.into_iter().find(|name| *name == column.name)
}

fn literal_of(expr: &Expr) -> Option<Literal> {
    let Expr::Literal(value, _) = expr else { return None };
    let micros = |value: Option<i64>, per_micro: i64, micros_per: i64| {
        value.map(|value| {
            let scaled = value.saturating_mul(micros_per);
            let floor = scaled.div_euclid(per_micro);
            let ceil = if scaled.rem_euclid(per_micro) == 0 { floor } else { floor.saturating_add(1) };
            Literal::Micros { floor, ceil }
        })
    };
    match value {
        ScalarValue::Int8(v) => v.map(|v| Literal::Integer(v.into())),
        ScalarValue::Int16(v) => v.map(|v| Literal::Integer(v.into())),
        ScalarValue::Int32(v) => v.map(|v| Literal::Integer(v.into())),
        ScalarValue::Int64(v) => v.map(|v| Literal::Integer(v.into())),
        ScalarValue::UInt8(v) => v.map(|v| Literal::Integer(v.into())),
        ScalarValue::UInt16(v) => v.map(|v| Literal::Integer(v.into())),
        ScalarValue::UInt32(v) => v.map(|v| Literal::Integer(v.into())),
        ScalarValue::UInt64(v) => v.map(|v| Literal::Integer(v.into())),
        ScalarValue::Utf8(v) | ScalarValue::Utf8View(v) | ScalarValue::LargeUtf8(v) => v.clone().map(Literal::Text),
        ScalarValue::TimestampSecond(v, _) => micros(*v, 1, 1_000_000),
        ScalarValue::TimestampMillisecond(v, _) => micros(*v, 1, 1_000),
        ScalarValue::TimestampMicrosecond(v, _) => micros(*v, 1, 1),
        ScalarValue::TimestampNanosecond(v, _) => micros(*v, 1_000, 1),
        _ => None,
    }
}

/// The fixed prefix of a `LIKE` pattern whose only wildcard is one trailing `%` (`order-%`), if it is one.
fn like_prefix(pattern: &str) -> Option<String> {
    let prefix = pattern.strip_suffix('%')?;
    (!prefix.contains(['%', '_', '\\'])).then(|| prefix.to_owned())
}

/// Narrows a half-open range by `column op value`, where `value` lies in `low..=high` (a rounded time): a
/// lower bound takes `low` and an upper bound `high`, so the range never loses a row. Whether the operator
/// was one it knows.
fn narrow_range<T>(range: &mut Range<T>, op: Operator, low: i128, high: i128) -> bool
where
    T: Copy + Ord + TryFrom<i128> + Into<i128>,
{
    // Clamp to the type: an offset compared with -1 or 2^70 still narrows correctly.
    let (min, max): (i128, i128) = (range_min::<T>(), range_max::<T>());
    let clamp = |value: i128| -> T {
        let clamped = value.clamp(min, max);
        T::try_from(clamped).unwrap_or(range.start)
    };
    let (start, end) = match op {
        Operator::Eq => (low, high.saturating_add(1)),
        Operator::Gt => (low.saturating_add(1), max),
        Operator::GtEq => (low, max),
        Operator::Lt => (min, high),
        Operator::LtEq => (min, high.saturating_add(1)),
        _ => return false,
    };
    let (start, end) = (clamp(start), clamp(end));
    range.start = range.start.max(start);
    range.end = range.end.min(end);
    true
}

fn range_min<T: TryFrom<i128> + Into<i128>>() -> i128 {
    [i128::from(i64::MIN), 0].into_iter().find(|value| T::try_from(*value).is_ok()).unwrap_or(0)
}

fn range_max<T: TryFrom<i128> + Into<i128>>() -> i128 {
    [i128::from(u64::MAX), i128::from(i64::MAX)].into_iter().find(|value| T::try_from(*value).is_ok()).unwrap_or(0)
}

fn intersect<T: Ord>(set: &mut Option<BTreeSet<T>>, values: BTreeSet<T>) {
    *set = Some(match set.take() {
        Some(old) => old.into_iter().filter(|value| values.contains(value)).collect(),
        None => values,
    });
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::col;
    use datafusion::logical_expr::lit;

    use super::*;

    #[test]
    fn offset_comparisons_become_one_half_open_range() {
        let filter = EventFilter::of(&[col("offset").gt_eq(lit(10u64)), col("offset").lt(lit(20i64))]);
        assert_eq!(filter.offsets, 10..20);
        let filter = EventFilter::of(&[lit(5i32).lt(col("offset")), col("offset").lt_eq(lit(7u8))]);
        assert_eq!(filter.offsets, 6..8);
        let filter = EventFilter::of(&[col("offset").between(lit(3u64), lit(4u64))]);
        assert_eq!(filter.offsets, 3..5);
    }

    #[test]
    fn an_out_of_range_literal_clamps_instead_of_wrapping() {
        let filter = EventFilter::of(&[col("offset").gt(lit(-1i64))]);
        assert_eq!(filter.offsets, 0..u64::MAX);
        let filter = EventFilter::of(&[col("offset").lt(lit(-1i64))]);
        assert!(filter.is_empty());
    }

    #[test]
    fn equalities_and_lists_intersect() {
        let filter = EventFilter::of(&[
            col("stream").in_list(vec![lit("a"), lit("b")], false),
            col("stream").eq(lit("b")),
            col("partition").eq(lit(2u32)),
            col("type").in_list(vec![lit("Paid")], false),
        ]);
        assert_eq!(filter.streams, Some(BTreeSet::from(["b".to_owned()])));
        assert_eq!(filter.partitions, Some(BTreeSet::from([2])));
        assert_eq!(filter.types, Some(BTreeSet::from(["Paid".to_owned()])));
        let disjoint = EventFilter::of(&[col("stream").eq(lit("a")), col("stream").eq(lit("b"))]);
        assert!(disjoint.is_empty());
    }

    #[test]
    fn only_a_trailing_percent_is_a_stream_prefix() {
        assert_eq!(EventFilter::of(&[col("stream").like(lit("order-%"))]).stream_prefix.as_deref(), Some("order-"));
        for pattern in ["%order", "or_der%", "order-%-x%", "order"] {
            assert!(!EventFilter::understands(&col("stream").like(lit(pattern))), "{pattern}");
        }
        assert!(!EventFilter::understands(&col("type").like(lit("Paid%"))));
        assert!(!EventFilter::understands(&col("stream").not_like(lit("order-%"))));
    }

    #[test]
    fn timestamps_of_every_unit_become_microseconds() {
        let at = |value: ScalarValue| EventFilter::of(&[col("timestamp").gt_eq(lit(value))]).micros.start;
        assert_eq!(at(ScalarValue::TimestampSecond(Some(2), None)), 2_000_000);
        assert_eq!(at(ScalarValue::TimestampMillisecond(Some(2), None)), 2_000);
        assert_eq!(at(ScalarValue::TimestampNanosecond(Some(2_999), None)), 2);
        // An event at 2 µs is before 2,999 ns: the upper bound rounds up.
        let before = EventFilter::of(&[col("timestamp").lt(lit(ScalarValue::TimestampNanosecond(Some(2_999), None)))]);
        assert!(before.micros.contains(&2));
    }

    #[test]
    fn what_it_does_not_understand_keeps_everything() {
        for expr in [col("offset").not_eq(lit(3u64)), col("data").eq(lit("x")), col("revision").gt(lit(1u64))] {
            assert!(!EventFilter::understands(&expr), "{expr}");
        }
        assert_eq!(EventFilter::of(&[col("data").eq(lit("x"))]), EventFilter::everything());
    }
}
