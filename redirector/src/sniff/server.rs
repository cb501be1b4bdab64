//! The sniffing proxy: accept, read the start of each connection (bounded in size and
//! time), pick a backend, replay what was read, relay both ways.
//!
//! Every connection runs in its own task, so a slow client only ever holds its own task
//! and one `--max-conns` permit, never the accept loop.

use std::{future::Future, io, net::SocketAddr, str::FromStr, sync::Arc, time::Duration};

use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use super::{
    counters::{Counter, Counters},
    detect::{detect, DetectConfig, Detection},
    prefixed::PrefixedIo,
    relay::{relay, RelayError},
};

/// Pause after an accept error that is not specific to one connection (e.g. no file
/// descriptors left), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Largest single read while sniffing.
const SNIFF_READ_SIZE: usize = 4096;

/// Below this many bytes the head is re-parsed after every read, so that a non-HTTP
/// first word is refused at once; above it, only after reads that end a line.
const EARLY_PARSE_BYTES: usize = 32;

/// What to do with connections that do not start with HTTP/1.x (`--not-http`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NotHttpPolicy {
    /// Close them.
    #[default]
    Close,
    /// Relay them to the HTTP backend like HTTP.
    Http,
}

/// An unknown `--not-http` value.
#[derive(Debug, thiserror::Error)]
#[error("invalid --not-http `{0}`: expected close or http")]
pub struct NotHttpPolicyParseError(String);

impl FromStr for NotHttpPolicy {
    type Err = NotHttpPolicyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "close" => Ok(NotHttpPolicy::Close),
            "http" => Ok(NotHttpPolicy::Http),
            _ => Err(NotHttpPolicyParseError(s.to_string())),
        }
    }
}

/// Everything the proxy needs to know.
#[derive(Clone, Debug)]
pub struct SniffConfig {
    /// Where to accept clients.
    pub listen: SocketAddr,
    /// Backend of WebSocket upgrades.
    pub websocket_backend: SocketAddr,
    /// Backend of everything else that is HTTP.
    pub http_backend: SocketAddr,
    /// What counts as a WebSocket upgrade, and the head size limit.
    pub detect: DetectConfig,
    /// Most connections open at once; more are closed on accept.
    pub max_conns: usize,
    /// Time a client has, from accept, to send a complete request head.
    pub header_timeout: Duration,
    /// Relays with no traffic for this long are closed; `None` keeps them forever.
    pub idle_timeout: Option<Duration>,
    /// Time allowed to connect to a backend.
    pub connect_timeout: Duration,
    /// What to do with connections that are not HTTP.
    pub not_http: NotHttpPolicy,
}

/// Starting the proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum SniffError {
    /// The listening socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The `--listen` address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The configuration is unusable.
    #[error("{0}")]
    Config(&'static str),
}

/// A bound sniffing proxy, ready to serve.
pub struct SniffServer {
    listener: TcpListener,
    config: Arc<SniffConfig>,
    counters: Arc<Counters>,
}

