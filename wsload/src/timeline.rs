//! The phases of a run and the deadlines that bound every loop: warm-up, measurement, drain of
//! the echoes still in flight, closing, and the hard deadline after which nothing is awaited.

use std::time::Duration;

use tokio::time::Instant;

/// How long after the load ends echoes still in flight are waited for.
pub const DRAIN: Duration = Duration::from_secs(5);
/// How long after the drain connections are given to close cleanly.
pub const CLOSE: Duration = Duration::from_secs(5);

/// Instants of one run. Events are attributed to the measurement window by when they started:
/// a connection attempt by when it began, an echo by when its message was sent.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    start: Instant,
    /// End of the warm-up, start of the measurement window.
    pub measure_from: Instant,
    /// End of the measurement window: no message is sent and no connection opened after it.
    pub load_end: Instant,
    /// Echoes of messages sent before `load_end` are waited for until then.
    pub drain_end: Instant,
    /// Every task has ended by then (connections still closing are dropped).
    pub hard_deadline: Instant,
}

impl Timeline {
    pub fn new(start: Instant, warmup: Duration, duration: Duration) -> Self {
        let measure_from = start + warmup;
        let load_end = measure_from + duration;
        let drain_end = load_end + DRAIN;
        Self {
            start,
            measure_from,
            load_end,
            drain_end,
            hard_deadline: drain_end + CLOSE,
        }
    }

    /// Whether something that started at `at` is measured.
    pub fn in_window(&self, at: Instant) -> bool {
        at >= self.measure_from && at < self.load_end
    }

    /// Nanoseconds from the start of the run to `at` (carried in each message).
    pub fn ns_since_start(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `ns` nanoseconds after the start of the run.
    pub fn at_ns(&self, ns: u64) -> Instant {
        self.start + Duration::from_nanos(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_excludes_warmup_and_everything_after_the_load() {
        let start = Instant::now();
        let timeline = Timeline::new(start, Duration::from_secs(1), Duration::from_secs(2));
        assert!(!timeline.in_window(start));
        assert!(timeline.in_window(start + Duration::from_secs(1)));
        assert!(timeline.in_window(start + Duration::from_millis(2999)));
        assert!(!timeline.in_window(start + Duration::from_secs(3)));
        assert_eq!(timeline.hard_deadline, timeline.load_end + DRAIN + CLOSE);
        let at = start + Duration::from_micros(1500);
        assert_eq!(timeline.at_ns(timeline.ns_since_start(at)), at);
    }
}
