//! One connection task: opens its connection(s) and runs the load on them in the chosen mode
//! (closed-loop ping-pong, open loop at a fixed rate, or connection churn), counting into its
//! own [`Tally`]; every wait is bounded by the [`Timeline`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use wsload::error_text::describe;

use crate::connect::Connection;
use crate::frame::{Encoder, Filler, FrameError, Header};
use crate::plan::{Mode, Plan};
use crate::stats::{Counters, Metric, Recorder};
use crate::timeline::{Timeline, CLOSE};

/// A ping-pong echo not back within this time (or by the end of the drain period) counts as an
/// error and ends the connection.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);
/// Open loop: at most this many messages are queued before a flush.
const MAX_BATCH: u64 = 64;
/// Churn: pause after a failed connection attempt.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Churn: a task stops after this many failed attempts in a row (e.g. connection refused).
const MAX_CONSECUTIVE_CONNECT_FAILURES: u32 = 5;

/// Errors on an established connection; each one is counted in `errors`.
#[derive(Debug, Error)]
pub enum SessionError {
    #[error("sending a message failed")]
    Send(#[source] WsError),
    #[error("receiving an echo failed")]
    Receive(#[source] WsError),
    #[error("the server closed the connection")]
    ClosedByServer,
    #[error("the connection ended before the echo arrived")]
    Ended,
    #[error("received a text message instead of the binary echo")]
    Text,
    #[error("echo not received within {:.1}s", waited.as_secs_f64())]
    EchoTimeout { waited: Duration },
    #[error("{missing} echoes still missing at the end of the drain period")]
    Missing { missing: u64 },
    #[error("echo of message {got} received while expecting message {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error(transparent)]
    Corrupted(#[from] FrameError),
    #[error("closing the connection failed")]
    Close(#[source] WsError),
    #[error("the connection did not close within {}s", CLOSE.as_secs())]
    CloseTimeout,
    #[error("connection still busy at the hard deadline; dropped")]
    HardDeadline,
}

/// What a task hands back when it ends.
#[derive(Debug, Default)]
pub struct Outcome {
    pub counters: Counters,
    pub first_error: Option<String>,
}

/// A task's counters, histogram samples and first error.
struct Tally {
    timeline: Timeline,
    counters: Counters,
    recorder: Recorder,
    first_error: Option<String>,
}

impl Tally {
    fn note_error(&mut self, err: &dyn std::error::Error) {
        if self.first_error.is_none() {
            self.first_error = Some(describe(err));
        }
    }

    fn session_error(&mut self, err: &SessionError) {
        self.counters.errors += 1;
        self.note_error(err);
    }

    /// Verifies one echo, records it, and returns the sequence number it carried.
    fn on_echo(&mut self, payload: &[u8], expected_seq: u64, filler: &Filler) -> u64 {
        let received_at = Instant::now();
        match filler.decode(payload) {
            Ok(header) if header.seq == expected_seq => {
                let sent_at = self.timeline.at_ns(header.sent_ns);
                self.counters.messages_received_in_run += 1;
                if self.timeline.in_window(sent_at) {
                    self.counters.messages_received += 1;
                    self.recorder.record(
                        Metric::Latency,
                        received_at.saturating_duration_since(sent_at),
                    );
                }
                header.seq
            }
            Ok(header) => {
                self.session_error(&SessionError::OutOfOrder {
                    expected: expected_seq,
                    got: header.seq,
                });
                header.seq
            }
            Err(err) => {
                self.session_error(&err.into());
                expected_seq
            }
        }
    }
}

/// One connection task.
pub struct Worker {
    plan: Arc<Plan>,
    target: usize,
    encoder: Encoder,
    tally: Tally,
}

impl Worker {
    /// Task `id` of the run; it connects to target `id % targets`.
    pub fn new(plan: Arc<Plan>, id: usize) -> Self {
        let recorder = Recorder::new(plan.histograms.clone(), id);
        Self {
            target: id % plan.targets.len(),
            encoder: Encoder::new(plan.filler.clone()),
            tally: Tally {
                timeline: plan.timeline,
                counters: Counters::default(),
                recorder,
                first_error: None,
            },
            plan,
        }
    }

    /// Runs the task until its load is done or the hard deadline, whichever comes first.
    pub async fn run(mut self) -> Outcome {
        let hard_deadline = self.plan.timeline.hard_deadline;
        if timeout_at(hard_deadline, self.drive()).await.is_err() {
            self.tally.session_error(&SessionError::HardDeadline);
        }
        Outcome {
            counters: std::mem::take(&mut self.tally.counters),
            first_error: self.tally.first_error.take(),
        }
    }

    async fn drive(&mut self) {
        let load_end = self.plan.timeline.load_end;
        match self.plan.mode {
            Mode::Churn => self.churn().await,
            Mode::PingPong | Mode::Rate(_) => {
                if self.plan.pacer.wait_turn(load_end).await {
                    if let Some(connection) = self.connect().await {
                        self.session(connection).await;
                    }
                }
            }
        }
    }

    /// Connects, exchanges one message, closes; again and again until the load ends.
    async fn churn(&mut self) {
        let load_end = self.plan.timeline.load_end;
        let mut failures = 0;
        while self.plan.pacer.wait_turn(load_end).await {
            match self.connect().await {
                Some(connection) => {
                    failures = 0;
                    self.session(connection).await;
                }
                None => {
                    failures += 1;
                    if failures >= MAX_CONSECUTIVE_CONNECT_FAILURES {
                        return;
                    }
                    sleep_until((Instant::now() + RETRY_BACKOFF).min(load_end)).await;
                }
            }
        }
    }

    /// Opens a connection and counts the attempt (timed from the TCP connect to the end of
    /// the WebSocket handshake).
    async fn connect(&mut self) -> Option<Connection> {
        let started = Instant::now();
        let measured = self.tally.timeline.in_window(started);
        let target = &self.plan.targets[self.target];
        match self.plan.connector.open(target).await {
            Ok(connection) => {
                let counters = &mut self.tally.counters;
                counters.connects_ok_in_run += 1;
                if measured {
                    counters.connects_ok += 1;
                    self.tally
                        .recorder
                        .record(Metric::Handshake, started.elapsed());
                }
                Some(connection)
            }
            Err(err) => {
                if measured {
                    self.tally.counters.connect_errors += 1;
                }
                self.tally.note_error(&err);
                None
            }
        }
    }

    async fn session(&mut self, connection: Connection) {
        match connection {
            Connection::Plain(ws) => self.session_on(*ws).await,
            Connection::Tls(ws) => self.session_on(*ws).await,
        }
    }

    /// Runs the mode's exchanges on an open connection, then closes it.
    async fn session_on<S>(&mut self, mut ws: WebSocketStream<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let result = match self.plan.mode {
            Mode::PingPong => self.ping_pong(&mut ws, u64::MAX).await,
            Mode::Churn => self.ping_pong(&mut ws, 1).await,
            Mode::Rate(rate) => self.open_loop(&mut ws, rate).await,
        };
        let result = match result {
            Ok(()) => close(&mut ws, self.plan.timeline.hard_deadline).await,
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            self.tally.session_error(&err);
        }
    }

    /// Closed loop: sends a message, waits for its echo, sends the next, until the load ends
    /// or `count` messages were exchanged.
    async fn ping_pong<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        count: u64,
    ) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let timeline = self.plan.timeline;
        for seq in 0..count {
            let sent_at = Instant::now();
            if sent_at >= timeline.load_end {
                break;
            }
            let header = Header {
                seq,
                sent_ns: timeline.ns_since_start(sent_at),
            };
            let message = Message::Binary(self.encoder.encode(header));
            ws.send(message).await.map_err(SessionError::Send)?;
            if timeline.in_window(sent_at) {
                self.tally.counters.messages_sent += 1;
            }
            let deadline = (sent_at + ECHO_TIMEOUT).min(timeline.drain_end);
            let payload = timeout_at(deadline, next_binary(ws)).await.map_err(|_| {
                SessionError::EchoTimeout {
                    waited: deadline.saturating_duration_since(sent_at),
                }
            })??;
            self.tally.on_echo(&payload, seq, &self.plan.filler);
        }
        Ok(())
    }

    /// Open loop: sends `rate` messages per second while receiving their echoes concurrently;
    /// after the load ends, waits for the echoes still in flight until the drain deadline.
    async fn open_loop<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        rate: f64,
    ) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let timeline = self.plan.timeline;
        let (mut sink, mut stream) = ws.split();
        let (done_tx, done_rx) = oneshot::channel();
        let encoder = &mut self.encoder;
        let sender = async move {
            let mut sent = Sent::default();
            let result = timeout_at(
                timeline.load_end,
                send_at_rate(&mut sink, encoder, &timeline, rate, &mut sent),
            )
            .await
            .unwrap_or(Ok(()));
            // The receiver stops once it has the echo of every message sent.
            let _ = done_tx.send(sent.total);
            (result, sent.measured)
        };
        let receiver = receive_echoes(&mut stream, &mut self.tally, &self.plan.filler, done_rx);
        let ((sent_result, sent_measured), received_result) = tokio::join!(sender, receiver);
        self.tally.counters.messages_sent += sent_measured;
        sent_result.and(received_result)
    }
}

