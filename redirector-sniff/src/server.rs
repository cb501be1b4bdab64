//! The sniffing proxy: accept, read the start of each connection (bounded in size and
//! time), pick a backend, replay what was read, relay both ways.
//!
//! Every connection runs in its own task, so a slow client only ever holds its own task
//! and one `--max-conns` permit, never the accept loop. Plain connections are judged by
//! [`detect`]; connections on the optional TLS listener by the server name of their
//! ClientHello ([`detect_sni`]). With `--proxy-protocol`, backends get a PROXY header
//! before the client's bytes. `--max-conns` bounds the connections open at once, and
//! `--max-conns-per-ip` those of one client ([`crate::per_ip`]); connections over either
//! are closed as soon as they are accepted (a FIN, no data) and counted.

use std::{
    future::Future,
    io,
    net::{SocketAddr, TcpListener as StdTcpListener},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

#[cfg(doc)]
use crate::per_ip::ClientKey;
use crate::{
    alloc::TrimPolicy,
    counters::{Counter, Counters},
    detect::{detect, DetectConfig, Detection},
    option_value::{InvalidValue, Keyword},
    per_ip::{IpPermit, PerIpLimit},
    proxy_protocol::ProxyProtocol,
    relay::RelayError,
    sni::{detect_sni, SniDetection, SniPattern},
    splice::{self, RelayMode},
};

/// Pause after an accept error that is not specific to one connection (e.g. no file
/// descriptors left), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Largest single read while sniffing.
const SNIFF_READ_SIZE: usize = 4096;

/// Below this many bytes the head is re-parsed after every read, so that a non-HTTP
/// first word is refused at once; above it, only after reads that end a line.
const EARLY_PARSE_BYTES: usize = 32;

/// Default of `--header-timeout`, in seconds.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// Default of `--idle-timeout`, in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;
/// Default of `--connect-timeout`, in seconds.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 5;

/// What to do with connections that do not start with HTTP/1.x (`--not-http`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NotHttpPolicy {
    /// Close them.
    #[default]
    Close,
    /// Relay them to the HTTP backend like HTTP.
    Http,
}

impl Keyword for NotHttpPolicy {
    const OPTION: &'static str = "not-http";
    const KEYWORDS: &'static [(&'static str, Self)] = &[
        ("close", NotHttpPolicy::Close),
        ("http", NotHttpPolicy::Http),
    ];
}

impl FromStr for NotHttpPolicy {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_keyword(s)
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
    /// Most connections open at once; more are closed on accept. Default: what the
    /// open-file limit allows ([`crate::fd_limit::default_max_conns`]).
    pub max_conns: usize,
    /// Most connections open at once per client group ([`ClientKey`]); more are closed on
    /// accept. `None`: no per-client limit.
    pub max_conns_per_ip: Option<u32>,
    /// Time a client has, from accept, to send a complete request head.
    pub header_timeout: Duration,
    /// Relays with no traffic for this long are closed; `None` keeps them forever.
    pub idle_timeout: Option<Duration>,
    /// Time allowed to connect to a backend.
    pub connect_timeout: Duration,
    /// What to do with connections that are not HTTP.
    pub not_http: NotHttpPolicy,
    /// A second listener for TLS, routed by server name.
    pub tls: Option<TlsRoute>,
    /// Send a PROXY protocol header to backends before the client's bytes.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// How bytes are relayed once the backend is chosen.
    pub relay: RelayMode,
}

impl SniffConfig {
    /// A plain listener with every limit and timeout at its default, no TLS listener and
    /// no PROXY header (what `redirector run --sniff-listen` starts from).
    pub fn new(
        listen: SocketAddr,
        websocket_backend: SocketAddr,
        http_backend: SocketAddr,
    ) -> Self {
        SniffConfig {
            listen,
            websocket_backend,
            http_backend,
            detect: DetectConfig::default(),
            max_conns: crate::fd_limit::default_max_conns(),
            max_conns_per_ip: None,
            header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
            idle_timeout: Some(Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS)),
            connect_timeout: Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS),
            not_http: NotHttpPolicy::default(),
            tls: None,
            proxy_protocol: None,
            relay: RelayMode::default(),
        }
    }
}

