//! `ws-client`: a WebSocket (ws and wss) client that verifies echoes, used by the integration
//! tests, the demo and the benchmarks.
//!
//! It connects to an echo server (see `ws-echo`) and runs, in this order, the requested text
//! exchanges (`--message`), a full-duplex bulk transfer (`--bytes`) and an interactive session
//! (`--interactive`), then closes the connection cleanly. It exits 0 only if every echo was
//! verified; otherwise it prints `error: ...` to stderr and exits 1.

use std::fmt;
use std::future::Future;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use clap::Parser;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::task::{JoinError, JoinHandle};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Largest accepted message and frame, matching `ws-echo`.
const MAX_MESSAGE_SIZE: usize = 64 << 20;
/// Largest `--chunk`: one bulk message must fit in `MAX_MESSAGE_SIZE`.
const MAX_CHUNK: u32 = 64 << 20;
/// Bytes per MiB, for throughput reports.
const MIB: f64 = 1024.0 * 1024.0;

/// WebSocket client that sends messages to an echo server and verifies the echoes.
///
/// Steps run in this order: every --message, then the --bytes bulk transfer, then the
/// --interactive session; the connection is then closed with a closing handshake.
/// Exit status 0 means every echo was verified; on any failure `error: ...` is printed
/// to stderr and the exit status is 1.
///
/// wss:// requires --insecure: ws-client has no certificate trust store, it is meant for
/// test servers such as ws-echo that present a self-signed certificate. With --insecure
/// the certificate chain and name are not checked, but the server must still prove
/// possession of the certificate's key (handshake signatures are verified).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Server URL: ws://HOST[:PORT][/PATH] or wss://HOST[:PORT][/PATH]; HOST is an IPv4
    /// address, a bracketed IPv6 address such as [::1], or a name.
    #[arg(long, value_name = "URL")]
    url: String,

    /// Accept any server certificate (required for wss://).
    #[arg(long)]
    insecure: bool,

    /// Send TEXT as a text message, verify the echo and print `echo: TEXT` (repeatable).
    #[arg(long = "message", value_name = "TEXT")]
    messages: Vec<String>,

    /// Full-duplex bulk test: send N bytes of pseudo-random data as binary messages while
    /// concurrently receiving and verifying the echoes; prints
    /// `bulk: sent N bytes, received N bytes, verified (... MiB/s ...)`.
    #[arg(long, value_name = "N")]
    bytes: Option<u64>,

    /// Size of each binary message of the bulk test, in bytes.
    #[arg(long, value_name = "SIZE", default_value_t = 65536, requires = "bytes",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CHUNK)))]
    chunk: u32,

    /// Print `connected`, then send each line read from stdin as a text message, verify its
    /// echo and print `echo: LINE`; ends at end of input.
    #[arg(long)]
    interactive: bool,

    /// Limit on the whole run (connect and every exchange, including --interactive), in seconds.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    timeout: Duration,

    /// Limit on the TCP connect and the TLS and WebSocket handshakes, in seconds.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    connect_timeout: Duration,
}

/// Parses a positive number of seconds (fractions allowed).
fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 1e9 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

/// Where to connect, taken from `--url`.
#[derive(Debug)]
struct Target {
    uri: Uri,
    tls: bool,
    /// Host without IPv6 brackets.
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL `{url}`"))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => bail!("invalid URL `{url}`: the scheme must be ws:// or wss://"),
        };
        let host = uri.host().filter(|h| !h.is_empty());
        let host = host.with_context(|| format!("invalid URL `{url}`: no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self {
            uri,
            tls,
            host,
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow!(err).context("starting the tokio runtime")),
    };
    let result = runtime.block_on(run_with_timeout(&cli));
    // A pending stdin read (--interactive) runs on a blocking thread that must not delay the exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", wsload::error_text::describe(err.as_ref()));
    ExitCode::FAILURE
}

/// Runs the whole session within `--timeout`.
async fn run_with_timeout(cli: &Cli) -> Result<()> {
    let target = Target::parse(&cli.url)?;
    ensure!(
        !target.tls || cli.insecure,
        "wss:// requires --insecure: ws-client has no certificate trust store and accepts only \
         test servers' (self-signed) certificates"
    );
    match tokio::time::timeout(cli.timeout, run(cli, &target)).await {
        Ok(result) => result,
        Err(_) => bail!("timed out after {} (--timeout)", secs(cli.timeout)),
    }
}