/// Messages sent by the open-loop sender: all of them, and those in the measurement window.
#[derive(Debug, Default)]
struct Sent {
    total: u64,
    measured: u64,
}

/// Sends messages numbered 0, 1, 2, … at `rate` per second from now on; messages that fall due
/// together (the timer has a granularity of about 1 ms) are written with one flush.
async fn send_at_rate<K>(
    sink: &mut K,
    encoder: &mut Encoder,
    timeline: &Timeline,
    rate: f64,
    sent: &mut Sent,
) -> Result<(), SessionError>
where
    K: Sink<Message, Error = WsError> + Unpin,
{
    let begin = Instant::now();
    loop {
        let now = Instant::now();
        if now >= timeline.load_end {
            return Ok(());
        }
        let due = (now.duration_since(begin).as_secs_f64() * rate) as u64 + 1;
        let measured = timeline.in_window(now);
        let sent_ns = timeline.ns_since_start(now);
        for _ in 0..due.saturating_sub(sent.total).min(MAX_BATCH) {
            let header = Header {
                seq: sent.total,
                sent_ns,
            };
            let message = Message::Binary(encoder.encode(header));
            sink.feed(message).await.map_err(SessionError::Send)?;
            sent.total += 1;
            sent.measured += u64::from(measured);
        }
        sink.flush().await.map_err(SessionError::Send)?;
        let next = begin + Duration::from_secs_f64(sent.total as f64 / rate);
        sleep_until(next.min(timeline.load_end)).await;
    }
}

