//! `--idle`: holds many idle connections open with a trickle of messages, the load that
//! shows what each open connection costs a proxy in memory.
//!
//! Connections open at `--connect-rate` until all are open or the opening deadline passes;
//! each sends one message on opening and waits for its echo, then is *ready*. Once every
//! connection is ready (or failed), one line `wsload idle: N of M connections open ...` goes
//! to stdout, so a caller can measure while they are held. Then every connection keeps
//! sending one message per `--idle-interval` (phases spread evenly, so the server sees a
//! steady trickle, not bursts) and checks each echo, for `--duration` seconds; then all
//! close. Every wait is bounded: the opening by its deadline, each echo by [`ECHO_TIMEOUT`],
//! the whole run by a hard deadline after which tasks are aborted and counted as errors.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsload::error_text::describe;
use wsload::target::Target;

use crate::connect::{Connection, Connector};
use crate::frame::{Encoder, Filler, Header};
use crate::pacer::Pacer;
use crate::session::{close, next_binary, SessionError};
use crate::stats::{Counters, Hist, Histograms, Metric, Recorder};

/// An echo not back within this time counts as an error and ends the connection.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);
/// Time given to the closing handshakes after the hold, and to tasks beyond that before
/// they are aborted.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// What an idle run does.
#[derive(Debug, Clone)]
pub struct IdleSettings {
    /// Connections to open and hold.
    pub connections: usize,
    /// Time between two messages of one connection.
    pub interval: Duration,
    /// How long the connections are held once all are open.
    pub hold: Duration,
    /// Connections not open by then are given up (counted in `connect_errors`).
    pub open_timeout: Duration,
    /// New connections per second (0: as fast as possible).
    pub connect_rate: f64,
    /// Bytes per message.
    pub message_size: usize,
}

/// The sums of an idle run.
#[derive(Debug)]
pub struct IdleTotals {
    pub counters: Counters,
    /// Connections that opened and got their first echo back.
    pub ready: usize,
    /// From the start to the last successful WebSocket handshake, seconds.
    pub open_s: f64,
    /// From the start to the last first echo (every connection ready), seconds.
    pub ready_s: f64,
    /// Largest number of connections open at the same time.
    pub peak_open: usize,
    pub latency: Hist,
    pub handshake: Hist,
    pub first_error: Option<String>,
}

/// What the connection tasks share.
struct Shared {
    targets: Vec<Target>,
    connector: Connector,
    filler: Filler,
    pacer: Pacer,
    settings: IdleSettings,
    start: Instant,
    open_deadline: Instant,
    hard_deadline: Instant,
    histograms: Arc<Histograms>,
    /// Connections ready, and connections that gave up before being ready.
    ready: AtomicUsize,
    failed: AtomicUsize,
    /// Open now, and the most open at once.
    open: AtomicUsize,
    peak_open: AtomicUsize,
    /// Nanoseconds since `start` of the last handshake and of the last first echo.
    last_open_ns: AtomicU64,
    last_ready_ns: AtomicU64,
    /// Woken whenever a connection becomes ready or gives up.
    progress: Notify,
    /// The end of the hold, once every connection is ready.
    hold_end: watch::Receiver<Option<Instant>>,
}