fn secs(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

/// Connects (TCP, TLS for wss, WebSocket handshake; all within `--connect-timeout`), runs every
/// requested step, then closes the connection.
async fn run(cli: &Cli, target: &Target) -> Result<()> {
    let deadline = tokio::time::Instant::now() + cli.connect_timeout;
    let tcp = connect_step(cli, target, deadline, connect_tcp(target)).await?;
    if !target.tls {
        let ws = connect_step(cli, target, deadline, ws_handshake(target, tcp)).await?;
        return session(cli, ws).await;
    }
    let tls = connect_step(cli, target, deadline, tls_handshake(target, tcp)).await?;
    let ws = connect_step(cli, target, deadline, ws_handshake(target, tls)).await?;
    session(cli, ws).await
}

/// Runs one step of connection set-up, failing if `deadline` passes first.
async fn connect_step<T>(
    cli: &Cli,
    target: &Target,
    deadline: tokio::time::Instant,
    step: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout_at(deadline, step).await {
        Ok(result) => result,
        Err(_) => bail!(
            "connecting to {target} timed out after {} (--connect-timeout)",
            secs(cli.connect_timeout)
        ),
    }
}

/// Opens the TCP connection.
async fn connect_tcp(target: &Target) -> Result<TcpStream> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    tcp.set_nodelay(true).context("setting TCP_NODELAY")?;
    Ok(tcp)
}

/// Runs the TLS handshake for wss (see [`insecure_tls_config`]).
async fn tls_handshake(
    target: &Target,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let server_name = ServerName::try_from(target.host.clone())
        .with_context(|| format!("`{}` is not a valid TLS server name", target.host))?;
    TlsConnector::from(Arc::new(insecure_tls_config()?))
        .connect(server_name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {target} failed"))
}

/// Runs the client side of the WebSocket opening handshake.
async fn ws_handshake<S>(target: &Target, stream: S) -> Result<WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE));
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(&target.uri, stream, Some(config))
            .await
            .with_context(|| format!("WebSocket handshake with {target} failed"))?;
    Ok(ws)
}