/// Receives and records echoes until the sender is done and every message it sent came back,
/// or the drain deadline passes.
async fn receive_echoes<T>(
    stream: &mut T,
    tally: &mut Tally,
    filler: &Filler,
    mut done: oneshot::Receiver<u64>,
) -> Result<(), SessionError>
where
    T: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let drain_end = tally.timeline.drain_end;
    let mut expected = 0;
    let mut total = None;
    loop {
        if total.is_some_and(|total| expected >= total) {
            return Ok(());
        }
        tokio::select! {
            sent = &mut done, if total.is_none() => {
                // A dropped sender sent nothing more than what was already received.
                total = Some(sent.unwrap_or(expected));
            }
            next = timeout_at(drain_end, next_binary(stream)) => {
                let Ok(payload) = next else {
                    let missing = total.unwrap_or(expected).saturating_sub(expected);
                    return Err(SessionError::Missing { missing: missing.max(1) });
                };
                expected = tally.on_echo(&payload?, expected, filler) + 1;
            }
        }
    }
}

/// The next binary message; pings are answered by tungstenite, pongs are skipped.
pub async fn next_binary<T>(stream: &mut T) -> Result<Bytes, SessionError>
where
    T: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(Message::Binary(payload))) => return Ok(payload),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Text(_))) => return Err(SessionError::Text),
            Some(Ok(Message::Close(_))) => return Err(SessionError::ClosedByServer),
            Some(Err(err)) => return Err(SessionError::Receive(err)),
            None => return Err(SessionError::Ended),
        }
    }
}

/// Closing handshake, then waits for the server to end the TCP connection first (as RFC 6455
/// asks), which leaves TIME_WAIT on the server rather than on the client's ports.
pub async fn close<S>(
    ws: &mut WebSocketStream<S>,
    hard_deadline: Instant,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = (Instant::now() + CLOSE).min(hard_deadline);
    let closing = async {
        ws.close(None).await.map_err(SessionError::Close)?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => break,
                Some(Err(err)) => return Err(SessionError::Close(err)),
            }
        }
        let mut scratch = [0u8; 256];
        while let Ok(1..) = ws.get_mut().read(&mut scratch).await {}
        Ok(())
    };
    timeout_at(deadline, closing)
        .await
        .map_err(|_| SessionError::CloseTimeout)?
}