impl Shared {
    fn ns_since_start(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    fn settled(&self) -> usize {
        self.ready.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    fn give_up(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.progress.notify_one();
    }
}

/// What one task hands back.
#[derive(Debug, Default)]
struct Outcome {
    counters: Counters,
    first_error: Option<String>,
}

/// Runs an idle load; returns by the hard deadline whatever the server does.
pub async fn run(targets: Vec<Target>, connector: Connector, settings: IdleSettings) -> IdleTotals {
    let start = Instant::now();
    let open_deadline = start + settings.open_timeout;
    let hard_deadline = open_deadline + settings.hold + ECHO_TIMEOUT + CLOSE_GRACE;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (hold_tx, hold_end) = watch::channel(None);
    let shared = Arc::new(Shared {
        targets,
        connector,
        filler: Filler::new(settings.message_size),
        pacer: Pacer::new(start, settings.connect_rate),
        start,
        open_deadline,
        hard_deadline,
        histograms: Arc::new(Histograms::new(threads * 4)),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        open: AtomicUsize::new(0),
        peak_open: AtomicUsize::new(0),
        last_open_ns: AtomicU64::new(0),
        last_ready_ns: AtomicU64::new(0),
        progress: Notify::new(),
        hold_end,
        settings,
    });
    let mut tasks = JoinSet::new();
    for id in 0..shared.settings.connections {
        tasks.spawn(connection_task(shared.clone(), id));
    }
    // Every connection ready or given up, or the opening deadline.
    while shared.settled() < shared.settings.connections {
        let progress = shared.progress.notified();
        if shared.settled() >= shared.settings.connections {
            break;
        }
        if timeout_at(open_deadline, progress).await.is_err() {
            break;
        }
    }
    let ready = shared.ready.load(Ordering::Relaxed);
    announce_ready(ready, &shared);
    // A closed receiver only means every task has ended already.
    let _ = hold_tx.send(Some(Instant::now() + shared.settings.hold));

    let mut counters = Counters::default();
    let mut first_error = None;
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            let outcome = joined.unwrap_or_else(|err| Outcome {
                counters: Counters {
                    errors: 1,
                    ..Counters::default()
                },
                first_error: Some(format!("connection task failed: {err}")),
            });
            counters += &outcome.counters;
            first_error = first_error.take().or(outcome.first_error);
        }
    };
    if timeout_at(hard_deadline + CLOSE_GRACE, collect)
        .await
        .is_err()
    {
        let stuck = tasks.len() as u64;
        tasks.abort_all();
        counters.errors += stuck;
        first_error.get_or_insert_with(|| format!("{stuck} connection tasks did not end in time"));
    }
    let (latency, handshake) = shared.histograms.merged();
    let seconds = |ns: &AtomicU64| ns.load(Ordering::Relaxed) as f64 / 1e9;
    IdleTotals {
        counters,
        ready,
        open_s: seconds(&shared.last_open_ns),
        ready_s: seconds(&shared.last_ready_ns),
        peak_open: shared.peak_open.load(Ordering::Relaxed),
        latency,
        handshake,
        first_error,
    }
}

/// The line a caller waits for before measuring the held connections.
fn announce_ready(ready: usize, shared: &Shared) {
    let ready_s = shared.last_ready_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let mut stdout = std::io::stdout().lock();
    // Best effort: the JSON report at the end carries the same figures.
    let _ = writeln!(
        stdout,
        "wsload idle: {ready} of {} connections open and echoing after {ready_s:.3} s",
        shared.settings.connections
    );
    let _ = stdout.flush();
}

/// One connection: open it, first echo, then the trickle until the hold ends; bounded by
/// the hard deadline.
async fn connection_task(shared: Arc<Shared>, id: usize) -> Outcome {
    let mut task = Task {
        recorder: Recorder::new(shared.histograms.clone(), id),
        encoder: Encoder::new(shared.filler.clone()),
        outcome: Outcome::default(),
        seq: 0,
        shared,
    };
    let hard_deadline = task.shared.hard_deadline;
    if timeout_at(hard_deadline, task.drive(id)).await.is_err() {
        task.error(&SessionError::HardDeadline);
    }
    task.outcome
}

/// One connection task's state.
struct Task {
    shared: Arc<Shared>,
    recorder: Recorder,
    encoder: Encoder,
    outcome: Outcome,
    seq: u64,
}

impl Task {
    fn error(&mut self, err: &dyn std::error::Error) {
        self.outcome.counters.errors += 1;
        self.note(err);
    }

    fn note(&mut self, err: &dyn std::error::Error) {
        if self.outcome.first_error.is_none() {
            self.outcome.first_error = Some(describe(err));
        }
    }

