//! The purge watermark: the latest `lastCachePurge` the upstream reported, in the gateway's
//! wall-clock microseconds. Every answer fetched before it counts as gone.
//!
//! `lastCachePurge` is a date on the upstream's clock and an answer's store time is a date on
//! the gateway's, so comparing them assumes the two clocks agree (both NTP-synchronised). The
//! configured margin is added to every reported date: it covers the millisecond resolution of
//! the upstream's text and a gateway clock running ahead by up to the margin. A gateway clock
//! running behind only drops a few answers too many.
//!
//! A reported date later than the gateway's now counts as now: the purge cannot have happened
//! later than the answer reporting it, so everything fetched before now is dropped, and a
//! skewed or bogus future date cannot keep the cache from storing anything until then. The
//! date itself is remembered as reported: the same future date reported again by every later
//! session answer is not a new purge (counting it as "now" each time would empty the cache on
//! every session).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A duration in whole microseconds, saturating.
pub fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Now on the gateway's wall clock, in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => micros(d),
        Err(_) => 0,
    }
}

/// An RFC 3339 date (what the upstream sends, e.g. `2023-11-07T05:31:56.123Z`) in microseconds
/// since the Unix epoch; `None` when it is not one.
pub fn parse_date(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s.trim(), &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000).ok()
}

/// What reporting a purge date did to the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// The first date seen since start-up: nothing was purged that the gateway knew of.
    First,
    /// A later date than before: a purge happened upstream.
    Moved,
    /// Not later than the watermark.
    Unchanged,
}

/// The watermark, lock-free; `i64::MIN` until the first report.
#[derive(Debug)]
pub struct Watermark {
    at_us: AtomicI64,
    /// The latest date reported, unclamped (upstream clock).
    reported_us: AtomicI64,
    margin_us: i64,
}

impl Watermark {
    pub fn new(margin: std::time::Duration) -> Self {
        Self {
            at_us: AtomicI64::new(i64::MIN),
            reported_us: AtomicI64::new(i64::MIN),
            margin_us: micros(margin),
        }
    }

    /// Reports a purge date (microseconds on the upstream's clock) read at `now_us` (the
    /// gateway's); the watermark only moves forward, whatever order reports arrive in.
    pub fn report(&self, purge_us: i64, now_us: i64) -> Advance {
        if purge_us <= self.reported_us.fetch_max(purge_us, Ordering::AcqRel) {
            return Advance::Unchanged;
        }
        let next = purge_us.min(now_us).saturating_add(self.margin_us);
        let prev = self.at_us.fetch_max(next, Ordering::AcqRel);
        if next <= prev {
            Advance::Unchanged
        } else if prev == i64::MIN {
            Advance::First
        } else {
            Advance::Moved
        }
    }

    /// The current watermark: answers fetched before it are gone.
    pub fn get(&self) -> i64 {
        self.at_us.load(Ordering::Acquire)
    }

    /// Whether an answer fetched at `fetched_us` is gone.
    pub fn purged(&self, fetched_us: i64) -> bool {
        fetched_us < self.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn moves_only_forward() {
        let w = Watermark::new(Duration::ZERO);
        let now = 1_000_000;
        assert!(!w.purged(i64::MIN + 1));
        assert_eq!(w.report(1_000, now), Advance::First);
        assert_eq!(w.report(1_000, now), Advance::Unchanged);
        assert_eq!(w.report(500, now), Advance::Unchanged);
        assert_eq!(w.get(), 1_000);
        assert_eq!(w.report(2_000, now), Advance::Moved);
        assert!(w.purged(1_999));
        assert!(!w.purged(2_000));
    }

    #[test]
    fn margin_widens_what_counts_as_purged() {
        let w = Watermark::new(Duration::from_millis(1));
        w.report(10_000, 20_000);
        assert!(
            w.purged(10_999),
            "same millisecond as the purge counts as before it"
        );
        assert!(!w.purged(11_000));
    }

    #[test]
    fn a_date_in_the_future_counts_as_now() {
        let w = Watermark::new(Duration::ZERO);
        w.report(i64::MAX / 2, 5_000);
        assert_eq!(w.get(), 5_000);
        assert!(w.purged(4_999));
        assert!(!w.purged(5_000), "answers fetched from now on are kept");
        // The same future date reported again later is not a new purge.
        assert_eq!(w.report(i64::MAX / 2, 9_000), Advance::Unchanged);
        assert_eq!(w.get(), 5_000);
        assert!(!w.purged(5_000));
        // A later one is.
        assert_eq!(w.report(i64::MAX / 2 + 1, 9_000), Advance::Moved);
        assert_eq!(w.get(), 9_000);
    }

    #[test]
    fn dates_parse_as_the_upstream_writes_them() {
        assert_eq!(parse_date("1970-01-01T00:00:01.500Z"), Some(1_500_000));
        assert_eq!(parse_date("1970-01-01T01:00:01+01:00"), Some(1_000_000));
        assert_eq!(
            parse_date("2023-11-07T05:31:56Z"),
            Some(1_699_335_116_000_000)
        );
        for bad in [
            "",
            "yesterday",
            "2023-13-07T05:31:56Z",
            "1699335116",
            "2023-11-07",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }
}
