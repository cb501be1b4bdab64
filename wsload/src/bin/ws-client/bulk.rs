//! The full-duplex bulk test (`--bytes`): one task sends the [`Pattern`] while another
//! receives and verifies the echoes, then the throughput is reported.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::{JoinError, JoinHandle};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::pattern::{Pattern, Verifier};
use crate::session::say;

/// Bytes per MiB, for throughput reports.
const MIB: f64 = 1024.0 * 1024.0;

/// Sends and receives `total` bytes in messages of `chunk` bytes concurrently in two tasks,
/// then prints the result line.
pub async fn run<S>(ws: WebSocketStream<S>, total: u64, chunk: usize) -> Result<WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let pattern = Pattern { total, chunk };
    let started = Instant::now();
    let (sink, stream) = ws.split();
    let sender = AbortOnDrop(tokio::spawn(send_bulk(sink, pattern)));
    let receiver = AbortOnDrop(tokio::spawn(receive_bulk(stream, pattern)));
    let (sink, stream) = tokio::try_join!(flatten(sender), flatten(receiver))?;
    let elapsed = started.elapsed().as_secs_f64();
    say(&format!(
        "bulk: sent {total} bytes, received {total} bytes, verified ({:.2} MiB/s, {elapsed:.3} s)",
        total as f64 / MIB / elapsed.max(f64::MIN_POSITIVE)
    ))?;
    sink.reunite(stream)
        .context("reuniting the WebSocket halves")
}

/// Sends every chunk; writes are buffered by tungstenite and flushed once at the end.
async fn send_bulk<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    pattern: Pattern,
) -> Result<SplitSink<WebSocketStream<S>, Message>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for index in 0..pattern.chunk_count() {
        let payload = pattern.chunk_bytes(index);
        sink.feed(Message::binary(payload)).await.with_context(|| {
            format!(
                "sending bulk data at offset {}",
                index * pattern.chunk as u64
            )
        })?;
    }
    sink.flush().await.context("sending bulk data")?;
    Ok(sink)
}

/// Receives and verifies echoes until every sent byte came back.
async fn receive_bulk<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
    pattern: Pattern,
) -> Result<SplitStream<WebSocketStream<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut verifier = Verifier::new(pattern);
    while !verifier.is_complete() {
        let Some(message) = stream.next().await else {
            bail!("connection ended early: {}", verifier.shortfall());
        };
        match message.with_context(|| verifier.shortfall())? {
            Message::Binary(data) => verifier.check(&data)?,
            Message::Close(frame) => bail!(
                "the server closed the connection ({frame:?}): {}",
                verifier.shortfall()
            ),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            Message::Text(_) => bail!(
                "unexpected text message during the bulk test: {}",
                verifier.shortfall()
            ),
        }
    }
    Ok(stream)
}

/// Joins a task, turning a panic or cancellation into an error.
async fn flatten<T>(task: AbortOnDrop<Result<T>>) -> Result<T> {
    task.await.context("bulk task failed")?
}

/// A spawned task that is aborted if its handle is dropped (e.g. when the other bulk task failed
/// or the run timed out), so no task outlives the step that started it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