/// TLS connections, routed by the server name of their ClientHello (not decrypted).
#[derive(Clone, Debug)]
pub struct TlsRoute {
    /// Where to accept TLS clients.
    pub listen: SocketAddr,
    /// Backend of names matching `ws_sni`.
    pub websocket_backend: SocketAddr,
    /// Backend of every other TLS connection, with or without a name.
    pub http_backend: SocketAddr,
    /// Names that go to `websocket_backend`.
    pub ws_sni: Vec<SniPattern>,
}

/// Which protocol a listener expects first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Plain HTTP/1.x, routed by [`detect`].
    Http,
    /// TLS, routed by [`detect_sni`].
    Tls,
}

/// Starting the proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum SniffError {
    /// The listening socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The `--listen` or `--tls-listen` address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// An inherited listening socket could not be read.
    #[error("reading an inherited listening socket: {0}")]
    Listener(io::Error),
    /// `max_conns` is 0 or more than a semaphore can count.
    #[error("--max-conns must be between 1 and {max}")]
    MaxConns {
        /// The largest accepted value.
        max: usize,
    },
}

/// A bound sniffing proxy, ready to serve.
pub struct SniffServer {
    listeners: Vec<(TcpListener, ListenerKind)>,
    config: Arc<SniffConfig>,
    counters: Arc<Counters>,
}

impl SniffServer {
    /// Validates `config` and binds its listening sockets.
    pub async fn bind(config: SniffConfig) -> Result<Self, SniffError> {
        let listeners = Self::bind_std(&config)?;
        Self::from_std(config, listeners)
    }

    /// Validates `config`, raises the open-file limit for it and binds its listening
    /// sockets, without an async runtime: the first step of a proxy that then drops its
    /// privileges (before any runtime thread exists) and serves with [`Self::from_std`].
    pub fn bind_std(
        config: &SniffConfig,
    ) -> Result<Vec<(StdTcpListener, ListenerKind)>, SniffError> {
        if config.max_conns == 0 || config.max_conns > Semaphore::MAX_PERMITS {
            return Err(SniffError::MaxConns {
                max: Semaphore::MAX_PERMITS,
            });
        }
        match crate::fd_limit::ensure(config.max_conns) {
            Ok(budget) if budget.now < budget.needed => log::warn!(
                "open-file limit {} (hard limit reached) allows about {} relayed connections, \
                 fewer than --max-conns {}; raise it (ulimit -Hn, LimitNOFILE=) or lower --max-conns",
                budget.now,
                budget.connections(),
                config.max_conns
            ),
            Ok(budget) if budget.now > budget.before => log::info!(
                "open-file limit raised from {} to {} for --max-conns {}",
                budget.before,
                budget.now,
                config.max_conns
            ),
            Ok(_) => {}
            Err(err) => log::warn!("could not read or raise the open-file limit: {err}"),
        }
        if !crate::alloc::keep_freed_memory() {
            log::debug!("allocator trim threshold unchanged (not glibc)");
        }
        let bind =
            |addr| crate::listen::bind(addr).map_err(|source| SniffError::Bind { addr, source });
        let mut listeners = vec![(bind(config.listen)?, ListenerKind::Http)];
        if let Some(tls) = &config.tls {
            listeners.push((bind(tls.listen)?, ListenerKind::Tls));
        }
        Ok(listeners)
    }

    /// A proxy serving `config` on listeners bound by [`Self::bind_std`] (or inherited from
    /// a parent process); must run within a tokio runtime.
    pub fn from_std(
        config: SniffConfig,
        listeners: Vec<(StdTcpListener, ListenerKind)>,
    ) -> Result<Self, SniffError> {
        let listeners = listeners
            .into_iter()
            .map(|(listener, kind)| {
                let addr = listener.local_addr().map_err(SniffError::Listener)?;
                let listener = listener
                    .set_nonblocking(true)
                    .and_then(|()| TcpListener::from_std(listener))
                    .map_err(|source| SniffError::Bind { addr, source })?;
                Ok((listener, kind))
            })
            .collect::<Result<_, SniffError>>()?;
        Ok(SniffServer {
            listeners,
            config: Arc::new(config),
            counters: Arc::new(Counters::default()),
        })
    }

    /// The addresses actually bound, the plain listener first.
    pub fn local_addrs(&self) -> io::Result<Vec<(SocketAddr, ListenerKind)>> {
        self.listeners
            .iter()
            .map(|(listener, kind)| Ok((listener.local_addr()?, *kind)))
            .collect()
    }

    /// Most connections open at once (`--max-conns`, given or derived).
    pub fn max_conns(&self) -> usize {
        self.config.max_conns
    }