impl SniffServer {
    /// Validates `config` and binds its listening socket.
    pub async fn bind(config: SniffConfig) -> Result<Self, SniffError> {
        if config.max_conns == 0 {
            return Err(SniffError::Config("--max-conns must be at least 1"));
        }
        if config.max_conns > Semaphore::MAX_PERMITS {
            return Err(SniffError::Config("--max-conns is too large"));
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| SniffError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(SniffServer {
            listener,
            config: Arc::new(config),
            counters: Arc::new(Counters::default()),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The counters, live.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Serves until `shutdown` completes; connections still open are dropped with the
    /// runtime.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let permits = Arc::new(Semaphore::new(self.config.max_conns));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => return,
                accepted = self.listener.accept() => accepted,
            };
            let client = match accepted {
                Ok((client, _peer)) => client,
                Err(err) => {
                    self.counters.inc(Counter::AcceptError);
                    if !is_per_connection_error(&err) {
                        log::warn!("accept failed: {err}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            };
            self.counters.inc(Counter::Accepted);
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                self.counters.inc(Counter::OverLimit);
                drop(client);
                continue;
            };
            let config = Arc::clone(&self.config);
            let counters = Arc::clone(&self.counters);
            tokio::spawn(async move {
                handle(client, &config, &counters).await;
                drop(permit);
            });
        }
    }
}

/// Accept errors that concern only the connection being accepted, not the listener.
fn is_per_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// Why a connection ended before being relayed.
enum SniffOutcome {
    Decided(Detection, Vec<u8>),
    ClientClosed,
    Timeout,
}

/// Serves one client from accept to close.
async fn handle(mut client: TcpStream, config: &SniffConfig, counters: &Counters) {
    let _ = client.set_nodelay(true);
    let outcome =
        match tokio::time::timeout(config.header_timeout, sniff(&mut client, &config.detect)).await
        {
            Ok(outcome) => outcome,
            Err(_elapsed) => SniffOutcome::Timeout,
        };
    let (backend, prefix) = match outcome {
        SniffOutcome::Timeout => return counters.inc(Counter::HeaderTimeout),
        SniffOutcome::ClientClosed => return counters.inc(Counter::ClientClosedEarly),
        SniffOutcome::Decided(detection, prefix) => {
            let Some(backend) = route(detection, config, counters) else {
                return;
            };
            (backend, prefix)
        }
    };
    let mut backend = match connect(backend, config.connect_timeout).await {
        Ok(stream) => stream,
        Err(err) => {
            log::debug!("connecting to backend {backend}: {err}");
            return counters.inc(Counter::BackendConnectFailed);
        }
    };
    let mut client = PrefixedIo::new(prefix, client);
    match relay(&mut client, &mut backend, config.idle_timeout).await {
        Ok(relayed) => {
            counters.add(Counter::BytesClientToBackend, relayed.client_to_backend);
            counters.add(Counter::BytesBackendToClient, relayed.backend_to_client);
        }
        Err(RelayError::Idle(_)) => counters.inc(Counter::IdleTimeout),
        Err(RelayError::Io(err)) => {
            log::debug!("relay ended: {err}");
            counters.inc(Counter::RelayError);
        }
    }
}

/// Counts `detection` and picks its backend; `None` means close the client.
fn route(detection: Detection, config: &SniffConfig, counters: &Counters) -> Option<SocketAddr> {
    match detection {
        Detection::WebSocket => {
            counters.inc(Counter::Websocket);
            Some(config.websocket_backend)
        }
        Detection::Http => {
            counters.inc(Counter::Http);
            Some(config.http_backend)
        }
        Detection::NotHttp => {
            counters.inc(Counter::NotHttp);
            match config.not_http {
                NotHttpPolicy::Close => None,
                NotHttpPolicy::Http => Some(config.http_backend),
            }
        }
        Detection::TooLarge => {
            counters.inc(Counter::TooLarge);
            None
        }
        // `sniff` only returns decisions.
        Detection::NeedMore => None,
    }
}

/// Reads from `client` until [`detect`] decides. Bounded in size by
/// `cfg.max_header_bytes` (detect answers `TooLarge` there); the caller bounds the time.
async fn sniff(client: &mut TcpStream, cfg: &DetectConfig) -> SniffOutcome {
    let mut buf = Vec::with_capacity(SNIFF_READ_SIZE.min(cfg.max_header_bytes));
    let mut chunk = [0u8; SNIFF_READ_SIZE];
    loop {
        // Never read past the limit: at the limit, detect answers TooLarge or decides.
        let want = SNIFF_READ_SIZE.min(cfg.max_header_bytes.saturating_sub(buf.len()).max(1));
        let n = match client.read(&mut chunk[..want]).await {
            Ok(0) | Err(_) => return SniffOutcome::ClientClosed,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        // A head can only complete at a line end, so later reads without one cannot
        // change the answer; skipping them keeps a byte-at-a-time client from costing
        // a full re-parse per byte.
        let worth_parsing = buf.len() - n < EARLY_PARSE_BYTES
            || chunk[..n].contains(&b'\n')
            || buf.len() >= cfg.max_header_bytes;
        if !worth_parsing {
            continue;
        }
        match detect(&buf, cfg) {
            Detection::NeedMore => continue,
            decided => return SniffOutcome::Decided(decided, buf),
        }
    }
}

/// Connects to `backend` within `timeout`.
async fn connect(backend: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(backend))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