/// TLS client settings that accept any certificate (see [`AcceptAnyCertificate`]).
fn insecure_tls_config() -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AcceptAnyCertificate {
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("configuring TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Certificate verifier for `--insecure`: trusts any certificate chain for any name, but still
/// checks the handshake signatures, so the server must hold the certificate's private key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Runs the requested steps on an open connection, then closes it.
async fn session<S>(cli: &Cli, mut ws: WebSocketStream<S>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    for text in &cli.messages {
        exchange_text(&mut ws, text).await?;
    }
    if let Some(total) = cli.bytes {
        ws = bulk(ws, total, cli.chunk as usize).await?;
    }
    if cli.interactive {
        interactive(&mut ws).await?;
    }
    close(ws).await
}

/// Prints one line to stdout and flushes it at once (callers wait for these lines).
fn say(line: &str) -> Result<()> {
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

/// Deterministic pseudo-random bulk content: chunk `i` is generated by xorshift64 seeded from `i`,
/// so the receiver can check any byte at any offset without keeping what was sent.
#[derive(Debug, Clone, Copy)]
struct Pattern {
    total: u64,
    chunk: usize,
}

impl Pattern {
    fn chunk_count(&self) -> u64 {
        self.total.div_ceil(self.chunk as u64)
    }

    /// Length of chunk `index` (only the last one can be short).
    fn chunk_len(&self, index: u64) -> usize {
        let start = index * self.chunk as u64;
        usize::try_from((self.total - start).min(self.chunk as u64)).expect("chunk fits in usize")
    }

    /// Generates chunk `index`: [`LANES`] interleaved xorshift64 streams, one 8-byte word each
    /// per block (independent lanes let the compiler vectorise the generator).
    fn chunk_bytes(&self, index: u64) -> Vec<u8> {
        let mut lanes: [u64; LANES] = std::array::from_fn(|lane| seed(index, lane));
        let len = self.chunk_len(index);
        let mut bytes = Vec::with_capacity(len.next_multiple_of(BLOCK));
        while bytes.len() < len {
            bytes.extend_from_slice(&next_block(&mut lanes));
        }
        bytes.truncate(len);
        bytes
    }
}

/// Number of interleaved xorshift64 generators of the bulk pattern.
const LANES: usize = 4;
/// Bytes produced by one step of every lane.
const BLOCK: usize = LANES * 8;

/// Advances every lane by one xorshift64 step and returns their words, little-endian.
fn next_block(lanes: &mut [u64; LANES]) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    for (state, word) in lanes.iter_mut().zip(block.chunks_exact_mut(8)) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
    block
}

/// Non-zero xorshift seed of one lane of a chunk (splitmix64 finaliser).
fn seed(index: u64, lane: usize) -> u64 {
    let input = index
        .wrapping_mul(LANES as u64)
        .wrapping_add(lane as u64 + 1);
    let mut z = input.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

/// Checks received bytes, in order, against the [`Pattern`].
struct Verifier {
    pattern: Pattern,
    received: u64,
    /// The chunk the next byte belongs to, generated on demand.
    expected: Option<(u64, Vec<u8>)>,
}

impl Verifier {
    fn new(pattern: Pattern) -> Self {
        Self {
            pattern,
            received: 0,
            expected: None,
        }
    }

    fn is_complete(&self) -> bool {
        self.received == self.pattern.total
    }

    /// Describes how much is missing, for short-read errors.
    fn shortfall(&self) -> String {
        format!(
            "received {} of {} bulk bytes (first missing byte at offset {})",
            self.received, self.pattern.total, self.received
        )
    }

    /// Verifies the next received payload; message boundaries need not match the chunks.
    fn check(&mut self, mut data: &[u8]) -> Result<()> {
        let excess = (self.received + data.len() as u64).saturating_sub(self.pattern.total);
        ensure!(
            excess == 0,
            "received {excess} bytes more than the {} sent (extra data starts at offset {})",
            self.pattern.total,
            self.pattern.total
        );
        while !data.is_empty() {
            let offset = self.received;
            let index = offset / self.pattern.chunk as u64;
            let start = usize::try_from(offset % self.pattern.chunk as u64)?;
            let expected = &self.expected_chunk(index)[start..];
            let len = expected.len().min(data.len());
            let (expected, received) = (&expected[..len], &data[..len]);
            if expected != received {
                let bad = first_difference(expected, received);
                bail!(
                    "bulk data mismatch at offset {}: expected byte {:#04x}, received {:#04x}",
                    offset + bad as u64,
                    expected[bad],
                    received[bad]
                );
            }
            self.received += len as u64;
            data = &data[len..];
        }
        Ok(())
    }

    fn expected_chunk(&mut self, index: u64) -> &[u8] {
        if self
            .expected
            .as_ref()
            .is_none_or(|(cached, _)| *cached != index)
        {
            self.expected = Some((index, self.pattern.chunk_bytes(index)));
        }
        &self.expected.as_ref().expect("just filled").1
    }
}

/// Index of the first differing byte of two slices of equal length that are known to differ.
fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .expect("the slices differ")
}

/// Bulk test: sends and receives concurrently in two tasks, then prints the result line.
async fn bulk<S>(ws: WebSocketStream<S>, total: u64, chunk: usize) -> Result<WebSocketStream<S>>
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern() -> Pattern {
        Pattern {
            total: 10_000,
            chunk: 4096,
        }
    }

    fn all_bytes(pattern: Pattern) -> Vec<u8> {
        (0..pattern.chunk_count())
            .flat_map(|i| pattern.chunk_bytes(i))
            .collect()
    }

    #[test]
    fn pattern_is_deterministic_and_sized() {
        let pattern = pattern();
        assert_eq!(pattern.chunk_count(), 3);
        assert_eq!(pattern.chunk_len(2), 10_000 - 2 * 4096);
        assert_eq!(pattern.chunk_bytes(1), pattern.chunk_bytes(1));
        assert_ne!(pattern.chunk_bytes(0), pattern.chunk_bytes(1));
        assert_eq!(all_bytes(pattern).len(), 10_000);
    }

    #[test]
    fn verifier_accepts_any_message_boundaries() {
        let pattern = pattern();
        let data = all_bytes(pattern);
        let mut verifier = Verifier::new(pattern);
        for piece in data.chunks(777) {
            verifier.check(piece).unwrap();
        }
        assert!(verifier.is_complete());
    }

    #[test]
    fn verifier_names_the_first_bad_offset() {
        let pattern = pattern();
        let mut data = all_bytes(pattern);
        data[5000] ^= 0xff;
        data[6000] ^= 0xff;
        let mut verifier = Verifier::new(pattern);
        verifier.check(&data[..4096]).unwrap();
        let err = verifier.check(&data[4096..]).unwrap_err().to_string();
        assert!(err.contains("offset 5000"), "{err}");
    }

    #[test]
    fn verifier_rejects_extra_bytes() {
        let pattern = pattern();
        let mut data = all_bytes(pattern);
        data.push(0);
        let err = Verifier::new(pattern).check(&data).unwrap_err().to_string();
        assert!(err.contains("offset 10000"), "{err}");
    }

    #[test]
    fn targets_parse() {
        let target = Target::parse("ws://127.0.0.1:8080/").unwrap();
        assert!(!target.tls);
        assert_eq!((target.host.as_str(), target.port), ("127.0.0.1", 8080));
        let target = Target::parse("wss://[::1]/path").unwrap();
        assert!(target.tls);
        assert_eq!((target.host.as_str(), target.port), ("::1", 443));
        assert_eq!(target.to_string(), "[::1]:443");
        assert_eq!(Target::parse("ws://localhost").unwrap().port, 80);
        assert!(Target::parse("http://127.0.0.1/").is_err());
        assert!(Target::parse("127.0.0.1:80").is_err());
    }

    #[test]
    fn seconds_parse() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}
