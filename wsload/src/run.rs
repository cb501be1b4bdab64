//! A whole run: one task per connection on the multi-threaded runtime, each counting on its
//! own; their counts and histogram samples are summed when they end.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::timeout_at;

use crate::plan::Plan;
use crate::session::{Outcome, Worker};
use crate::stats::{Counters, Hist};

/// After the hard deadline, tasks that have not ended (they all should have) get this long
/// before they are aborted.
const ABORT_GRACE: Duration = Duration::from_secs(2);

/// The sums of a run.
#[derive(Debug)]
pub struct Totals {
    pub counters: Counters,
    pub latency: Hist,
    pub handshake: Hist,
    pub first_error: Option<String>,
}

/// Runs every connection task and sums what they counted. Returns by the hard deadline (plus
/// a short grace), whatever the server does.
pub async fn run(plan: Arc<Plan>) -> Totals {
    let mut tasks = JoinSet::new();
    for id in 0..plan.connections {
        tasks.spawn(Worker::new(plan.clone(), id).run());
    }
    let mut counters = Counters::default();
    let mut first_error = None;
    let mut add = |outcome: Outcome| {
        counters += &outcome.counters;
        first_error = first_error.take().or(outcome.first_error);
    };
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(outcome) => add(outcome),
                Err(err) => add(Outcome {
                    counters: Counters {
                        errors: 1,
                        ..Counters::default()
                    },
                    first_error: Some(format!("connection task failed: {err}")),
                }),
            }
        }
    };
    let collected = timeout_at(plan.timeline.hard_deadline + ABORT_GRACE, collect).await;
    if collected.is_err() {
        let stuck = tasks.len() as u64;
        tasks.abort_all();
        counters.errors += stuck;
        first_error.get_or_insert_with(|| format!("{stuck} connection tasks did not end in time"));
    }
    let (latency, handshake) = plan.histograms.merged();
    Totals {
        counters,
        latency,
        handshake,
        first_error,
    }
}