    async fn drive(&mut self, id: usize) {
        let shared = self.shared.clone();
        if !shared.pacer.wait_turn(shared.open_deadline).await {
            self.outcome.counters.connect_errors += 1;
            self.outcome.first_error.get_or_insert_with(|| {
                "connection not attempted before the opening deadline".to_owned()
            });
            shared.give_up();
            return;
        }
        let target = &shared.targets[id % shared.targets.len()];
        let started = Instant::now();
        let connection = match shared.connector.open(target).await {
            Ok(connection) => connection,
            Err(err) => {
                self.outcome.counters.connect_errors += 1;
                self.note(&err);
                shared.give_up();
                return;
            }
        };
        let opened = Instant::now();
        self.recorder
            .record(Metric::Handshake, opened.saturating_duration_since(started));
        self.outcome.counters.connects_ok += 1;
        self.outcome.counters.connects_ok_in_run += 1;
        shared
            .last_open_ns
            .fetch_max(shared.ns_since_start(opened), Ordering::Relaxed);
        let open_now = shared.open.fetch_add(1, Ordering::Relaxed) + 1;
        shared.peak_open.fetch_max(open_now, Ordering::Relaxed);
        match connection {
            Connection::Plain(ws) => self.hold(*ws, id).await,
            Connection::Tls(ws) => self.hold(*ws, id).await,
        }
        shared.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// First echo, ready, trickle until the hold ends, close.
    async fn hold<S>(&mut self, mut ws: WebSocketStream<S>, id: usize)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let shared = self.shared.clone();
        if let Err(err) = self.exchange(&mut ws).await {
            self.error(&err);
            shared.give_up();
            return;
        }
        shared
            .last_ready_ns
            .fetch_max(shared.ns_since_start(Instant::now()), Ordering::Relaxed);
        shared.ready.fetch_add(1, Ordering::Relaxed);
        shared.progress.notify_one();

        let interval = shared.settings.interval;
        // Connection `id` sends at start + phase + k × interval: phases spread evenly.
        let phase = interval.mul_f64(id as f64 / shared.settings.connections.max(1) as f64);
        let mut next = shared.start + phase;
        let mut hold_end = shared.hold_end.clone();
        let result = loop {
            let now = Instant::now();
            while next <= now {
                next += interval;
            }
            let end = *hold_end.borrow_and_update();
            if end.is_some_and(|end| now >= end) {
                break Ok(());
            }
            let wake = end.map_or(next, |end| next.min(end));
            tokio::select! {
                () = sleep_until(wake) => {
                    if Instant::now() >= next && end.is_none_or(|end| next < end) {
                        if let Err(err) = self.exchange(&mut ws).await {
                            break Err(err);
                        }
                    }
                }
                changed = hold_end.changed() => {
                    // The sender never goes away before the hold is set; if it did, stop.
                    if changed.is_err() && hold_end.borrow().is_none() {
                        break Ok(());
                    }
                }
            }
        };
        let result = match result {
            Ok(()) => close(&mut ws, shared.hard_deadline).await,
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            self.error(&err);
        }
    }

    /// Sends one message and waits for its echo, which must carry the same sequence number.
    async fn exchange<S>(&mut self, ws: &mut WebSocketStream<S>) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let sent_at = Instant::now();
        let header = Header {
            seq: self.seq,
            sent_ns: self.shared.ns_since_start(sent_at),
        };
        self.seq += 1;
        ws.send(Message::Binary(self.encoder.encode(header)))
            .await
            .map_err(SessionError::Send)?;
        self.outcome.counters.messages_sent += 1;
        let deadline = sent_at + ECHO_TIMEOUT;
        let payload = timeout_at(deadline, next_binary(ws)).await.map_err(|_| {
            SessionError::EchoTimeout {
                waited: ECHO_TIMEOUT,
            }
        })??;
        let echoed = self.shared.filler.decode(&payload)?;
        if echoed.seq != header.seq {
            return Err(SessionError::OutOfOrder {
                expected: header.seq,
                got: echoed.seq,
            });
        }
        self.outcome.counters.messages_received += 1;
        self.outcome.counters.messages_received_in_run += 1;
        self.recorder.record(Metric::Latency, sent_at.elapsed());
        Ok(())
    }
}
