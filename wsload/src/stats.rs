//! Measurements: plain counters owned by each connection task, and latency histograms that
//! tasks feed in batches, summed once at the end of the run.
//!
//! An HDR histogram of 1 µs..60 s at 3 significant digits takes ~140 KB, too much to give each
//! of many thousands of connections its own. Each task therefore buffers its samples
//! ([`Recorder`], a few KB) and adds them to one of a few shared histograms ([`Histograms`])
//! once per [`BATCH`] samples: one uncontended lock per batch, none per message.

use std::ops::AddAssign;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Lowest recordable latency, in microseconds (shorter ones are recorded as 1 µs).
const LOWEST_US: u64 = 1;
/// Highest recordable latency, in microseconds (longer ones are recorded as 60 s).
const HIGHEST_US: u64 = 60_000_000;
/// Significant decimal digits kept by the histograms.
const SIGFIG: u8 = 3;
/// Samples a task buffers before adding them to a shared histogram.
pub const BATCH: usize = 256;

/// Counts of one task, summed over all tasks at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connection attempts (TCP, TLS and WebSocket handshakes) that succeeded / failed.
    pub connects_ok: u64,
    pub connect_errors: u64,
    pub messages_sent: u64,
    /// Echoes received and verified.
    pub messages_received: u64,
    /// Errors on established connections: corrupted or unexpected echoes, echoes that never
    /// came, connections closed or reset by the server.
    pub errors: u64,
    /// Outside the measurement window too, to tell whether anything worked at all.
    pub connects_ok_in_run: u64,
    pub messages_received_in_run: u64,
}

impl AddAssign<&Counters> for Counters {
    fn add_assign(&mut self, other: &Counters) {
        self.connects_ok += other.connects_ok;
        self.connect_errors += other.connect_errors;
        self.messages_sent += other.messages_sent;
        self.messages_received += other.messages_received;
        self.errors += other.errors;
        self.connects_ok_in_run += other.connects_ok_in_run;
        self.messages_received_in_run += other.messages_received_in_run;
    }
}

/// Which histogram a sample goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Message send to echo receipt.
    Latency,
    /// Start of the TCP connect to the end of the WebSocket handshake.
    Handshake,
}

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

impl Hist {
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG).expect("valid bounds"))
    }

    /// Records microseconds, clamped into the histogram's range.
    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(LOWEST_US, HIGHEST_US));
    }

    pub fn add(&mut self, other: &Hist) {
        // Cannot fail: both have the same bounds and every value is within them.
        self.0
            .add(&other.0)
            .expect("histograms with the same bounds");
    }

    pub fn summary(&self) -> Summary {
        let h = &self.0;
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of one histogram, in microseconds; all 0 when `count` is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// The shared histograms: a few shards so that tasks flushing at the same time rarely wait.
#[derive(Debug)]
pub struct Histograms {
    shards: Vec<Mutex<[Hist; 2]>>,
}

impl Histograms {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
        }
    }

    fn add_samples(&self, shard: usize, metric: Metric, samples_us: &[u32]) {
        let mut hists = self.shards[shard % self.shards.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let hist = &mut hists[metric as usize];
        for &us in samples_us {
            hist.record_us(u64::from(us));
        }
    }

    /// Sums the shards: (latency, handshake).
    pub fn merged(&self) -> (Hist, Hist) {
        let mut total = [Hist::new(), Hist::new()];
        for shard in &self.shards {
            let hists = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (sum, hist) in total.iter_mut().zip(hists.iter()) {
                sum.add(hist);
            }
        }
        let [latency, handshake] = total;
        (latency, handshake)
    }
}

/// A task's sample buffers; flushed when full and when dropped, so no sample is lost.
#[derive(Debug)]
pub struct Recorder {
    shared: Arc<Histograms>,
    shard: usize,
    buffers: [Vec<u32>; 2],
}

impl Recorder {
    pub fn new(shared: Arc<Histograms>, shard: usize) -> Self {
        Self {
            shared,
            shard,
            buffers: [Vec::new(), Vec::new()],
        }
    }

    pub fn record(&mut self, metric: Metric, elapsed: Duration) {
        let us = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
        let buffer = &mut self.buffers[metric as usize];
        if buffer.capacity() == 0 {
            buffer.reserve_exact(BATCH);
        }
        buffer.push(us);
        if buffer.len() == BATCH {
            self.shared.add_samples(self.shard, metric, buffer);
            buffer.clear();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        for metric in [Metric::Latency, Metric::Handshake] {
            let buffer = &self.buffers[metric as usize];
            if !buffer.is_empty() {
                self.shared.add_samples(self.shard, metric, buffer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up() {
        let mut total = Counters::default();
        let one = Counters {
            connects_ok: 1,
            connect_errors: 2,
            messages_sent: 3,
            messages_received: 4,
            errors: 5,
            connects_ok_in_run: 6,
            messages_received_in_run: 7,
        };
        total += &one;
        total += &one;
        assert_eq!(total.messages_received, 8);
        assert_eq!(total.messages_received_in_run, 14);
        assert_eq!(total.connect_errors, 4);
    }

    #[test]
    fn samples_of_all_recorders_and_shards_are_merged() {
        let shared = Arc::new(Histograms::new(3));
        for task in 0..5 {
            let mut recorder = Recorder::new(shared.clone(), task);
            // More than one batch, so both the full-batch and the drop flush are used.
            for us in 1..=(BATCH as u64 + 10) {
                recorder.record(Metric::Latency, Duration::from_micros(us * 10));
            }
            recorder.record(Metric::Handshake, Duration::from_millis(2));
        }
        let (latency, handshake) = shared.merged();
        let latency = latency.summary();
        assert_eq!(latency.count, 5 * (BATCH as u64 + 10));
        assert_eq!(latency.min, 10);
        assert!(latency.p50 <= latency.p90 && latency.p90 <= latency.p99);
        assert!(latency.p99 <= latency.p999 && latency.p999 <= latency.max);
        assert!(latency.max.abs_diff((BATCH as u64 + 10) * 10) <= 2);
        let handshake = handshake.summary();
        assert_eq!(handshake.count, 5);
        assert!(handshake.p50.abs_diff(2000) <= 2);
    }

    #[test]
    fn out_of_range_samples_are_clamped_and_empty_summaries_are_zero() {
        let mut hist = Hist::new();
        assert_eq!(hist.summary(), Summary::default());
        hist.record_us(0);
        hist.record_us(u64::MAX);
        let summary = hist.summary();
        assert_eq!(summary.count, 2);
        assert_eq!(summary.min, 1);
        assert!(summary.max >= HIGHEST_US);
    }
}
