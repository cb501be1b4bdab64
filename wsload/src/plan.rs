//! What a run does: the [`Mode`] of every connection and the [`Plan`] the connection tasks
//! share (read by both [`crate::run`] and [`crate::session`]).

use std::sync::Arc;

use wsload::target::Target;

use crate::connect::Connector;
use crate::frame::Filler;
use crate::pacer::Pacer;
use crate::stats::Histograms;
use crate::timeline::Timeline;

/// What each connection does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Closed loop: send a message, wait for its echo, send the next.
    PingPong,
    /// Open loop: this many messages per second per connection, echoes received concurrently.
    Rate(f64),
    /// Connect, one echo, close, reconnect.
    Churn,
}

/// Everything the tasks share; read-only apart from atomics and the histogram shards.
pub struct Plan {
    pub targets: Vec<Target>,
    pub mode: Mode,
    pub connections: usize,
    pub filler: Filler,
    pub timeline: Timeline,
    pub pacer: Pacer,
    pub connector: Connector,
    pub histograms: Arc<Histograms>,
}