    /// The counters, live.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Serves until `shutdown` completes; connections still open are dropped with the
    /// runtime.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let limits = Limits {
            total: Arc::new(Semaphore::new(self.config.max_conns)),
            per_ip: self.config.max_conns_per_ip.map(PerIpLimit::new),
        };
        let loops: Vec<_> = self
            .listeners
            .into_iter()
            .map(|(listener, kind)| {
                tokio::spawn(accept_loop(
                    listener,
                    kind,
                    limits.clone(),
                    Arc::clone(&self.config),
                    Arc::clone(&self.counters),
                ))
            })
            .collect();
        let trimmer = tokio::spawn(trim_after_bursts(
            Arc::clone(&limits.total),
            self.config.max_conns,
        ));
        shutdown.await;
        for accept in loops {
            accept.abort();
        }
        trimmer.abort();
    }
}

/// Every [`TRIM_CHECK_INTERVAL`](crate::alloc::TRIM_CHECK_INTERVAL), gives freed memory
/// back to the kernel if a burst of connections has drained ([`TrimPolicy`]); `total` is
/// the `--max-conns` semaphore of `max_conns` permits.
async fn trim_after_bursts(total: Arc<Semaphore>, max_conns: usize) {
    let mut policy = TrimPolicy::default();
    let mut ticks = tokio::time::interval(crate::alloc::TRIM_CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let open = max_conns.saturating_sub(total.available_permits());
        if policy.observe(open) {
            splice::BUFFERS.clear();
            splice::PIPES.clear();
            let gave_back = crate::alloc::give_back_freed_memory();
            log::debug!("{open} connections open after a burst: memory trimmed ({gave_back})");
        }
    }
}

/// The connection limits, shared by every listener.
#[derive(Clone)]
struct Limits {
    /// `--max-conns`.
    total: Arc<Semaphore>,
    /// `--max-conns-per-ip`.
    per_ip: Option<Arc<PerIpLimit>>,
}

/// What a served connection holds until it closes.
struct ConnPermits {
    _total: tokio::sync::OwnedSemaphorePermit,
    _per_ip: Option<IpPermit>,
}

impl Limits {
    /// Permits for one more connection from `peer`, or the counter saying why not.
    fn admit(&self, peer: SocketAddr) -> Result<ConnPermits, Counter> {
        let total = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| Counter::OverLimit)?;
        let per_ip = match &self.per_ip {
            Some(limit) => Some(limit.try_acquire(peer.ip()).ok_or(Counter::OverIpLimit)?),
            None => None,
        };
        Ok(ConnPermits {
            _total: total,
            _per_ip: per_ip,
        })
    }
}

/// Accepts on `listener` forever, one task per connection, within `limits` (across all
/// listeners).
async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    limits: Limits,
    config: Arc<SniffConfig>,
    counters: Arc<Counters>,
) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                counters.inc(Counter::AcceptError);
                if !is_per_connection_error(&err) {
                    log::warn!("accept failed: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        counters.inc(Counter::Accepted);
        let permit = match limits.admit(peer) {
            Ok(permit) => permit,
            Err(refused) => {
                counters.inc(refused);
                // Dropping it closes it with a FIN: the client sees a clean close.
                drop(client);
                continue;
            }
        };
        let config = Arc::clone(&config);
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            handle(client, kind, &config, &counters).await;
            drop(permit);
        });
    }
}

/// Accept errors that concern only the connection being accepted, not the listener.
fn is_per_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// How sniffing a connection ended.
enum SniffOutcome {
    /// Decided: relay to this backend (`None`: close), replaying these bytes.
    Decided(Option<SocketAddr>, Vec<u8>),
    ClientClosed,
    Timeout,
}

/// A judge's answer about the bytes read so far.
enum Verdict {
    NeedMore,
    /// Relay to this backend; `None` means close.
    Route(Option<SocketAddr>),
}

