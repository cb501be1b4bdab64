//! The steps on an open connection: text exchanges, the bulk transfer, the interactive
//! session, then the closing handshake. Each verified echo is reported on stdout.

use std::io::{self, Write as _};

use anyhow::{bail, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::{bulk, Cli};

/// Runs the requested steps on an open connection, then closes it.
pub async fn run<S>(cli: &Cli, mut ws: WebSocketStream<S>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    for text in &cli.messages {
        exchange_text(&mut ws, text).await?;
    }
    if let Some(total) = cli.bytes {
        ws = bulk::run(ws, total, cli.chunk as usize).await?;
    }
    if cli.interactive {
        interactive(&mut ws).await?;
    }
    close(ws).await
}

/// Prints one line to stdout and flushes it at once (callers wait for these lines).
pub fn say(line: &str) -> Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}").context("writing to stdout")?;
    stdout.flush().context("flushing stdout")
}

/// Sends `text`, waits for its echo, checks it and prints `echo: TEXT`.
async fn exchange_text<S>(ws: &mut WebSocketStream<S>, text: &str) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::text(text))
        .await
        .context("sending a text message")?;
    match next_data_message(ws).await? {
        Message::Text(echo) if echo.as_str() == text => say(&format!("echo: {echo}")),
        Message::Text(echo) => bail!("echo mismatch: sent {text:?}, received {:?}", echo.as_str()),
        other => bail!(
            "expected the text echo of {text:?}, received a {}",
            kind(&other)
        ),
    }
}

/// Waits for the next text or binary message, skipping pings (tungstenite answers them) and pongs.
async fn next_data_message<S>(ws: &mut WebSocketStream<S>) -> Result<Message>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(message) = ws.next().await {
        match message.context("receiving")? {
            message @ (Message::Text(_) | Message::Binary(_)) => return Ok(message),
            Message::Close(frame) => {
                bail!("the server closed the connection ({frame:?}) before echoing")
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    bail!("the connection ended before the echo arrived")
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "text message",
        Message::Binary(_) => "binary message",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close frame",
        Message::Frame(_) => "raw frame",
    }
}

/// Interactive mode: echoes stdin lines through the server until end of input.
async fn interactive<S>(ws: &mut WebSocketStream<S>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    say("connected")?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        exchange_text(ws, &line).await?;
    }
    Ok(())
}

/// Starts the closing handshake, waits for the server's close frame, then ends the transport.
async fn close<S>(mut ws: WebSocketStream<S>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.close(None).await.context("sending the close frame")?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err).context("closing handshake"),
            None => bail!("the connection ended before the server answered the close frame"),
        }
    }
    // Best effort (TLS close_notify, then FIN): the handshake already succeeded.
    let _ = ws.get_mut().shutdown().await;
    Ok(())
}