/// Serves one client from accept to close.
async fn handle(
    mut client: TcpStream,
    kind: ListenerKind,
    config: &SniffConfig,
    counters: &Counters,
) {
    let _ = client.set_nodelay(true);
    let max_bytes = config.detect.max_header_bytes;
    let sniffing = sniff(&mut client, max_bytes, |buf, fresh| match kind {
        ListenerKind::Http => judge_http(buf, fresh, config, counters),
        ListenerKind::Tls => judge_tls(buf, config, counters),
    });
    let outcome = match tokio::time::timeout(config.header_timeout, sniffing).await {
        Ok(outcome) => outcome,
        Err(_elapsed) => SniffOutcome::Timeout,
    };
    let (backend, prefix) = match outcome {
        SniffOutcome::Timeout => return counters.inc(Counter::HeaderTimeout),
        SniffOutcome::ClientClosed => return counters.inc(Counter::ClientClosedEarly),
        SniffOutcome::Decided(None, _) => return,
        SniffOutcome::Decided(Some(backend), prefix) => (backend, prefix),
    };
    let mut backend_stream = match connect(backend, config.connect_timeout).await {
        Ok(stream) => stream,
        Err(err) => {
            log::debug!("connecting to backend {backend}: {err}");
            return counters.inc(Counter::BackendConnectFailed);
        }
    };
    if let Some(version) = config.proxy_protocol {
        if let Err(err) = send_proxy_header(version, &client, &mut backend_stream).await {
            log::debug!("sending the PROXY header to {backend}: {err}");
            return counters.inc(Counter::RelayError);
        }
    }
    match splice::relay(
        config.relay,
        client,
        backend_stream,
        prefix,
        config.idle_timeout,
        counters,
    )
    .await
    {
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

/// Writes the PROXY protocol header describing `client` to `backend`.
async fn send_proxy_header(
    version: ProxyProtocol,
    client: &TcpStream,
    backend: &mut TcpStream,
) -> io::Result<()> {
    let header = version.header(client.peer_addr()?, client.local_addr()?);
    backend.write_all(&header).await
}

/// Judges the start of a plain connection; counts the decision. `fresh` is how many
/// bytes at the end of `buf` were just read.
fn judge_http(buf: &[u8], fresh: usize, config: &SniffConfig, counters: &Counters) -> Verdict {
    // A head can only complete at a line end, so reads without one cannot change the
    // answer (past the first bytes, where a non-HTTP first word is refused); skipping
    // them keeps a byte-at-a-time client from costing a full re-parse per byte.
    let worth_parsing = buf.len() - fresh < EARLY_PARSE_BYTES
        || buf[buf.len() - fresh..].contains(&b'\n')
        || buf.len() >= config.detect.max_header_bytes;
    if !worth_parsing {
        return Verdict::NeedMore;
    }
    let backend = match detect(buf, &config.detect) {
        Detection::NeedMore => return Verdict::NeedMore,
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
    };
    Verdict::Route(backend)
}

/// Judges the start of a TLS connection by its server name; counts the decision.
fn judge_tls(buf: &[u8], config: &SniffConfig, counters: &Counters) -> Verdict {
    let Some(tls) = &config.tls else {
        return Verdict::Route(None);
    };
    let backend = match detect_sni(buf, config.detect.max_header_bytes) {
        SniDetection::NeedMore => return Verdict::NeedMore,
        SniDetection::ServerName(name) if tls.ws_sni.iter().any(|p| p.matches(&name)) => {
            counters.inc(Counter::TlsWebsocket);
            Some(tls.websocket_backend)
        }
        SniDetection::ServerName(_) | SniDetection::NoServerName => {
            counters.inc(Counter::TlsHttp);
            Some(tls.http_backend)
        }
        SniDetection::NotTls => {
            counters.inc(Counter::NotTls);
            None
        }
        SniDetection::TooLarge => {
            counters.inc(Counter::TooLarge);
            None
        }
    };
    Verdict::Route(backend)
}

/// Reads from `client` until `judge` decides. Bounded in size by `max_bytes` (judges
/// decide by then: their detectors answer `TooLarge`); the caller bounds the time.
async fn sniff(
    client: &mut TcpStream,
    max_bytes: usize,
    mut judge: impl FnMut(&[u8], usize) -> Verdict,
) -> SniffOutcome {
    let mut buf = Vec::with_capacity(SNIFF_READ_SIZE.min(max_bytes));
    loop {
        // Never read past the limit. Reads go straight into `buf` (no array in the task:
        // the task's size is that of its largest state, kept for the connection's life).
        let want = SNIFF_READ_SIZE.min(max_bytes.saturating_sub(buf.len()).max(1));
        buf.reserve(want);
        let n = match (&mut *client).take(want as u64).read_buf(&mut buf).await {
            Ok(0) | Err(_) => return SniffOutcome::ClientClosed,
            Ok(n) => n,
        };
        if let Verdict::Route(backend) = judge(&buf, n) {
            return SniffOutcome::Decided(backend, buf);
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
